"""The train-transsrgan flow end to end under prefect_test_harness: real Spark local[2], real MLflow SQLite."""

from pathlib import Path

import pytest
from PIL import Image
from test_artifacts import flow_run_artifacts, table_rows  # tests/ is on sys.path (pytest rootdir conftest)

from models.data.digits import load_digits

pytestmark = pytest.mark.slow


def write_digits(folder: Path, n: int, start: int = 0, resolution: int = 16) -> Path:
    """n real digit PNGs (a small folder keeps the data gate quick)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(resolution)
    for i in range(start, start + n):
        Image.fromarray(images[i][0]).save(folder / f"{i:05d}_label{int(labels[i])}.png")
    return folder


def test_flow_trains_registers_promotes_then_skips_unchanged_data(harness, mlflow_store, tmp_path):
    import torch
    from mlflow import MlflowClient

    from chaos.tracking import image_steps
    from flows.train_transsrgan import train_transsrgan
    from tasks.model_io import load_generator

    data = write_digits(tmp_path / "digits", 96)
    params = dict(preset="tiny", data=str(data), steps=4, workers=2, spark_master="local[2]",
                  overrides={"eval.n_samples": 32, "train.sample_every": 2, "train.checkpoint_every": 2})

    first = train_transsrgan(**params)
    assert not first["skipped"] and first["steps"] == 4
    assert first["version"] == "1" and first["champion_version"] == "1" and first["champion_changed"]
    assert first["n_valid"] == 96 and first["n_quarantined"] == 0
    assert first["primary_metric"] in first["metrics"]
    assert Path(first["grid"]).is_file() and Path(first["checkpoint"]).is_file()

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline_status"] == "completed" and run.data.tags["registered_version"] == "1"
    assert run.data.tags["dataset_fingerprint"] == first["dataset_fingerprint"]
    assert run.data.params["train.steps"] == "4" and run.data.params["spark.workers"] == "2"
    assert {"loss_d", "loss_g", "images_per_s", "speedup_vs_1_worker", "efficiency"} <= set(run.data.metrics)
    # the speed-up probe ran as its own step: two measured timings, 2 workers and 1, are logged beside the ratios
    assert run.data.metrics["dfagd_s_per_iter"] > 0 and run.data.metrics["dfagd_1_worker_s_per_iter"] > 0
    top = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"validation", "samples", "checkpoints", "images"} <= top
    assert image_steps(client, first["run_id"]) == [2, 4]       # grids over training: MLflow's image slider
    inputs = {t.value: i.dataset for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert (inputs["training"].name, inputs["training"].digest) == ("digits", first["dataset_fingerprint"][:36])
    assert inputs["evaluation"].name == "digits-eval-32"       # evaluation's real subset, eval.n_samples images
    assert str(client.get_model_version_by_alias("transsrgan", "champion").version) == "1"
    G = load_generator("models:/transsrgan@champion")      # what another process does to pull the champion
    assert G(torch.zeros(2, 32)).shape == (2, 1, 16, 16)

    # One markdown: the run's MLflow description is the Prefect summary (which adds the grid); metrics stay tags.
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("### transsrgan v1: new champion") and "first version: no champion yet" in note
    assert "| preset | tiny |" in note and "| DFAGD speed-up |" in note and first["run_id"] in note
    assert f"| **{first['primary_metric']}** (primary; " in note and first["mlflow_run_url"] is None   # SQLite
    mv = client.get_model_version("transsrgan", "1")
    assert "Promotion: first version: no champion yet." in mv.description and mv.tags[f"metric.{first['primary_metric']}"]
    assert "mlflow.pyfunc.load_model(\"models:/transsrgan@champion\")" in client.get_registered_model("transsrgan").description
    arts = flow_run_artifacts(first["flow_run_id"], "transsrgan-summary", "transsrgan-metrics")
    assert arts["transsrgan-summary"].data.startswith(note) and "(data:image/png;base64," in arts["transsrgan-summary"].data
    assert {r["metric"]: r["value"] for r in table_rows(arts["transsrgan-metrics"])} == pytest.approx(first["metrics"])

    # Same files, same config: the scheduled run skips training and says why.
    second = train_transsrgan(**params)
    assert second["skipped"] and second["run_id"] == first["run_id"] and second["version"] == "1"
    assert "unchanged" in second["reason"] and first["dataset_fingerprint"][:12] in second["reason"]
    assert second["champion_version"] == "1" and not second["champion_changed"]
    arts = flow_run_artifacts(second["flow_run_id"], "transsrgan-summary", "transsrgan-metrics")
    assert "training skipped" in arts["transsrgan-summary"].data and "unchanged" in arts["transsrgan-summary"].data
    assert {r["metric"] for r in table_rows(arts["transsrgan-metrics"])} == set(first["metrics"])   # the last run's

    # New data: a new fingerprint, so it trains and registers version 2.
    write_digits(data, 8, start=96)
    third = train_transsrgan(**params)
    assert not third["skipped"] and third["version"] == "2"
    assert third["dataset_fingerprint"] != first["dataset_fingerprint"]
    # Different data: promotion does not compare across fingerprints, and says so.
    assert third["promotion_reason"]


def test_max_minutes_ends_training_with_the_final_state_saved_sampled_and_tagged(harness, mlflow_store, tmp_path):
    """--max-minutes stops training long before --steps; the run's checkpoint, its last sample grid and the
    registered model are the final state's, and the run says why it stopped."""
    from mlflow import MlflowClient

    from chaos.tracking import image_steps
    from flows.train_transsrgan import train_transsrgan
    from models.checkpoint import load_checkpoint

    data = write_digits(tmp_path / "digits", 64)
    result = train_transsrgan(preset="tiny", data=str(data), steps=1_000_000, max_minutes=0.05, engine="local",
                              overrides={"eval.n_samples": 32, "train.sample_every": 1000,
                                         "train.checkpoint_every": 1000, "train.log_every": 1000})
    assert 0 < result["steps"] < 1_000_000 and result["version"] == "1"
    assert load_checkpoint(result["checkpoint"]).step == result["steps"]
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.tags["stopped_by"] == "max_minutes" and run.data.params["train.max_minutes"] == "0.05"
    assert image_steps(client, result["run_id"])[-1] == result["steps"]


def test_bad_parameters_fail_before_any_task(harness, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.train_transsrgan import train_transsrgan

    with pytest.raises(ParameterTypeError, match="steps"):
        train_transsrgan(preset="tiny", steps=-2)
    with pytest.raises(ParameterTypeError, match="data"):
        train_transsrgan(preset="tiny", data=str(tmp_path / "missing"))


def test_a_prefect_retry_of_a_failed_flow_run_resumes_its_own_checkpoint(harness, mlflow_store, tmp_path,
                                                                          monkeypatch):
    """Attempt 1 diverges at step 12 after its checkpoint at step 10; Prefect's retry of the same flow run picks
    that checkpoint up (and the same MLflow run) instead of starting over, then diverges the same way."""
    from mlflow import MlflowClient

    from chaos.faults import nan_gradients
    from flows.train_transsrgan import train_transsrgan
    from spark_training.dfagd import DFAGDHooks, train_dfagd

    # NaN gradients from step 12 on, for every DFAGD run in this process (the flow passes no hooks of its own)
    monkeypatch.setitem(train_dfagd.__kwdefaults__, "hooks", DFAGDHooks(wrap_source=nan_gradients(range(12, 20))))
    data = write_digits(tmp_path / "digits", 64)
    flaky = train_transsrgan.with_options(retries=1, retry_delay_seconds=0)
    state = flaky(preset="tiny", data=str(data), steps=20, workers=1, spark_master="local[1]", force=True,
                  overrides={"train.checkpoint_every": 5, "train.max_bad_steps": 2}, return_state=True)
    assert state.is_failed() and "training diverged" in str(state.message or state.result(raise_on_failure=False))
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("transsrgan").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]           # both attempts fed one MLflow run
    run = runs[0]
    assert run.data.tags["resumed_from_step"] == "10" and run.info.status == "FAILED"
