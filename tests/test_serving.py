"""REST serving of the champion: what predict() takes (tasks/pyfunc.py), and `mlflow models serve` for real."""

import base64
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.pyfunc import MAX_IMAGES, PayloadError, parse_request


# -- the request, without MLflow ---------------------------------------------------------------------------------
def test_a_request_is_seeds_or_z_with_n_and_labels():
    r = parse_request(pd.DataFrame({"seed": [3, 4], "label": [1, 9]}), {"n": 2, "output": "png"}, z_dim=8,
                      num_classes=10)
    assert (r.seeds, r.labels, r.n, r.output, r.rows) == ([3, 4], [1, 9], 2, "png", 2)
    r = parse_request(pd.DataFrame({"z": [[0.5] * 8]}), None, z_dim=8)
    assert r.z.shape == (1, 8) and r.z.dtype == np.float32 and r.seeds is None
    r = parse_request(pd.DataFrame({"seed": [7]}), {"scale_w": 2.0}, z_dim=None, singan=True)
    assert r.size == {"scale_w": 2.0}


def test_truncation_param_is_the_sample_commands():
    """params truncation on seed rows gives what `sample --truncation` gives (models.grid.sample), 1 = off."""

    import torch

    from models import build_generator
    from models.config import resolve_config
    from models.grid import sample
    from tasks.pyfunc import ModelPyfunc

    cfg = resolve_config("tiny")
    torch.manual_seed(0)
    model = ModelPyfunc()
    model.singan, model.G = None, build_generator(cfg.model).eval()
    model.G.config = cfg
    z_dim = cfg.model.z_dim
    assert parse_request(pd.DataFrame({"seed": [1]}), None, z_dim=8).truncation == 1.0
    for psi in (1.0, 0.5):
        got = model.predict(None, pd.DataFrame({"seed": [4]}), {"n": 3, "truncation": psi})
        np.testing.assert_array_equal(got, sample(model.G, 3, 4, z_dim, truncation=psi).numpy())
    assert not np.array_equal(got, sample(model.G, 3, 4, z_dim).numpy())


@pytest.mark.parametrize("frame, params, kw, words", [
    ({"label": [1]}, None, {}, "expected a column seed (or z)"),
    ({"seed": [1], "z": [[0.0] * 8]}, None, {}, "a seed column or a z column (not both)"),
    ({"seed": [1]}, {"n": 0}, {}, "n: expected an integer >= 1, got 0"),
    ({"seed": [1]}, {"output": "jpeg"}, {}, "output: expected one of array, png"),
    ({"seed": [-1]}, None, {}, "seed: expected integers in [0, 2^63)"),
    ({"seed": [1.5]}, None, {}, "seed: expected integers"),
    ({"seed": [1, None]}, None, {}, "seed: give it in every row or in none"),
    ({"z": [[0.0] * 3]}, None, {}, "z: expected 8 finite numbers per row, got shape (1, 3)"),
    ({"z": [[float("nan")] * 8]}, None, {}, "z: expected 8 finite numbers"),
    ({"z": [[0.0] * 8]}, {"n": 2}, {}, "n: a z row is one image"),
    ({"seed": [1], "label": [3]}, None, {}, "label: this model is unconditional"),
    ({"seed": [1], "label": [10]}, None, {"num_classes": 10}, "label: expected integers in [0, 10)"),
    ({"seed": [0, 1]}, {"n": MAX_IMAGES}, {}, f"at most {MAX_IMAGES} per request"),
    ({"z": [[0.0] * 8]}, None, {"z_dim": None, "singan": True}, "z: this model takes seeds only"),
    ({"seed": [1]}, {"truncation": 0.0}, {}, "truncation: expected a number in (0, 1]"),
    ({"seed": [1]}, {"truncation": 1.5}, {}, "truncation: expected a number in (0, 1]"),
    ({"z": [[0.0] * 8]}, {"truncation": 0.5}, {}, "truncation: only for a generator's seed rows"),
    ({"seed": [1]}, {"truncation": 0.5}, {"z_dim": None, "singan": True}, "truncation: only for a generator"),
])
def test_a_bad_request_is_one_line_naming_the_field(frame, params, kw, words):
    kw = {"z_dim": 8, **kw}
    with pytest.raises(PayloadError) as err:
        parse_request(pd.DataFrame(frame), params, **kw)
    assert words in err.value.reason and "\n" not in err.value.reason
    assert err.value.get_http_status_code() == 400
    assert json.loads(err.value.serialize_as_json()) == {"error_code": "INVALID_PARAMETER_VALUE",
                                                         "message": err.value.reason}


# -- `mlflow models serve -m models:/NAME@champion` on loopback ---------------------------------------------------
@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny class-conditional generator, registered and promoted to champion in its own SQLite store."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as track_utils

    from models import build_generator
    from models.config import resolve_config
    from tasks.model_io import log_generator
    from tasks.registry import promote, register_version
    from tasks.tracking import configure_tracking, ensure_experiment

    saved = track_utils._tracking_uri, reg_utils._registry_uri
    uri = f"sqlite:///{tmp_path_factory.mktemp('serve-store') / 'mlflow.db'}"
    configure_tracking(uri)
    cfg = resolve_config("tiny", {"model.num_classes": 10})
    G = build_generator(cfg.model).eval()
    with mlflow.start_run(experiment_id=ensure_experiment("t_serve")) as run:
        log_generator(G, cfg)
    version = register_version(run.info.run_id, "t_serve", {"fd_inception_random": 1.0}, "inception_random", "fp")
    promote("t_serve", version, "fd_inception_random")
    yield uri, G, cfg
    track_utils._tracking_uri, reg_utils._registry_uri = saved


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_and_bad_payloads_get_400(champion, tmp_path):
    import httpx

    from chaos.services import Service, free_port
    from models.grid import sample, to_uint8

    uri, G, cfg = champion
    port = free_port()
    bindir = Path(sys.executable).parent           # MLflow starts `uvicorn` by name: the venv's bin goes first
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = Service("mlflow models serve", [str(bindir / "mlflow"), "models", "serve",
                                             "-m", "models:/t_serve@champion", "--env-manager", "local",
                                             "-h", "127.0.0.1", "-p", str(port)],
                     f"http://127.0.0.1:{port}/ping", env, tmp_path / "serve.log")
    server.start(timeout_s=300)
    try:
        def post(body: dict) -> httpx.Response:
            return httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)

        # seed 3, n 4: the four images `transsrgan sample --seed 3 -n 4` draws, as base64 PNGs
        good = post({"dataframe_records": [{"seed": 3}], "params": {"n": 4, "output": "png"}})
        assert good.status_code == 200, good.text
        pngs = good.json()["predictions"]
        got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in pngs])
        want = to_uint8(sample(G, 4, 3, cfg.model.z_dim, cfg.model.num_classes))[..., 0]     # (4, H, W)
        assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1
        # a class label and arrays: float32 (2, C, H, W) in [-1, 1]
        arrays = post({"dataframe_records": [{"seed": 0, "label": 7}], "params": {"n": 2}})
        assert arrays.status_code == 200, arrays.text
        assert np.asarray(arrays.json()["predictions"]).shape == (2, 1, 16, 16)

        for body, words in [({"dataframe_records": [{"sead": 1}]}, "expected a column seed (or z)"),
                            ({"dataframe_records": [{"seed": 1, "label": 10}]}, "label: expected integers in [0, 10)")]:
            bad = post(body)
            assert bad.status_code == 400, bad.text
            answer = bad.json()
            assert answer == {"error_code": "INVALID_PARAMETER_VALUE", "message": answer["message"]}
            assert words in answer["message"] and "\n" not in answer["message"]
            assert "Traceback" not in bad.text
        assert server.proc.poll() is None                    # still serving after the bad requests
    finally:
        server.stop()
    assert server.proc.poll() is not None
