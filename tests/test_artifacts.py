"""What a flow run tells people: the one markdown (MLflow run description = Prefect summary), the model and version
descriptions, the Prefect artifacts (read back through a real Prefect API) and the CLI's closing lines."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tasks.registry import MlflowLinks, RunReport


def flow_run_artifacts(flow_run_id: str, *keys: str) -> dict:
    """{key: artifact} of one flow run, read through the Prefect client (the API the UI reads)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=list(keys)), flow_run_id=ArtifactFilterFlowRunId(any_=[str(flow_run_id)])))}


def table_rows(artifact) -> list[dict]:
    """A table artifact's rows (the API returns them as JSON text)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def _report(**kw) -> RunReport:
    base = dict(model_name="transsrgan", run_id="r123", version="3",
                facts=(("preset", "tiny"), ("DFAGD speed-up", "1.80× vs 1 worker (efficiency 0.90)")),
                metrics={"recall": 0.5, "fd_digits": 74.6}, primary_metric="fd_digits", champion_version="3",
                promoted=True, reason="fd_digits 74.6 beats champion v2 (80.1) by more than 0 (lower is better)",
                aliases=("champion",), extractor="inception_random")
    return RunReport(**{**base, **kw})


def test_run_markdown_has_the_verdict_facts_metrics_and_ids_without_a_server():
    from tasks.registry import run_markdown

    md = run_markdown(_report(), MlflowLinks())
    assert md.startswith("### transsrgan v3: new champion")
    assert "takes `@champion` (champion: v3). fd_digits 74.6 beats champion v2" in md
    assert "| preset | tiny |" in md and "| DFAGD speed-up | 1.80× vs 1 worker (efficiency 0.90) |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "|---" not in line]
    metric_rows = rows[rows.index("| metric | value |") + 1:]
    assert metric_rows == ["| **fd_digits** (primary; lower is better) | 74.6 |", "| recall | 0.5 |"]
    assert "run `r123`, model version `transsrgan v3` (browse with `make ui`)" in md
    assert "](" not in md                                                # no links without a server URL

    lost = run_markdown(_report(promoted=False, champion_version="2", aliases=("challenger",)), MlflowLinks())
    assert "v3: challenger" in lost and "does not take `@champion` (champion: v2)" in lost
    skipped = run_markdown(_report(skipped=True, reason="data and config unchanged", metrics={}), MlflowLinks())
    assert "training skipped" in skipped and "**Skipped:** data and config unchanged" in skipped
    assert "| metric |" not in skipped


def test_mlflow_links_only_for_http_servers_and_without_credentials():
    from tasks.registry import mlflow_links, run_markdown

    links = mlflow_links("https://alice:secret@mlflow.example:5000/", "7", "r123", "transsrgan", "3")
    assert links == MlflowLinks("https://mlflow.example:5000/#/experiments/7/runs/r123",
                                "https://mlflow.example:5000/#/models/transsrgan/versions/3")
    md = run_markdown(_report(), links)
    assert "[r123](https://mlflow.example:5000/#/experiments/7/runs/r123)" in md and "secret" not in md
    assert "[transsrgan v3](https://mlflow.example:5000/#/models/transsrgan/versions/3)" in md
    assert mlflow_links("sqlite:////tmp/mlflow.db", "7", "r123", "transsrgan", "3") == MlflowLinks()
    assert mlflow_links("http://127.0.0.1:5000", None, None, "transsrgan", None) == MlflowLinks()


def test_model_and_version_descriptions_say_what_it_is_and_how_to_sample():
    from tasks.registry import model_description, version_description

    md = model_description("transsrgan")
    assert "TransSRGAN" in md and "transsrgan sample --model models:/transsrgan@champion" in md
    assert 'mlflow.pyfunc.load_model("models:/transsrgan@champion")' in md and "model.predict(z)" in md
    singan = model_description("singan")
    assert "SinGAN" in singan and '"seed": [0, 1, 2]' in singan and "champion-<image>" in singan
    assert "baseline" in model_description("dcgan")

    v = version_description(_report())
    # the versions table shows the first line as it is: plain text, no markdown
    assert v.splitlines()[0] == "transsrgan v3: champion (fd_digits 74.6, @champion)"
    assert v.splitlines()[1] == "" and not re.search(r"[*_`#\[]", v.splitlines()[0].replace("fd_digits", ""))
    assert version_description(_report(promoted=False, aliases=("challenger",), primary_metric=None)).startswith(
        "transsrgan v3: challenger (@challenger)\n")
    assert "Promotion: fd_digits 74.6 beats champion v2 (80.1)" in v and "| recall | 0.5 |" in v
    assert "`inception_random`" in v and "models:/transsrgan/3" in v


def test_artifact_keys_are_stable_lowercase_with_dashes():
    from flows.artifacts import artifact_key

    assert artifact_key("transsrgan", "summary") == "transsrgan-summary"
    assert artifact_key("singan", "metrics") == "singan-metrics"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("My_Model", "summary"))


def test_grid_is_embedded_as_a_png_data_uri_no_larger_than_the_cap(tmp_path):
    from flows.artifacts import grid_markdown

    grid = tmp_path / "grid.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 1000), dtype=np.uint8)).save(grid)
    md = grid_markdown(str(grid), max_side=200)
    uri = re.search(r"!\[sample grid\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert uri and f"`{grid}`" in md
    with Image.open(io.BytesIO(base64.b64decode(uri.group(1)))) as im:
        assert im.format == "PNG" and im.size == (200, 60)
    assert grid_markdown(None) == "" and grid_markdown(str(tmp_path / "missing.png")) == ""


def test_closing_lines_name_the_pages_when_servers_are_known(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.commands.train import where_to_look

    s = {"run_id": "r123", "grid": "/runs/x/samples/transsrgan-v3.png", "flow_run_id": "f-1",
         "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/r123"}
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        lines = where_to_look(s, "Prefect server at http://127.0.0.1:4200/api")
    assert lines == ["MLflow:    http://127.0.0.1:5000/#/experiments/1/runs/r123",
                     "Prefect:   http://127.0.0.1:4200/runs/flow-run/f-1",
                     "samples:   /runs/x/samples/transsrgan-v3.png"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/t-artifacts/mlflow.db")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        lines = where_to_look({**s, "mlflow_run_url": None, "grid": None}, "a temporary local Prefect server")
    assert lines[0].startswith("MLflow:    run r123 in sqlite:////tmp/t-artifacts/mlflow.db; browse with `make ui`")
    assert lines[1] == "Prefect:   a temporary local Prefect server" and len(lines) == 2


@pytest.mark.slow
def test_publish_summary_creates_both_artifacts_by_key(harness, tmp_path):
    """Against the real Prefect API: a flow run's summary (markdown, grid inside) and metrics (table) by key."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.artifacts import publish_summary
    from tasks.pipeline import RunDescription

    grid = tmp_path / "grid.png"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(grid)

    @flow(name="t-artifacts")
    def tiny() -> tuple[str, dict[str, str]]:
        keys = publish_summary(_report(), RunDescription("### transsrgan v3: new champion", None, None), str(grid))
        return flow_run.id, keys

    run_id, keys = tiny()
    assert keys == {"summary": "transsrgan-summary", "metrics": "transsrgan-metrics"}
    found = flow_run_artifacts(run_id, *keys.values())
    assert set(found) == set(keys.values())
    summary, table = found["transsrgan-summary"], found["transsrgan-metrics"]
    assert summary.type == "markdown" and summary.data.startswith("### transsrgan v3: new champion")
    assert "![sample grid](data:image/png;base64," in summary.data
    rows = table_rows(table)
    assert table.type == "table" and [r["metric"] for r in rows] == ["fd_digits", "recall"]
    assert rows[0]["primary"] is True and rows[0]["value"] == pytest.approx(74.6)
