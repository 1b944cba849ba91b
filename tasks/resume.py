"""Where a training run can continue from: its run folder (checkpoint.pt + run.json) and the MLflow run it fed.

A run folder is `$TRANSSRGAN_HOME/runs/<flow run name>` (or `--out DIR`). The training task writes `run.json`
there when it starts: the MLflow run id, the original `data.source`, the dataset fingerprint and the config hash.
`--resume PATH|latest` (flow parameter `resume`) continues such a folder: same config (read from the checkpoint),
same data (the gate must give the same fingerprint), same MLflow run (its metric curves go on), same folder.
The data order and every random draw are functions of (seed, step), so the resumed run reaches the same weights
as one that was never interrupted.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from models.checkpoint import read_checkpoint
from models.config import Config, config_from_dict
from models.paths import data_home

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
    """run.json in the run folder, written atomically (temp file + rename)."""
    path = out_dir / RUN_RECORD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fields, indent=2, sort_keys=True))
    os.replace(tmp, path)


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
    path = Path(resume).expanduser()
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
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=source))
    return ResumePoint(str(ckpt_path), str(ckpt_path.parent), int(ckpt["step"]), config,
                       record.get("dataset_fingerprint"), record.get("mlflow_run_id"))


def config_differences(a: Config, b: Config) -> list[str]:
    """'section.field: A -> B' for each field that differs, data.source excepted (the gate rewrites it)."""
    fa, fb = a.flat(), b.flat()
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if k != "data.source" and fa.get(k) != fb.get(k)]
