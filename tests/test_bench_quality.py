"""`transsrgan bench quality`: equal wall-clock budget, same n for both models, the result JSON, MLflow runs."""

import json

import pytest

from benchmarks.quality import (
    MODELS,
    PARAM_TOLERANCE,
    RECIPES,
    SEARCH_SEED_OFFSET,
    bench_quality,
    generated,
    generator_params,
    interleave,
    quality_configs,
    real_subset,
    recipe,
    start_run,
    train_for_budget,
)
from benchmarks.quality_report import compare, markdown, save_figure, summarise, target, target_rules, verdict
from flows.cli import main
from models.config import resolve_config
from models.data import load_dataset

TINY = {"data.limit": 256, "eval.n_samples": 8, "eval.kid_subsets": 10,
        "train.threads": 1}   # one torch thread: on a busy 2-core machine two spin-wait, 10x slower


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
    assert list(cfgs) == list(MODELS) == ["transsrgan", "dcgan", "dcgan_matched"]
    a, b, c = (cfgs[m].to_dict() for m in MODELS)
    assert a["model"].pop("arch") == "transsrgan" and b["model"].pop("arch") == c["model"].pop("arch") == "dcgan"
    assert b["model"]["dcgan_channels"] == 256 and c["model"].pop("dcgan_channels") != 256
    b["model"].pop("dcgan_channels")
    a["model"].pop("dcgan_channels")
    assert a == b == c


@pytest.mark.parametrize("preset", ["tiny", "quality32", "demo", "rgb64"])
def test_matched_dcgan_has_transsrgans_generator_parameter_count(preset):
    from models import build_generator, count_params

    cfgs = quality_configs(preset)
    t = count_params(build_generator(cfgs["transsrgan"].model))          # a real build, not the meta count
    m = count_params(build_generator(cfgs["dcgan_matched"].model))
    assert generator_params(cfgs["dcgan_matched"].model) == m
    assert abs(m - t) <= PARAM_TOLERANCE * t, (preset, t, m)
    assert abs(count_params(build_generator(cfgs["dcgan"].model)) - t) > PARAM_TOLERANCE * t or preset == "tiny"


@pytest.mark.parametrize("preset", ["quality32", "rgb64"])
def test_new_presets_resolve(preset):
    cfg = resolve_config(preset)
    assert cfg.model.resolution == (32 if preset == "quality32" else 64)
    assert cfg.model.channels == (1 if preset == "quality32" else 3)


def test_both_models_train_for_the_same_budget():
    # only the stop checks read the clock (no log lines): one reading per iteration, 0.125 s each
    cfgs = quality_configs("tiny", {**TINY, "train.log_every": 0})
    cfgs.pop("dcgan_matched")                 # two models show the interleaving as well as three
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


def test_verdict_rule_with_hand_made_numbers():
    # pooled sd = sqrt((0.3^2 + 0.4^2) / 2) = 0.3536: "better" needs the means more than 0.7071 apart
    a, b = {"mean": 1.0, "sd": 0.3}, {"mean": 1.8, "sd": 0.4}
    assert compare(a, b, higher_is_better=False) == "better"        # lower is better, 0.8 > 0.707
    assert compare(a, b, higher_is_better=True) == "worse"
    assert compare(a, {"mean": 1.7, "sd": 0.4}, higher_is_better=False) == "tie"     # 0.7 < 0.707
    assert compare({"mean": 0.5, "sd": 0.0}, {"mean": 0.5, "sd": 0.0}, True) == "tie"
    assert compare({"mean": 0.51, "sd": 0.0}, {"mean": 0.5, "sd": 0.0}, True) == "better"   # one seed: the sign
    assert summarise([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0} and summarise([4.0]) == {"mean": 4.0, "sd": 0.0}

    hib = {"fd_digits": False, "kd_digits": False, "recall_inception_random": True, "coverage_inception_random": True}
    stats = {"transsrgan": {"fd_digits": {"mean": 10.0, "sd": 1.0}, "kd_digits": {"mean": 1.0, "sd": 0.1},
                            "recall_inception_random": {"mean": 0.5, "sd": 0.05},
                            "coverage_inception_random": {"mean": 0.6, "sd": 0.05}},
             "dcgan": {"fd_digits": {"mean": 20.0, "sd": 1.0}, "kd_digits": {"mean": 2.0, "sd": 0.1},
                       "recall_inception_random": {"mean": 0.55, "sd": 0.05},
                       "coverage_inception_random": {"mean": 0.3, "sd": 0.05}},
             "dcgan_matched": {"fd_digits": {"mean": 11.0, "sd": 1.0}, "kd_digits": {"mean": 3.0, "sd": 0.1},
                               "recall_inception_random": {"mean": 0.8, "sd": 0.05},
                               "coverage_inception_random": {"mean": 0.6, "sd": 0.05}}}
    v = verdict(stats, hib)
    assert v == {"transsrgan_vs_dcgan": {"fd_digits": "better", "kd_digits": "better",
                                         "recall_inception_random": "tie", "coverage_inception_random": "better"},
                 "transsrgan_vs_dcgan_matched": {"fd_digits": "tie", "kd_digits": "better",
                                                 "recall_inception_random": "worse",
                                                 "coverage_inception_random": "tie"}}
    rules = target_rules("digits", standard_weights=False)
    assert rules == {"fd_digits": "better", "kd_digits": "better", "recall_inception_random": "not worse",
                     "coverage_inception_random": "not worse"}
    assert target(v["transsrgan_vs_dcgan"], rules) and not target(v["transsrgan_vs_dcgan_matched"], rules)
    assert set(target_rules(None, standard_weights=True)) == {"fid", "kid", "recall", "coverage"}


def test_bench_json_shape_over_seeds_and_markdown():
    """Three models x two seeds at a budget of three clock readings each: the JSON's keys, mean and sd over the
    seeds' own runs, a verdict for both pairs, every curve point at one n."""
    # an images-only metric: no Inception forward pass, so the test takes seconds (the slow test runs them all)
    over = {**TINY, "train.log_every": 0, "eval.metrics": ["msssim_diversity"], "eval.diversity_pairs": 8,
            "eval.allow_random_features": True}
    cfgs = quality_configs("tiny", over)
    data = load_dataset("digits", 16, 1, 256)
    result, runs = bench_quality(cfgs, 1.0 / 60, data, data_name="digits", engine="local", seeds=2, curve_points=1,
                                 curve_n=8, print_fn=None, clock=Ticks(0.5))
    assert result["seeds"] == [0, 1] and set(result["models"]) == set(MODELS)
    assert {len(r) for r in runs.values()} == {2}
    for name, m in result["models"].items():
        assert [r["seed"] for r in m["runs"]] == [0, 1]
        for k, stat in m["metrics"].items():
            assert set(stat) == {"mean", "sd"}
            vals = [r["metrics"][k] for r in m["runs"]]
            assert stat["mean"] == pytest.approx(sum(vals) / 2) and stat["sd"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
        assert list(m["metrics"]) == ["msssim_diversity"]
        assert m["iterations"]["mean"] == 2 and m["params"] == generator_params(cfgs[name].model)
        assert all([c["n"] for c in r["curve"]] == [8, 8] for r in m["runs"])   # snapshot and final: one n
    assert runs["transsrgan"][0].config.train.seed == 0 and runs["transsrgan"][1].config.train.seed == 1
    assert abs(result["param_ratio_matched"] - 1) <= PARAM_TOLERANCE
    ranked = set(result["higher_is_better"])
    for pair in ("transsrgan_vs_dcgan", "transsrgan_vs_dcgan_matched"):
        assert set(result["verdict"][pair]) == ranked
        assert set(result["verdict"][pair].values()) <= {"better", "worse", "tie"}
        assert isinstance(result["target"][pair], bool)
    table = markdown(result)
    assert "| msssim_diversity | " in table and " ± " in table and "transsrgan_vs_dcgan_matched" in table
    assert "2 training seed(s): 0, 1" in table


def test_recipes_set_only_the_training_recipe_and_are_valid_for_every_model():
    assert recipe("demo")["train.reg_every"] == 4 and recipe("demo")["train.lr_g"] == 1e-3   # read from the preset
    assert recipe("thesis_wgan_gp")["train.loss"] == "wgan" and recipe("thesis_wgan_gp")["train.n_critic"] == 2
    assert recipe("dcgan_paper")["train.penalty"] == "none" and recipe("dcgan_paper")["train.betas"] == (0.5, 0.999)
    cfgs = quality_configs("quality32")
    for name in RECIPES:
        assert all(k.startswith("train.") for k in recipe(name))
        for cfg in cfgs.values():
            new = cfg.updated(recipe(name))          # validates
            assert (new.model, new.data, new.eval, new.train.batch_size, new.train.seed) == \
                (cfg.model, cfg.data, cfg.eval, cfg.train.batch_size, cfg.train.seed)
    with pytest.raises(ValueError, match="recipe: expected one of"):
        recipe("adam_forever")


def test_recipe_search_gives_every_model_the_same_budget_and_its_own_best_recipe(tmp_path):
    """Two recipes x three models at a budget of clock readings: every pair trains the same number of iterations
    on the search's own seed, the pick is the best score, and the benchmark's seeds run with each model's pick."""
    over = {**TINY, "train.log_every": 0, "eval.metrics": ["msssim_diversity"], "eval.diversity_pairs": 8,
            "eval.primary_metric": "msssim_diversity", "eval.allow_random_features": True}
    cfgs = quality_configs("tiny", over)
    data = load_dataset("digits", 16, 1, 256)
    result, runs = bench_quality(cfgs, 1.0 / 60, data, data_name="digits", engine="local", seeds=1, curve_points=0,
                                 curve_n=8, print_fn=None, clock=Ticks(0.5), search_minutes=1.0 / 60,
                                 recipes=("quality32", "dcgan_paper"), search_seeds=2)
    search = result["recipe_search"]
    assert search["seeds"] == [SEARCH_SEED_OFFSET, SEARCH_SEED_OFFSET + 1]
    assert search["recipes"] == ["quality32", "dcgan_paper"]
    assert search["metric"] == "msssim_diversity" and search["higher_is_better"] is False   # mean MS-SSIM
    assert {it for m in search["models"].values() for it in m["iterations"].values()} == {2}   # same budget
    for name, m in search["models"].items():
        assert m["best"] == min(("quality32", "dcgan_paper"), key=lambda r: m["scores"][r])
        for r, values in m["seed_scores"].items():     # the score is the mean over the search seeds
            assert len(values) == 2 and m["scores"][r] == pytest.approx(sum(values) / 2)
        assert result["models"][name]["recipe"] == m["best"]
        train_cfg = runs[name][0].config.train
        assert {f"train.{k}": getattr(train_cfg, k) for k in ("loss", "penalty", "lr_g", "betas")} == \
            {k: v for k, v in recipe(m["best"]).items() if k in ("train.loss", "train.penalty", "train.lr_g",
                                                                  "train.betas")}
        assert train_cfg.seed == 0                   # the benchmark's seeds are not the search's
    table = markdown(result)
    assert "| dcgan_paper | " in table and "scored by msssim_diversity" in table
    grids = {name: generated(rs[0].state.G_ema, 8, rs[0].config) for name, rs in runs.items()}
    png = save_figure(result, grids, real_subset(data.images, 8), tmp_path / "q.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="recipe: expected one of"):
        bench_quality(cfgs, 1.0 / 60, data, data_name="digits", engine="local", seeds=1, print_fn=None,
                      search_minutes=1.0, recipes=("nope",))


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "quality", "--minutes", "0"])
    assert exc.value.code == 2 and "--minutes" in capsys.readouterr().err
    assert main(["bench", "quality", "--data", "/no/such/folder"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["bench", "quality", "--preset", "tiny", "--set", "train.n_critic=0"]) == 2
    assert "train.n_critic" in capsys.readouterr().err
    assert main(["bench", "quality", "--preset", "tiny", "--recipes", "quality32,nope"]) == 2
    assert "--recipes: expected names from quality32, demo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "quality", "--search-minutes", "-1"])
    assert exc.value.code == 2 and "--search-minutes" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_quality_end_to_end_with_dfagd_and_mlflow(tmp_path):
    """Data gate, DFAGD on Spark for both models, evaluation on the same n, files, MLflow parent + 2 children."""
    import mlflow
    from mlflow.tracking import MlflowClient

    out = tmp_path / "bench"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["bench", "quality", "--preset", "tiny", "--minutes", "0.05", "--n", "8", "--curve-points", "1",
                 "--seeds", "2", "--search-minutes", "0.02", "--recipes", "quality32,dcgan_paper",
                 "--curve-n", "8", "--out", str(out), "--json", str(tmp_path / "q.json"), "--tracking-uri", uri,
                 "--set", "data.limit=256", "--set", "eval.kid_subsets=10", "--spark-master", "local[2]"])
    assert code == 0
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["data"] == "digits" and result["minutes"] == 0.05 and result["n"] == 8
    assert result["primary_metric"] == "fd_digits" and result["domain"] == "digits"   # the digit metrics ran
    assert set(result["models"]) == {"transsrgan", "dcgan", "dcgan_matched"}
    keys = None
    for name, m in result["models"].items():
        assert m["params"] > 0 and m["images_per_s"]["mean"] > 0 and len(m["runs"]) == 2
        for r in m["runs"]:
            assert r["iterations"] > 0 and r["train_s"] >= 3.0, (name, r)   # stopped at the first check past it
            assert r["curve"][0]["t_s"] <= r["curve"][-1]["t_s"] == r["train_s"], (name, r["curve"])
            assert [c["n"] for c in r["curve"]] == [8, 8]
        for k in ("fd_digits", "fd_digits_floor", "kd_digits", "recognisable", "fd_inception_random",
                  "kd_inception_random", "recall_inception_random", "coverage_inception_random"):
            assert set(m["metrics"][k]) == {"mean", "sd"}, k
        keys = keys or set(m["metrics"])
        assert set(m["metrics"]) == keys
    assert set(result["verdict"]) == {"transsrgan_vs_dcgan", "transsrgan_vs_dcgan_matched"}
    assert result["verdict"]["transsrgan_vs_dcgan"]["fd_digits"] in ("better", "worse", "tie")
    search = result["recipe_search"]
    assert search["metric"] == "fd_digits" and search["higher_is_better"] is False   # the digits' primary
    picks = {name: m["best"] for name, m in search["models"].items()}
    assert set(picks) == set(result["models"]) and set(picks.values()) <= {"quality32", "dcgan_paper"}
    assert (out / "bench_quality.md").is_file() and (out / "bench_quality.png").stat().st_size > 10_000
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("transsrgan-bench")
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == [f"{m}-seed{s}" for m in ("dcgan", "dcgan_matched",
                                                                                  "transsrgan") for s in (0, 1)]
    for r in children:
        name, seed = r.info.run_name.rsplit("-seed", 1)
        record = result["models"][name]["runs"][int(seed)]
        assert r.data.params["model.arch"] == name.removesuffix("_matched") and r.data.params["train.seed"] == seed
        assert r.data.tags["recipe"] == picks[name]
        assert r.data.params["train.lr_g"] == str(recipe(picks[name])["train.lr_g"])   # trained with its pick
        assert r.data.metrics["fd_digits"] == record["metrics"]["fd_digits"]
        assert "loss_d" in r.data.metrics or record["iterations"] < 5


def test_nyquist_share_of_the_icnr_check():
    import numpy as np

    from benchmarks.icnr import nyquist_share

    yy, xx = np.mgrid[:16, :16]
    checker = ((yy + xx) % 2 * 255).astype(np.uint8)[None, None]            # (1, 1, 16, 16)
    stripes = ((xx % 2) * 255).astype(np.uint8)[None, None]
    smooth = (127 + 100 * np.sin(2 * np.pi * xx / 16)).astype(np.uint8)[None, None]
    assert nyquist_share(checker) == pytest.approx(1.0) and nyquist_share(stripes) == pytest.approx(1.0)
    assert nyquist_share(smooth) < 1e-3 and nyquist_share(np.full((2, 1, 16, 16), 9, np.uint8)) == 0.0
    mixed = (smooth.astype(int) // 2 + checker.astype(int) // 8).astype(np.uint8)
    assert 0.01 < nyquist_share(mixed) < 1
