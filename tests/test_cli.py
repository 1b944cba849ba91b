"""The console script: --help, --dry-run, one-line errors naming the argument, exit codes."""

import json
import subprocess
import sys

import pytest

from flows.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0 and "demo-data" in r.stdout and "train" in r.stdout


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--preset", "tiny", "--steps", "7", "--workers", "1", "--dry-run",
                 "--set", "train.lr_g=0.001"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "tiny" and cfg["train"]["steps"] == 7 and cfg["spark"]["workers"] == 1
    assert cfg["train"]["lr_g"] == 0.001


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "huge"], "--preset"),
    (["train", "--steps", "x"], "--steps"),
    (["train", "--steps", "-3", "--dry-run"], "train.steps"),
    (["train", "--set", "train.nope=1", "--dry-run"], "train.nope"),
    (["train", "--workers", "3", "--dry-run"], "train.batch_size"),
    (["train", "--set", "train.steps=abc", "--dry-run"], "train.steps"),
    (["train", "--set", "train.steps=2.5", "--dry-run"], "train.steps"),
    (["train", "--set", "train.lr_g=nan", "--dry-run"], "train.lr_g"),
    (["train", "--set", "train.lr_g=Infinity", "--dry-run"], "train.lr_g"),
    (["train", "--set", "spark.workers=1.5", "--dry-run"], "spark.workers"),
    (["train", "--spark-master", "bogus://x", "--dry-run"], "spark.master"),
    (["train", "--model", "singan", "--workers", "2", "--dry-run"], "--workers"),
    (["train", "--model", "singan", "--set", "singan.min_size=5", "--dry-run"], "singan.min_size"),
    (["demo-data"], "OUT_DIR"),
    (["bench", "speedup", "--set", "train.precision=fp16"], "train.precision"),
    (["bench", "speedup", "--set", "precision"], "--set"),
    (["sample", "--model", "m", "--out", "a.png", "--truncation", "0"], "--truncation"),
    (["sample", "--model", "m", "--out", "a.png", "--truncation", "1.5"], "--truncation"),
    (["sample", "--model", "m", "--out", "a.png", "--truncation", "nan"], "--truncation"),
    (["sample", "--model", "m", "--out", "a.png", "--truncation", "x"], "--truncation"),
    (["sample", "--model", "m", "--out", "a.png", "--interpolate", "--interpolate-steps", "1"], "--interpolate-steps"),
    (["sample", "--model", "m", "--out", "a.png", "--interpolate-steps", "4"], "--interpolate-steps"),
])
def test_bad_arguments_exit_2_and_name_the_argument(args, needle):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_train_flags_are_the_flow_parameters():
    """Every parameter of both training flows has exactly one flag, so nothing maps flags to config twice."""
    import argparse

    from flows.cli import add_params, params_from_args
    from flows.params import SinGANParams, TrainParams

    parser = argparse.ArgumentParser()
    add_params(parser, TrainParams, SinGANParams)
    args = parser.parse_args(["--preset", "tiny", "--data", "digits", "--steps", "3", "--set", "train.seed=4",
                              "--require-standard-features"])
    params = params_from_args(args, TrainParams)
    assert (params.preset, params.data, params.steps, params.allow_random_features) == ("tiny", "digits", 3, False)
    cfg = params.to_config()
    assert (cfg.train.steps, cfg.train.seed, cfg.eval.allow_random_features) == (3, 4, False)
    singan = params_from_args(parser.parse_args(["--model", "singan", "--steps", "7"]), SinGANParams)
    assert singan.to_config().singan.iters_per_scale == 7


def test_singan_dry_run_prints_only_its_sections(capsys):
    assert main(["train", "--model", "singan", "--preset", "tiny", "--dry-run", "--set", "singan.max_size=24"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert set(cfg) == {"version", "preset", "singan", "eval"} and cfg["singan"]["max_size"] == 24


def test_sample_truncation_and_interpolation_grid(tmp_path, mlflow_store, capsys):
    """`sample --truncation 1` is the plain grid; `--interpolate` writes rows x steps tiles whose end columns are
    `sample -n 1 --seed S+2i` and `--seed S+2i+1`."""
    import mlflow
    import numpy as np
    import torch
    from PIL import Image

    from models.config import resolve_config
    from models.step import build_state
    from tasks.model_io import log_generator

    cfg = resolve_config("tiny")
    state = build_state(cfg)
    with torch.no_grad():
        state.G_ema.to_tokens.bias.normal_(0.0, 0.5)          # a token mean away from 0, as after training
    with mlflow.start_run() as run:
        log_generator(state, cfg)
    uri, r = f"runs:/{run.info.run_id}/generator", cfg.model.resolution

    def grid(name, *extra):
        assert main(["sample", "--model", uri, "--out", str(tmp_path / name), "--scale", "1", *extra]) == 0, \
            capsys.readouterr().err
        return np.asarray(Image.open(tmp_path / name)).astype(int)

    def tile(g, row, col):
        return g[2 + row * (r + 2): 2 + row * (r + 2) + r, 2 + col * (r + 2): 2 + col * (r + 2) + r]

    assert np.array_equal(grid("plain.png", "-n", "16"), grid("psi1.png", "-n", "16", "--truncation", "1"))
    wide, narrow = grid("w.png", "-n", "16", "--seed", "2"), grid("t.png", "-n", "16", "--seed", "2",
                                                                   "--truncation", "0.3")
    spread = [np.std([tile(g, i // 4, i % 4) for i in range(16)], axis=0).mean() for g in (wide, narrow)]
    assert spread[1] < spread[0], spread
    interp = grid("i.png", "--interpolate", "-n", "2", "--interpolate-steps", "4", "--seed", "6")
    assert interp.shape == (2 * (r + 2) + 2, 4 * (r + 2) + 2)
    assert "interpolation grid of 2 seed pairs x 4 steps" in capsys.readouterr().out
    for row, (a, b) in enumerate([(6, 7), (8, 9)]):
        for col, s in ((0, a), (3, b)):
            one = grid(f"s{s}.png", "-n", "1", "--seed", str(s))
            assert np.abs(tile(interp, row, col) - tile(one, 0, 0)).max() <= 1     # same z; batch round-off only


def test_bench_speedup_set_reaches_the_benchmark(monkeypatch, capsys):
    """--set KEY=VALUE (JSON values) is handed to every run of bench speedup as a config override."""
    import benchmarks.speedup as speedup

    seen = {}

    def bench(preset, workers, steps, warmup, master, threads_per_worker, **kw):
        seen.update(preset=preset, overrides=kw["overrides"])
        return {}

    monkeypatch.setattr(speedup, "bench_speedup", bench)
    monkeypatch.setattr(speedup, "markdown", lambda result: "table")
    assert main(["bench", "speedup", "--preset", "tiny", "--set", "train.precision=bf16",
                 "--set", "train.compile=default", "--set", "spark.bucket_mb=1.5"]) == 0
    assert seen == {"preset": "tiny", "overrides": {"train.precision": "bf16", "train.compile": "default",
                                                    "spark.bucket_mb": 1.5}}
