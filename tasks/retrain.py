"""Scheduled-retraining skip logic: train only when the data fingerprint or the config changed (or forced)."""

import hashlib
import json
from dataclasses import dataclass

import mlflow

from models.config import Config

# Tags the flow writes on its MLflow run; the skip logic reads them back.
TAG_FINGERPRINT = "dataset_fingerprint"
TAG_CONFIG_HASH = "config_hash"
TAG_PIPELINE = "pipeline_status"      # "running" while the flow works on the run, "completed" after promotion
TAG_VERSION = "registered_version"
TAG_FLOW_RUN = "prefect_flow_run_id"
COMPLETED = "completed"


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str
    fingerprint: str
    config_hash: str
    last_run_id: str | None = None
    last_version: str | None = None


def config_hash(config: Config) -> str:
    """sha256 (16 hex) of the resolved config without data.source: the dataset fingerprint stands for the data.

    The source path is left out because the data gate rewrites it to its manifest, and the same files reached
    through another path are the same data.
    """
    d = config.to_dict()
    d["data"] = {k: v for k, v in d["data"].items() if k != "source"}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def last_completed_run(experiment: str, fingerprint: str, cfg_hash: str) -> dict[str, str] | None:
    """The newest FINISHED run of `experiment` whose pipeline completed on this fingerprint and config hash."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=(f"tags.{TAG_FINGERPRINT} = '{fingerprint}' and tags.{TAG_CONFIG_HASH} = '{cfg_hash}' "
                       f"and tags.{TAG_PIPELINE} = '{COMPLETED}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        return None
    run = runs[0]
    return {"run_id": run.info.run_id, "version": run.data.tags.get(TAG_VERSION, "")}


def decide_retrain(experiment: str, fingerprint: str, cfg_hash: str, force: bool = False) -> RetrainDecision:
    """Skip when a completed run already trained on the same data and config, unless `force`."""
    last = last_completed_run(experiment, fingerprint, cfg_hash)
    if force:
        why = f"forced (an identical run exists: {last['run_id']})" if last else "forced"
        return RetrainDecision(True, why, fingerprint, cfg_hash, last and last["run_id"], last and last["version"])
    if last is None:
        return RetrainDecision(True, f"no completed run on dataset {fingerprint[:12]} with config {cfg_hash}",
                               fingerprint, cfg_hash)
    return RetrainDecision(
        False, f"unchanged since run {last['run_id']} (version {last['version'] or '?'}): dataset fingerprint "
               f"{fingerprint[:12]} and config hash {cfg_hash} are the same; pass force=True to train anyway",
        fingerprint, cfg_hash, last["run_id"], last["version"] or None)
