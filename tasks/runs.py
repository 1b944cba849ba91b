"""The run record: a run folder's run.json, the resume point it gives, and the scheduled-retraining decision."""

# A run folder is `$TRANSSRGAN_HOME/runs/<flow run name>` (or `--out DIR`). The training task writes `run.json`
# there when it starts: the MLflow run id, the original `data.source`, the dataset fingerprint and the config hash.
# `--resume PATH|latest` (flow parameter `resume`) continues such a folder: same config (read from the checkpoint),
# same data (the gate must give the same fingerprint), same MLflow run (its metric curves go on), same folder.
# The data order and every random draw are functions of (seed, step), so the resumed run reaches the same weights
# as one that was never interrupted. A scheduled run instead asks `decide_retrain` whether anything changed since
# the last completed run (tags on the MLflow runs: tasks.tags).

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow

from models.checkpoint import read_checkpoint
from models.config import Config, config_from_dict
from models.files import write_atomic
from models.paths import data_home, user_path
from tasks.tags import COMPLETED, TAG_CONFIG_HASH, TAG_FINGERPRINT, TAG_PIPELINE, TAG_VERSION

CHECKPOINT = "checkpoint.pt"
RUN_RECORD = "run.json"
LATEST = "latest"


class ResumeError(ValueError):
    """`resume` points at nothing resumable, or at a run whose data or config differ; the message says which."""


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    checkpoint: str
    out_dir: str
    step: int
    config: Config                     # the checkpoint's resolved config, data.source = the original source
    fingerprint: str | None            # the dataset fingerprint the run trained on (None: not recorded)
    mlflow_run_id: str | None


def runs_root() -> Path:
    return data_home() / "runs"


def write_run_record(out_dir: Path, **fields: Any) -> None:
    """run.json in the run folder, written atomically (models.files)."""
    write_atomic(Path(out_dir) / RUN_RECORD, json.dumps(fields, indent=2, sort_keys=True))


def read_run_record(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def find_checkpoint(resume: str) -> Path:
    """`latest` (the newest checkpoint under $TRANSSRGAN_HOME/runs), a run folder, or a checkpoint file."""
    if resume == LATEST:
        found = sorted(runs_root().glob(f"*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ResumeError(f"resume: no checkpoint under {runs_root()} to resume (expected "
                              f"<run folder>/{CHECKPOINT}); pass a run folder or a checkpoint file")
        return found[-1]
    path = user_path(resume)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ResumeError(f"resume: no checkpoint at {path} (expected 'latest', a run folder holding "
                          f"{CHECKPOINT}, or a checkpoint file)")
    return path


def resume_point(resume: str) -> ResumePoint:
    """Everything needed to continue a run, read from its checkpoint and run.json."""
    ckpt_path = find_checkpoint(resume)
    try:
        ckpt = read_checkpoint(ckpt_path, mmap=True)   # only config and step: the training task loads it
    except Exception as exc:  # noqa: BLE001 - torn or foreign file: say which
        raise ResumeError(f"resume: {ckpt_path} is not a readable checkpoint: {type(exc).__name__}: {exc}") from exc
    record = read_run_record(ckpt_path.parent)
    config = config_from_dict(ckpt["config"])
    source = record.get("data_source") or config.data.source
    config = config.updated({"data.source": source})
    return ResumePoint(str(ckpt_path), str(ckpt_path.parent), int(ckpt["step"]), config,
                       record.get("dataset_fingerprint"), record.get("mlflow_run_id"))


def config_differences(a: Config, b: Config) -> list[str]:
    """'section.field: A -> B' for each field that differs, data.source excepted (the gate rewrites it)."""
    fa, fb = a.flat(), b.flat()
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if k != "data.source" and fa.get(k) != fb.get(k)]


# ---------------------------------------------------------------- scheduled retraining

@dataclasses.dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str
    fingerprint: str
    config_hash: str
    last_run_id: str | None = None
    last_version: str | None = None


def config_hash(config: Config) -> str:
    """sha256 (16 hex) of the sections that shape a run of the config's model family, without data.source.

    The source path is left out because the data gate rewrites it to its manifest, the dataset fingerprint stands
    for the data, and the same files reached through another path are the same data.
    """
    d = config.to_dict(config.sections())
    if "data" in d:
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
