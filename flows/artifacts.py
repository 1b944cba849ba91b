"""Prefect artifacts of a training flow run: the summary (markdown, with the sample grid) and the metrics table."""

# The summary is the MLflow run description (tasks.registry.run_markdown, rendered once by tasks.pipeline.describe_run)
# plus the sample grid. Prefect's UI renders a `data:` image URI in a markdown artifact (checked in headless
# Chromium against `prefect server start`, Prefect 3.8.8, both UIs): the grid travels inside the artifact and shows
# with no MLflow server, and for the embedded SQLite store, which has no URL to link to.

import base64
import io
import re
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.pipeline import RunDescription, describe_run
from tasks.registry import RunReport

GRID_MAX_SIDE = 384             # px: larger grids are embedded as a thumbnail (the file keeps full size)


def artifact_key(model_name: str, what: str) -> str:
    """Stable keys, the same for every run of a model (Prefect keys: lowercase letters, digits, dashes):
    `transsrgan-summary`, `transsrgan-metrics`, `singan-summary`, ..."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{model_name}-{what}".lower()).strip("-")


def grid_markdown(grid: str | None, max_side: int = GRID_MAX_SIDE) -> str:
    """The grid as an embedded PNG (a data URI, downscaled to max_side) and its path; '' when there is none."""
    if not grid or not Path(grid).is_file():
        return ""
    from PIL import Image

    with Image.open(grid) as im:
        im.thumbnail((max_side, max_side), Image.Resampling.NEAREST)   # sharp pixels; only ever shrinks
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f"\n\n![sample grid]({uri})\n\nSample grid: `{grid}`"


def metrics_rows(report: RunReport) -> list[dict[str, Any]]:
    """One row per metric, the primary one first (the table artifact)."""
    order = sorted(report.metrics, key=lambda k: (k != report.primary_metric, k))
    return [{"metric": k, "value": float(report.metrics[k]), "primary": k == report.primary_metric} for k in order]


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(report: RunReport, description: RunDescription, grid: str | None) -> dict[str, str]:
    """The summary (markdown) and metrics (table) artifacts of this flow run; returns their keys."""
    name = report.model_name
    keys = {"summary": artifact_key(name, "summary"), "metrics": artifact_key(name, "metrics")}
    what = "training skipped" if report.skipped else f"v{report.version}"
    create_markdown_artifact(description.markdown + grid_markdown(grid), key=keys["summary"],
                             description=f"{name} {what}: champion decision, metrics, where to look in MLflow")
    create_table_artifact(metrics_rows(report), key=keys["metrics"],
                          description=f"{name} {what}: evaluation metrics"
                                      + (" of the last completed run" if report.skipped else ""))
    get_run_logger().info(f"Prefect artifacts: {keys['summary']}, {keys['metrics']}")
    return keys


def report_run(summary: dict[str, Any], report: RunReport, grid: str | None) -> dict[str, Any]:
    """Describe the run in MLflow and publish its Prefect artifacts, from one markdown; returns the flow's
    summary with the links (MLflow run and version pages on an http(s) server, the Prefect flow run id)."""
    described = describe_run(report)
    publish_summary(report, described, grid)
    return {**summary, "mlflow_run_url": described.run_url, "mlflow_version_url": described.version_url,
            "flow_run_id": flow_run.id}
