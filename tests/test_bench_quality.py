"""`transsrgan bench quality`: equal wall-clock budget, same n for both models, the result JSON, MLflow runs."""

import json

import pytest

from benchmarks.quality import (
    MODELS,
    interleave,
    markdown,
    quality_configs,
    real_subset,
    start_run,
    train_for_budget,
    verdict,
)
from flows.cli import main
from models.config import resolve_config
from models.data import load_dataset

TINY = {"data.limit": 256, "eval.n_samples": 8, "eval.kid_subsets": 10}


class Ticks:
    """A clock that advances `tick` seconds at every reading, so a budget is a number of readings, not real time
    (binary fractions keep every sum exact)."""

    def __init__(self, tick: float = 0.125):
        self.tick, self.now = tick, 100.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_configs_differ_only_in_the_generator():
    cfgs = quality_configs("quality32")
    assert list(cfgs) == list(MODELS)
    a, b = cfgs["transsrgan"].to_dict(), cfgs["dcgan"].to_dict()
    assert a["model"].pop("arch") == "transsrgan" and b["model"].pop("arch") == "dcgan"
    assert a == b


@pytest.mark.parametrize("preset", ["quality32", "rgb64"])
def test_new_presets_resolve(preset):
    cfg = resolve_config(preset)
    assert cfg.model.resolution == (32 if preset == "quality32" else 64)
    assert cfg.model.channels == (1 if preset == "quality32" else 3)


def test_both_models_train_for_the_same_budget():
    # only the stop checks read the clock (no log lines): one reading per iteration, 0.125 s each
    cfgs = quality_configs("tiny", {**TINY, "train.log_every": 0})
    data = load_dataset("digits", 16, 1, 256)
    budget = 3.0
    runs = {n: start_run(c, budget, snapshots=2) for n, c in cfgs.items()}
    interleave(runs, budget, 2, data, "local", None, None, lambda _m: None, clock=Ticks())  # A, B, A, B
    for name, run in runs.items():
        # slice 1 reads 0, 0.125, ..., 1.5 and stops there after 12 iterations; slice 2 starts at 1.5 (its
        # Spark start-up is not counted) and stops at 3.0 after 12 more: no time lost or double-counted
        assert (run.iterations, run.train_s) == (24, budget), name
        # snapshots at the first check past budget/3 and 2 budget/3, with the step they were taken at
        assert [(t, step) for t, step, _ in run.snapshots] == [(1.0, 8), (2.0, 16)], name
        assert run.images_per_s == 24 * 16 / budget
    assert runs["transsrgan"].state.G.__class__.__name__ != runs["dcgan"].state.G.__class__.__name__


def test_budget_stop_and_snapshots_share_one_clock_reading():
    """However coarse the clock, the stop decision, the snapshot time and train_s are the same reading."""
    cfg = quality_configs("tiny", {**TINY, "train.log_every": 0})["dcgan"]
    run = train_for_budget(cfg, 1.0, load_dataset("digits", 16, 1, 64), engine="local", snapshots=2,
                           print_fn=None, clock=Ticks(0.75))
    # readings 0, 0.75, 1.5: one iteration crossed both snapshot times (1/3 and 2/3), so both copies are at 0.75
    assert (run.iterations, run.train_s) == (2, 1.5)
    assert [(t, step) for t, step, _ in run.snapshots] == [(0.75, 1), (0.75, 1)]


def test_train_for_budget_stops_on_time():
    cfg = quality_configs("tiny", TINY)["dcgan"]
    run = train_for_budget(cfg, 1.0, load_dataset("digits", 16, 1, 256), engine="local", snapshots=0, print_fn=None)
    assert run.iterations >= 1 and run.train_s >= 1.0 and run.snapshots == []
    with pytest.raises(ValueError, match="engine"):
        train_for_budget(cfg, 1.0, load_dataset("digits", 16, 1, 64), engine="gpu", print_fn=None)


def test_real_subset_is_fixed_and_matches_tasks_evaluate():
    from tasks.evaluate import real_images

    data = load_dataset("digits", 16, 1)
    assert (real_subset(data.images, 40) == real_images("digits", 40, 16, 1)).all()


def test_verdict_and_markdown():
    m = {"transsrgan": {"fd_inception_random": 1.0, "kd_inception_random": 0.01, "recall_inception_random": 0.5,
                        "coverage_inception_random": 0.4},
         "dcgan": {"fd_inception_random": 2.0, "kd_inception_random": 0.02, "recall_inception_random": 0.5,
                   "coverage_inception_random": 0.5}}
    v = verdict(m, standard_weights=False)
    assert v["fd_inception_random"] == "transsrgan" and v["recall_inception_random"] == "tie"
    assert v["coverage_inception_random"] == "dcgan" and v["target_met"] is False
    m["transsrgan"]["coverage_inception_random"] = 0.6
    assert verdict(m, standard_weights=False)["target_met"] is True
    result = {"data": "digits", "minutes": 1, "primary_metric": "fd_inception_random", "n": 8, "resolution": 16,
              "preset": "tiny", "engine": "local", "workers": 2, "global_batch": 16, "feature_extractor": "x",
              "higher_is_better": {"fd_inception_random": False, "recall_inception_random": True},
              "verdict": v, "models": {k: {"metrics": m[k], "params": 1, "params_d": 2, "iterations": 3,
                                          "train_s": 60.0, "s_per_iter": 20.0, "images_per_s": 0.8} for k in m}}
    table = markdown(result)
    assert "| fd_inception_random (primary) | **1** | 2 | lower |" in table
    assert "iterations (G updates)" in table and "not met" in table


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "quality", "--minutes", "0"])
    assert exc.value.code == 2 and "--minutes" in capsys.readouterr().err
    assert main(["bench", "quality", "--data", "/no/such/folder"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["bench", "quality", "--preset", "tiny", "--set", "train.n_critic=0"]) == 2
    assert "train.n_critic" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_quality_end_to_end_with_dfagd_and_mlflow(tmp_path):
    """Data gate, DFAGD on Spark for both models, evaluation on the same n, files, MLflow parent + 2 children."""
    import mlflow
    from mlflow.tracking import MlflowClient

    out = tmp_path / "bench"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["bench", "quality", "--preset", "tiny", "--minutes", "0.05", "--n", "8", "--curve-points", "1",
                 "--curve-n", "8", "--out", str(out), "--json", str(tmp_path / "q.json"), "--tracking-uri", uri,
                 "--set", "data.limit=256", "--set", "eval.kid_subsets=10", "--spark-master", "local[2]"])
    assert code == 0
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["data"] == "digits" and result["minutes"] == 0.05 and result["n"] == 8
    assert result["primary_metric"] == "fd_inception_random"
    assert set(result["models"]) == {"transsrgan", "dcgan"}
    keys = None
    for name, m in result["models"].items():
        assert m["iterations"] > 0 and m["params"] > 0 and m["images_per_s"] > 0
        assert m["train_s"] >= 3.0, (name, m)          # stopped at the first check at or past the budget
        assert m["curve"][0]["t_s"] <= m["curve"][-1]["t_s"] == m["train_s"], (name, m["curve"])
        for k in ("fd_inception_random", "kd_inception_random", "recall_inception_random",
                  "coverage_inception_random"):
            assert k in m["metrics"]
        keys = keys or set(m["metrics"])
        assert set(m["metrics"]) == keys
        assert [c["n"] for c in m["curve"]] == [8, 8]
    assert (out / "bench_quality.md").is_file() and (out / "bench_quality.png").stat().st_size > 10_000
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("transsrgan-bench")
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["dcgan", "transsrgan"]
    for r in children:
        assert r.data.params["model.arch"] == r.info.run_name
        assert r.data.metrics["fd_inception_random"] == result["models"][r.info.run_name]["metrics"]["fd_inception_random"]
        assert "loss_d" in r.data.metrics or result["models"][r.info.run_name]["iterations"] < 5
