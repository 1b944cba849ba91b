"""Two `transsrgan train` runs started at once on one TRANSSRGAN_HOME (one SQLite MLflow store, one runs folder,
one PREFECT_HOME with a temporary Prefect server each): both finish, and nothing is shared by accident.

Nothing in the product refuses a second training, so a run that fails here is a collision (a shared folder, a
store both initialise), not a refusal."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = 2


def test_a_default_run_folder_is_never_another_flow_runs(tmp_path, monkeypatch):
    """Flow run names repeat: a second run of the same name gets its own folder, not the first one's checkpoint."""
    monkeypatch.setenv("TRANSSRGAN_HOME", str(tmp_path))
    from tasks.runs import write_run_record
    from tasks.train import _run_folder

    first = _run_folder(None, "electric-sloth")
    write_run_record(first, flow_run_id="another flow run")
    second = _run_folder(None, "electric-sloth")
    assert second != first and second.parent == first.parent and second.is_dir()
    assert _run_folder(str(first), "electric-sloth") == first          # an explicit --out is used as given


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_two_trainings_at_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {**os.environ, "TRANSSRGAN_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "flows.cli", "train", "--preset", "tiny", "--steps", "4", "--force"]
    logs = [(tmp_path / f"run{i}.out", tmp_path / f"run{i}.err") for i in range(RUNS)]
    started = time.monotonic()
    procs = []
    for out, err in logs:
        with open(out, "w") as o, open(err, "w") as e:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=o, stderr=e))
    codes = [p.wait(timeout=2700) for p in procs]
    print(f"two trainings at once: {time.monotonic() - started:.0f} s, exit codes {codes}")

    for code, (out, err) in zip(codes, logs):
        said = [line for line in err.read_text().splitlines() if line.startswith("transsrgan train:")]
        assert code == 0, f"exit {code}: {said}\n{out.read_text()[-2000:]}\n{err.read_text()[-4000:]}"
    finished = [out.read_text() for out, _ in logs]

    # every finished run has its own folder: a checkpoint that loads and a run.json that parses
    from models.checkpoint import load_checkpoint

    folders = [Path(line.split(":", 1)[1].strip()).parent for text in finished for line in text.splitlines()
               if line.startswith("checkpoint:")]
    assert len(folders) == len(finished) and len(set(folders)) == len(folders), folders
    records = []
    for folder in folders:
        state = load_checkpoint(folder / "checkpoint.pt")
        assert state.step == 4
        records.append(json.loads((folder / "run.json").read_text()))
    assert len({r["mlflow_run_id"] for r in records}) == len(records)
    assert len({r["flow_run_id"] for r in records}) == len(records)

    # each MLflow run is its own flow run's; the registry holds one version per finished run and one champion
    from mlflow.tracking import MlflowClient

    from tasks.tags import TAG_FLOW_RUN
    from tasks.tracking import default_tracking_uri

    monkeypatch.setenv("TRANSSRGAN_HOME", str(home))
    store = default_tracking_uri()
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    for record in records:
        assert client.get_run(record["mlflow_run_id"]).data.tags[TAG_FLOW_RUN] == record["flow_run_id"]
    versions = client.search_model_versions("name='transsrgan'")
    assert sorted(v.run_id for v in versions) == sorted(r["mlflow_run_id"] for r in records)
    aliases = client.get_registered_model("transsrgan").aliases
    assert "champion" in aliases and aliases["champion"] in {v.version for v in versions}, aliases
