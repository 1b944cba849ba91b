"""The demo's recipe (chosen by benchmarks.demo_recipe) and the thesis' recipe kept as the preset thesis32."""

import pytest

from benchmarks.demo_recipe import CANDIDATES, COLUMNS, main, markdown
from models.config import resolve_config


def test_demo_trains_quality32s_recipe_and_thesis32_keeps_the_thesis_recipe():
    demo, q32, thesis = resolve_config("demo"), resolve_config("quality32"), resolve_config("thesis32")
    assert demo.model == q32.model.model_copy(update={"num_classes": 10})   # conditioned on the digits' labels
    measured = {"steps": 3000, "lr_g": 1e-3, "lr_d": 1e-3, "ema_decay": 0.995,     # docs/quality.md: the search
                "reg_every": 4, "augment": "", "max_minutes": 5.5}
    cadence = ("log_every", "sample_every")
    assert {k: v for k, v in demo.train.to_dict().items() if k in measured} == measured
    assert ({k: v for k, v in demo.train.to_dict().items() if k not in measured and k not in cadence}
            == {k: v for k, v in q32.train.to_dict().items() if k not in measured and k not in cadence})
    assert (demo.train.loss, demo.train.penalty, demo.train.n_critic) == ("ns", "r1", 1)
    assert (thesis.train.loss, thesis.train.penalty, thesis.train.n_critic, thesis.train.steps) == ("wgan", "gp", 2, 800)
    assert (thesis.model.dim, thesis.model.depth, thesis.model.g_channels, thesis.model.d_channels) == (64, 2, 64, 32)
    assert demo.singan.iters_per_scale == 100          # the SinGAN part of the demo preset is unchanged


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_every_candidate_resolves(name):
    preset, overrides = CANDIDATES[name]
    assert resolve_config(preset, overrides).model.resolution == 32


def test_the_table_is_sorted_by_the_floor_ratio_and_names_the_real_rate():
    row = {c: 1.0 for c in COLUMNS}
    report = {"budget_s": 60.0, "n": 256, "conditions": "test", "real_recognisable": 0.94,
              "candidates": [{**row, "name": "b", "fd_ratio": 9.0}, {**row, "name": "a", "fd_ratio": 2.5}]}
    lines = markdown(report).splitlines()
    rows = [line for line in lines if line.startswith("| a ") or line.startswith("| b ")]
    assert [r.split()[1] for r in rows] == ["a", "b"]
    assert "| a | 1 | 1 | 1 | 1 | 1 | 2.5 |" in lines[lines.index(rows[0])]
    assert "Real digits' own recognisable: 0.94." in lines


def test_bad_flags_exit_2_with_one_line(capsys):
    assert main(["--budget-s", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget-s" in err


def test_checks_score_evenly_spaced_steps_before_the_final_one():
    from benchmarks.demo_recipe import check_steps

    assert check_steps(4500, 3) == [1500, 3000]
    assert check_steps(10, 1) == [] and check_steps(3, 4) == [1, 2]   # no step 0, no duplicates


def test_the_curve_table_lists_every_point_of_every_candidate():
    row = {c: 1.0 for c in COLUMNS}
    curve = [{"step": s, "train_s": 10.0 * s, "recognisable": r, "fd_ratio": 2.0, "kd_digits": 0.5,
              "class_balance": 0.99} for s, r in ((100, 0.25), (200, 0.5))]
    report = {"budget_s": 60.0, "n": 256, "conditions": "test", "real_recognisable": 0.94,
              "candidates": [{**row, "name": "a", "fd_ratio": 2.0, "curve": curve}]}
    lines = markdown(report).splitlines()
    assert "| a | 100 | 1000.0 | 0.250 | 2.00 | 0.50 | 0.990 |" in lines
    assert "| a | 200 | 2000.0 | 0.500 | 2.00 | 0.50 | 0.990 |" in lines


def test_the_truncation_table_lists_every_psi_and_bad_psi_exits_2(capsys):
    row = {c: 1.0 for c in COLUMNS}
    truncated = [{"psi": psi, "recognisable": r, "fd_ratio": f, "kd_digits": 0.5, "class_balance": 0.9,
                  "msssim_diversity": 0.25} for psi, r, f in ((0.7, 0.9, 3.0), (0.5, 0.95, 6.0))]
    report = {"budget_s": 60.0, "n": 256, "conditions": "test", "real_recognisable": 0.94,
              "candidates": [{**row, "name": "a", "fd_ratio": 2.0, "truncated": truncated}]}
    lines = markdown(report).splitlines()
    assert "| a | 0.7 | 0.900 | 3.00 | 0.50 | 0.900 | 0.250 |" in lines
    assert "| a | 0.5 | 0.950 | 6.00 | 0.50 | 0.900 | 0.250 |" in lines
    assert main(["--truncation", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--truncation" in err


def test_the_demo_conditions_on_the_digits_only_and_an_explicit_value_wins(tmp_path):
    assert resolve_config("demo").model.num_classes == 10
    assert resolve_config("demo", {"data.source": str(tmp_path)}).model.num_classes == 0   # a user's folder
    assert resolve_config("demo", {"model.num_classes": 0}).model.num_classes == 0
    assert resolve_config("demo", {"data.source": str(tmp_path), "model.num_classes": 3}).model.num_classes == 3
    assert resolve_config("quality32").model.num_classes == 0                               # only the demo
    # the flow swaps data.source for the gate's manifest later: the resolved value stays
    assert resolve_config("demo").updated({"data.source": str(tmp_path / "manifest.parquet")}).model.num_classes == 10


def test_train_refuses_a_conditional_model_on_unlabelled_data_before_anything_starts(tmp_path, capsys):
    from PIL import Image

    from flows.cli import main

    for i in range(4):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / f"img{i}.png")
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path), "--set", "model.num_classes=10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.num_classes: 10 makes the model class-conditional" in err[0]
    assert str(tmp_path) in err[0] and not (tmp_path / "validation").exists()
