"""The train-singan flow end to end under prefect_test_harness: tiny preset, real GX gate, real MLflow SQLite."""

import numpy as np
import pytest
from test_artifacts import flow_run_artifacts, table_rows  # tests/ is on sys.path (pytest rootdir conftest)

pytestmark = pytest.mark.slow


def test_flow_trains_registers_promotes_and_samples_the_champion(harness, mlflow_store, tmp_path):
    from mlflow import MlflowClient
    from PIL import Image

    from flows.cli import main
    from flows.train_singan import train_singan
    from models.singan import SinGANState
    from tasks.model_io import load_model, write_samples

    s = train_singan(preset="tiny", eval_samples=3)           # the embedded skimage:hubble_deep_field
    assert s["version"] == "1" and s["champion_version"] == "1" and s["champion_changed"]
    assert s["image"] == "hubble_deep_field" and s["champion_alias"] == "champion-hubble_deep_field"
    assert s["primary_metric"] in ("sifid", "sifid_inception_random")
    assert s["primary_metric"] == ("sifid" if s["standard_weights"] else "sifid_inception_random")
    assert {"diversity", "reconstruction_rmse", s["primary_metric"]} <= set(s["metrics"])
    assert all(np.isfinite(v) for v in s["metrics"].values())

    client = MlflowClient()
    run = client.get_run(s["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "singan" and run.info.status == "FINISHED"
    assert run.data.params["preset"] == "tiny" and run.data.params["singan.iters_per_scale"] == "2"
    assert {"loss_d", "loss_g", "loss_rec", "gradient_penalty", "s_per_iter", "train_wall_s",
            s["primary_metric"], "diversity"} <= set(run.data.metrics)
    assert run.data.tags["feature_extractor"] == s["feature_extractor"]
    assert run.data.tags["image_fingerprint"] == s["image_fingerprint"]
    assert run.data.tags["pipeline_status"] == "completed" and run.data.tags["registered_version"] == "1"
    top = {a.path for a in client.list_artifacts(s["run_id"])}
    assert {"validation", "samples", "checkpoints", "config.json"} <= top
    assert [client.get_logged_model(o.model_id).name for o in run.outputs.model_outputs] == ["singan"]
    assert [a.path for a in client.list_artifacts(s["run_id"], "checkpoints")] == ["checkpoints/singan.pt"]

    mv = client.get_model_version_by_alias("singan", "champion")
    assert str(mv.version) == "1" and mv.tags["image"] == "hubble_deep_field"
    # descriptions: the run's (= the Prefect summary, less the grid), the version's, the registered model's
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("### singan v1: new champion") and "`@champion-hubble_deep_field`" in note
    assert "| image | skimage:hubble_deep_field" in note and f"| **{s['primary_metric']}** (primary; lower" in note
    assert "Promotion: first version of image" in mv.description
    assert "SinGAN" in client.get_registered_model("singan").description
    arts = flow_run_artifacts(s["flow_run_id"], "singan-summary", "singan-metrics")
    assert arts["singan-summary"].data.startswith(note) and "(data:image/png;base64," in arts["singan-summary"].data
    assert {r["metric"]: r["value"] for r in table_rows(arts["singan-metrics"])} == pytest.approx(s["metrics"])
    assert mv.tags["image_fingerprint"] == s["image_fingerprint"] and mv.tags["model_family"] == "singan"
    assert client.get_model_version_by_alias("singan", "champion-hubble_deep_field").version == 1

    # Sampling from the registry: right shape, same seed -> same images, other sizes on request.
    uri = "models:/singan@champion"
    state = load_model(uri)
    assert isinstance(state, SinGANState)
    h, w = state.sizes[-1]
    grid, _, size = write_samples(state, 3, tmp_path / "a.png", seed=7, each_dir=tmp_path / "a")
    assert size == (h, w) and len(list((tmp_path / "a").glob("*.png"))) == 3
    assert main(["sample", "--model", uri, "-n", "3", "--out", str(tmp_path / "b.png"), "--seed", "7",
                 "--each", str(tmp_path / "b"), "--scale", "1"]) == 0
    for i in range(3):
        a = (tmp_path / "a" / f"sample_{i:04d}.png").read_bytes()
        assert a == (tmp_path / "b" / f"sample_{i:04d}.png").read_bytes()
    assert main(["sample", "--model", uri, "-n", "2", "--out", str(tmp_path / "w.png"), "--scale", "1",
                 "--height", str(h), "--width", str(2 * w)]) == 0
    grid = np.asarray(Image.open(tmp_path / "w.png"))
    assert grid.shape == (h + 4, 2 * (2 * w + 2) + 2, 3)                      # 2 tiles in a row, 2 px padding
    assert main(["sample", "--model", uri, "-n", "2", "--out", str(tmp_path / "x.png"), "--scale-w", "2",
                 "--width", "9"]) == 2                                        # one way to set the size

    # The pyfunc flavour (models-from-code) gives the same image as the library for the same seed.
    import mlflow
    import pandas as pd

    from models.singan import sample
    pred = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"seed": [7]}))
    assert pred.shape == (1, 3, h, w)
    np.testing.assert_allclose(pred[0], sample(state, 1, 7)[0].numpy(), atol=1e-5)


def test_an_image_smaller_than_the_coarsest_scale_is_stopped_by_the_gate(harness, mlflow_store, tmp_path):
    from PIL import Image

    from flows.train_singan import train_singan
    from tasks.data_gate import DataGateError

    img = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 40, 3), dtype=np.uint8)).save(img)
    with pytest.raises(DataGateError, match=r"small.png: rejected by the data gate: .*too-small: 40x10"):
        train_singan(preset="tiny", image=str(img))
