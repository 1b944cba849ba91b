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
