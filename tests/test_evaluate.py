"""Evaluation end to end: names, cache, the MLflow tag, pictures, the CLI.

InceptionV3 costs ~6 GFLOPs per image (inputs are resized to 299x299), about 1 image/s on this shared 2-core
machine, so the fast tests swap in a small seeded conv net through the `small_extractor` fixture (same
Extractor contract, the random extractor's id); the tests marked slow run the real random-weight InceptionV3.
"""

import json

import numpy as np
import pytest
import torch

from models.config import EvalConfig
from models.data import load_dataset
from models.metrics import evaluate_images
from models.metrics import inception as inc
from models.metrics.features import extract_features

FAST_METRICS = ("kid", "prdc", "msssim_diversity")   # FID's 2048x2048 sqrtm alone takes ~30-100 s here




@pytest.fixture
def small_extractor(no_weights, monkeypatch):
    """A 256-d seeded random conv net standing in for InceptionV3 inside evaluate_images."""
    import models.metrics.evaluate as ev
    from models.metrics.inception import Extractor

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()).eval()
    real_load = ev.load_extractor

    def load(weights, allow_random, seed, download=True):
        real_load(weights, allow_random, seed, download=False)   # keeps the weights policy (errors) real
        return Extractor(net, inc.random_id(seed), False)

    monkeypatch.setattr(ev, "load_extractor", load)
    monkeypatch.setattr(inc, "_build", lambda path, seed: None)   # don't build the real network
    return net


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=400).images


def _cfg(n: int, **kw) -> EvalConfig:
    base = dict(n_samples=n, allow_random_features=True, download_weights=False, metrics=FAST_METRICS,
                prdc_k=3, kid_subsets=10, diversity_pairs=200, batch_size=4)
    return EvalConfig(**{**base, **kw})


@pytest.mark.slow
def test_inception_features_do_not_depend_on_batch_size(no_weights, digits16):
    ex = inc.load_extractor("", allow_random=True, download=False)
    x = digits16[:4]
    f1, ips = extract_features(x, ex, batch_size=1)
    f4, _ = extract_features(x, ex, batch_size=4)
    assert ips > 0 and f1.shape == (4, inc.FEATURE_DIM)
    assert np.allclose(f1, f4, rtol=1e-4, atol=1e-5)


def test_metrics_do_not_depend_on_batch_size(small_extractor, digits16):
    real, fake = digits16[:12], digits16[200:212]
    a = evaluate_images(fake, real, config=_cfg(12, batch_size=1, cache_real=False))
    b = evaluate_images(fake, real, config=_cfg(12, batch_size=12, cache_real=False))
    assert a.metrics.keys() == b.metrics.keys()
    for k in a.metrics:
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-4, abs=1e-7), k


def test_random_fallback_names_metrics_and_constant_generator_scores_worse(small_extractor, no_weights, digits16):
    real, fake = digits16[:12], digits16[200:212]
    constant = np.repeat(digits16[300:301], 12, axis=0)
    cache_dir = no_weights / "cache"
    good = evaluate_images(fake, real, config=_cfg(12), cache_dir=cache_dir)
    assert good.extractor == "inception-v3-random-seed0" and not good.standard_weights
    from models.metrics.registry import FLOOR_SUFFIX, RATIO_SUFFIX, REAL_SUFFIX

    named = {k for k in good.metrics if not k.endswith((FLOOR_SUFFIX, RATIO_SUFFIX, REAL_SUFFIX))}  # w/o references
    assert named == {"kd_inception_random", "precision_inception_random", "recall_inception_random",
                     "density_inception_random", "coverage_inception_random", "msssim_diversity"}
    assert good.primary_metric_name == "fd_inception_random"
    assert good.feature_images_per_s > 0 and not good.real_cache_hit
    bad = evaluate_images(constant, real, config=_cfg(12), cache_dir=cache_dir)
    assert bad.real_cache_hit                       # the real side came from the .npz
    assert bad.metrics["msssim_diversity"] == pytest.approx(1.0)
    assert bad.metrics["msssim_diversity"] > good.metrics["msssim_diversity"]
    assert bad.metrics["recall_inception_random"] < good.metrics["recall_inception_random"]
    assert bad.metrics["kd_inception_random"] > good.metrics["kd_inception_random"]


def test_bad_inputs_name_the_parameter(small_extractor, digits16):
    with pytest.raises(ValueError, match="fake: expected uint8"):
        evaluate_images(digits16[:4].astype(np.float32), digits16[:4], config=_cfg(4))
    with pytest.raises(ValueError, match="eval.metrics"):
        evaluate_images(digits16[:4], digits16[:4], config=_cfg(4, metrics=("fid", "nope")))
    from models.config import ConfigError

    with pytest.raises(ConfigError, match="eval.n_samples"):
        evaluate_images(digits16[:4], digits16[:4], config=_cfg(3, prdc_k=5))
    from models.metrics import InceptionWeightsError

    with pytest.raises(InceptionWeightsError, match="--allow-random-features"):
        evaluate_images(digits16[:4], digits16[:4], config=_cfg(4, allow_random_features=False))


def test_evaluate_generator_logs_metrics_tag_and_pictures_to_mlflow(small_extractor, no_weights):
    import mlflow
    from mlflow import MlflowClient

    from models import build_generator
    from models.config import resolve_config
    from tasks.evaluate import evaluate_generator

    cfg = resolve_config("tiny")
    torch.manual_seed(0)
    G = build_generator(cfg.model)
    uri = f"sqlite:///{no_weights / 'mlflow.db'}"
    old_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("eval-test", artifact_location=(no_weights / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            res = evaluate_generator(G, "digits", _cfg(8), cfg.model, seed=0)
        client = MlflowClient(uri)
        data = client.get_run(run.info.run_id).data
        assert data.tags["feature_extractor"] == res.extractor    # real "digits": the digits classifier too
        assert res.extractor.startswith("inception-v3-random-seed0+digits-cnn-") and "fd_digits" in data.metrics
        assert data.metrics["kd_inception_random"] == pytest.approx(res.metrics["kd_inception_random"])
        assert "kid" not in data.metrics and "fid" not in data.metrics and "feature_images_per_s" in data.metrics
        names = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert names == {"samples/real_vs_fake.png", "samples/eval_fixed_noise.png"}
    finally:
        mlflow.set_tracking_uri(old_uri)


def _write_pngs(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0]).save(folder / f"{i:04d}.png")


def test_cli_without_weights_exits_2_with_how_to(no_weights, digits16, capsys):
    from flows.cli import main

    _write_pngs(no_weights / "fake", digits16[:8])
    assert main(["evaluate", "--fake", str(no_weights / "fake"), "--real", "digits", "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert "--inception-weights" in err and "TRANSSRGAN_INCEPTION_WEIGHTS" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_cli_fake_folder_full_metric_table_and_json(no_weights, digits16, capsys):
    """All default metrics, FID included (its 2048-d sqrtm dominates the time on CPU)."""
    from flows.cli import main

    _write_pngs(no_weights / "fake", digits16[:10])
    out = no_weights / "m.json"
    assert main(["evaluate", "--fake", str(no_weights / "fake"), "--real", "digits", "--n", "10",
                 "--allow-random-features", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fd_inception_random" in text and "inception-v3-random-seed0" in text
    payload = json.loads(out.read_text())
    assert set(payload["metrics"]) == {"fd_inception_random", "kd_inception_random", "precision_inception_random",
                                       "recall_inception_random", "density_inception_random",
                                       "coverage_inception_random", "msssim_diversity",
                                       "fd_inception_random_floor", "fd_inception_random_vs_floor",
                                       "kd_inception_random_floor", "fd_digits", "fd_digits_floor",
                                       "fd_digits_vs_floor", "kd_digits", "kd_digits_floor", "recognisable",
                                       "recognisable_real", "class_balance", "class_balance_real"}
    # --real digits: the digits classifier's FD is primary without the standard Inception weights
    assert payload["primary_metric"] == "fd_digits" and payload["metrics"]["fd_inception_random"] >= 0


# ---------------------------------------------------------------- hostile folders and outputs

def _hostile_folder(folder, digits16):
    """8 good PNGs, a PNG whose header claims 30000x30000 (correct CRC), a truncated PNG and a FIFO named f.png."""
    import os
    import struct
    import zlib

    _write_pngs(folder, digits16[:8])
    png = (folder / "0000.png").read_bytes()
    ihdr = png[12:16] + struct.pack(">II", 30000, 30000) + png[24:29]          # type, size, depth .. interlace
    (folder / "bomb.png").write_bytes(png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:])
    (folder / "truncated.png").write_bytes(png[:len(png) // 2])
    os.mkfifo(folder / "f.png")


@pytest.mark.timeout(120)
def test_cli_fake_folder_skips_bomb_truncated_and_fifo_with_reasons(small_extractor, no_weights, digits16, capsys):
    from flows.cli import main

    fake = no_weights / "fake"
    _hostile_folder(fake, digits16)
    out = no_weights / "m.json"
    assert main(["evaluate", "--fake", str(fake), "--real", "digits", "--n", "8", "--allow-random-features",
                 "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = {line.split(" (e.g. ")[-1].rstrip(")"): line for line in err.splitlines() if "skipped" in line}
    assert "too-large: 30000x30000" in lines[str(fake / "bomb.png")]
    assert "decode-error" in lines[str(fake / "truncated.png")]
    assert "not-a-file" in lines[str(fake / "f.png")]
    inputs = json.loads(out.read_text())["inputs"]["fake"]
    assert inputs["images"] == 8 and inputs["entries"] == 11
    assert sorted(s["path"] for s in inputs["skipped"]) == sorted(str(fake / n) for n in ("bomb.png", "f.png",
                                                                                          "truncated.png"))


def test_too_few_valid_images_is_one_line_naming_the_folder(no_weights, digits16, capsys):
    from flows.cli import main

    fake = no_weights / "fake"
    _hostile_folder(fake, digits16)
    for name in ("0002", "0003", "0004", "0005", "0006", "0007"):
        (fake / f"{name}.png").unlink()                # 2 good images left; PRDC's k = 5 needs 6
    assert main(["evaluate", "--fake", str(fake), "--real", "digits", "--n", "8", "--allow-random-features"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"transsrgan evaluate: error: fake images {fake}: 2 usable of 5 entries, expected at "
                           "least 6 (skipped: ")
    assert "too-large 1" in last and "decode-error 1" in last and "not-a-file 1" in last


def test_a_manifest_is_read_as_is_and_a_file_gone_bad_is_named(no_weights, digits16):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.evaluate import read_images

    real = no_weights / "real"
    _write_pngs(real, digits16[:6])
    paths = sorted(str(p) for p in real.glob("*.png"))
    manifest = no_weights / "manifest.parquet"
    pq.write_table(pa.table({"path": paths, "width": [16] * 6, "height": [16] * 6, "mode": ["L"] * 6}), manifest)
    assert read_images("real", str(manifest), 2).shape == (6, 1, 16, 16)
    (real / "0003.png").write_bytes(b"no longer an image")
    with pytest.raises(ValueError, match=r"0003\.png: decode-error"):
        read_images("real", str(manifest), 2)
    (no_weights / "not.parquet").write_text("nope")
    with pytest.raises(ValueError, match="not a manifest.parquet written by `transsrgan validate`"):
        read_images("real", str(no_weights / "not.parquet"), 2)


def test_sample_refuses_to_overwrite_what_it_did_not_write(tmp_path, capsys):
    from flows.cli import main

    notes = tmp_path / "notes.png"
    notes.write_text("my notes, not a picture")
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder would go")
    for out, why in ((notes, "notes.png was not written by transsrgan (nothing was overwritten"),
                     (blocked / "x.png", f"{blocked} is"),                # ... a file / not a folder
                     (tmp_path, "expected a .png file")):
        assert main(["sample", "--model", "models:/transsrgan@champion", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and why in err, err
    assert notes.read_text() == "my notes, not a picture"


def test_sample_creates_folders_and_replaces_only_its_own_grid(tmp_path, capsys, monkeypatch):
    """--out's folders are created; a rerun replaces its grid, also beside --each's images in the same folder."""
    import tasks.model_io as model_io
    from flows.cli import main
    from models import build_generator
    from models.config import resolve_config

    torch.manual_seed(0)
    G = build_generator(resolve_config("tiny").model)
    G.config = resolve_config("tiny")
    monkeypatch.setattr(model_io, "load_model", lambda uri: G)
    out = tmp_path / "new" / "folder" / "grid.png"
    args = ["sample", "--model", "models:/transsrgan@champion", "-n", "4", "--out", str(out),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for _ in range(2):                                 # the second run replaces its own grid and single images
        assert main([*args, "--each", str(out.parent)]) == 0, capsys.readouterr().err
        assert out.is_file() and len(list(out.parent.glob("sample_*.png"))) == 4
    first = out.read_bytes()
    assert main([*args, "--seed", "1"]) == 0 and out.read_bytes() != first
    out.write_bytes(first + b"edited by the user")
    assert main(args) == 2 and "grid.png was changed since transsrgan wrote it" in capsys.readouterr().err
    assert out.read_bytes() == first + b"edited by the user"


def test_quiet_libraries_hides_warnings_even_inside_their_own_filters(capsys):
    import logging
    import warnings

    from flows.cli import quiet_libraries

    with quiet_libraries():
        with warnings.catch_warnings():              # what MLflow does around its own UserWarnings
            warnings.simplefilter("once", category=UserWarning)
            warnings.warn("a library's advice", UserWarning, stacklevel=1)
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning):                  # and the process's own settings come back afterwards
        warnings.warn("after", UserWarning, stacklevel=1)
