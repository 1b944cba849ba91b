"""The training task: DFAGD on Spark (or the reference trainer), tracked in MLflow, progress in the Prefect UI."""

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from models.checkpoint import load_checkpoint
from models.config import Config
from models.data import load_dataset
from models.paths import data_home
from models.step import GANState
from models.trainer import DivergenceError, LocalGradSource, train
from spark_training.dfagd import DFAGDStats, train_dfagd
from tasks.mlflow_sink import CHECKPOINTS_DIR, MlflowSink
from tasks.model_io import log_generator
from tasks.resume import (
    CHECKPOINT,
    ResumeError,
    ResumePoint,
    config_differences,
    read_run_record,
    write_run_record,
)
from tasks.retrain import TAG_CONFIG_HASH, TAG_FLOW_RUN, TAG_PIPELINE, RetrainDecision
from tasks.tracking import configure_tracking, start_training_run


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What the later tasks need: small values only (no modules, no sessions)."""

    run_id: str
    checkpoint: str
    out_dir: str
    steps: int
    wall_s: float
    metrics: dict[str, float]     # the last logged training metrics (loss_d, loss_g, images_per_s, ...)
    resumed_from: int             # step the run resumed at (0 = fresh)


def _load_matching(path: Path, config: Config) -> tuple[GANState, list[str]]:
    """The checkpoint's full state (one read) and how its config differs from `config` (data.source aside)."""
    state = load_checkpoint(path)                       # built with the stored config, so the shapes match
    diff = config_differences(state.config, config)
    state.config = config                               # same but for data.source: this run's manifest
    return state, diff


def _own_checkpoint(out: Path, config: Config, fingerprint: str, print_fn) -> GANState | None:
    """A retried flow run finds its own checkpoint in its private folder; resume only with the same config and data."""
    path = out / CHECKPOINT
    record = read_run_record(out)
    if not path.is_file() or record.get("flow_run_id") != str(flow_run.id or ""):
        return None                      # another flow run's folder (names can repeat): never resume it
    state, diff = _load_matching(path, config)
    if diff or record.get("dataset_fingerprint") not in (None, fingerprint):
        print_fn(f"ignoring {path}: it was written with another config or other data")
        return None
    print_fn(f"resuming from {path} at step {state.step}")
    return state


def _resumed(point: ResumePoint, config: Config, fingerprint: str) -> GANState:
    """The state to continue an explicit --resume from; the data and config must be the run's own."""
    if point.fingerprint is not None and point.fingerprint != fingerprint:
        raise ResumeError(f"resume: the data changed since {point.checkpoint} was written (dataset fingerprint "
                          f"{point.fingerprint[:12]} -> {fingerprint[:12]}); resuming needs the same data")
    state, diff = _load_matching(Path(point.checkpoint), config)
    if diff:
        raise ResumeError(f"resume: {point.checkpoint} was written with another config: {'; '.join(diff)}")
    return state


@task(name="train", cache_policy=NO_CACHE)
def train_model(config: Config, gate: Any, decision: RetrainDecision, out_dir: str | None = None,
                engine: Literal["spark", "local"] = "spark", resume: ResumePoint | None = None) -> TrainOutcome:
    """Train on the gate's manifest inside one MLflow run; the Spark session lives and dies inside this task.

    `gate` is the data gate's GateResult (paths and counts). Output (checkpoint, samples, run.json) goes to
    out_dir, default $TRANSSRGAN_HOME/runs/<flow run name>, where a retried flow run resumes from its own
    checkpoint. `resume` (from tasks.resume.resume_point) continues that run: its folder, its MLflow run.
    """
    log = get_run_logger()
    configure_tracking()
    source = config.data.source
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=str(gate.manifest_path)))
    run_name = flow_run.name or time.strftime("%Y%m%d-%H%M%S")
    out = Path(resume.out_dir if resume else out_dir or data_home() / "runs" / run_name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    if resume is not None:
        state: GANState | None = _resumed(resume, config, gate.fingerprint)
        log.info(f"resuming {resume.checkpoint} at step {state.step}")
    else:
        # Only the default folder is private to this flow run; a shared --out folder never resumes someone else.
        state = None if out_dir else _own_checkpoint(out, config, gate.fingerprint, log.info)
    start_step = state.step if state else 0
    previous_run = read_run_record(out).get("mlflow_run_id") if state else None
    total = config.train.steps
    progress_id = create_progress_artifact(100.0 * start_step / max(total, 1), key="training-progress",
                                           description=f"{config.model.arch} training: steps done / {total}")

    tags = {TAG_CONFIG_HASH: decision.config_hash, TAG_PIPELINE: "running", TAG_FLOW_RUN: str(flow_run.id or ""),
            "engine": engine, "retrain_reason": decision.reason[:500]}
    if start_step:
        tags["resumed_from_step"] = str(start_step)
    with start_training_run(config, run_name=run_name, tags=tags, dataset_fingerprint=gate.fingerprint,
                            dataset_size=gate.n_valid, run_id=previous_run) as run:
        write_run_record(out, mlflow_run_id=run.info.run_id, data_source=source, flow_run_id=str(flow_run.id or ""),
                         dataset_fingerprint=gate.fingerprint, config_hash=decision.config_hash)
        for report in (gate.validation_json, gate.quarantine_path, gate.data_docs_dir):
            if report:
                _log_validation(Path(report))
        t0 = time.perf_counter()
        log.info(f"training {config.model.arch} ({config.preset} preset) for {total} steps with engine={engine}: "
                 f"{_engine_summary(config, engine)}; MLflow run {run.info.run_id}; checkpoints in {out}")
        # writes out/checkpoint.pt and logs checkpoints/; buffers tracking records while the store is unreachable
        with MlflowSink(run.info.run_id, checkpoint_dir=out, print_fn=log.warning) as sink:

            def on_log(s: GANState, m: dict[str, float]) -> None:
                sink.on_log(s, m)
                update_progress_artifact(progress_id, 100.0 * s.step / max(total, 1))

            speed: dict[str, float] = {}                # the speed-up probe's numbers, when it ran
            try:
                if engine == "spark":
                    stats = DFAGDStats()
                    state = train_dfagd(config, state=state, on_log=on_log, on_sample=sink.on_sample,
                                        on_checkpoint=sink.on_checkpoint, print_fn=log.info, stats_out=stats)
                    speed = stats.probe or {}
                    sink.log_metrics({f"dfagd_{k}_per_iter": v for k, v in stats.breakdown().items()} | speed,
                                     step=state.step)
                else:
                    state = _train_local(config, state, on_log, sink.on_sample, sink.on_checkpoint, log.info)
            except DivergenceError as exc:
                last = sink.last_checkpoint or (ckpt_path if ckpt_path.is_file() else None)
                where = (f"the last good checkpoint is {last} (logged under {CHECKPOINTS_DIR}/). Training is "
                         f"deterministic, so resuming it would diverge again: train anew with lower learning rates "
                         f"(train.lr_g, train.lr_d) or tighter clipping (train.clip_norm_g, train.clip_norm_d)"
                         if last else "no checkpoint was written before it")
                mlflow.set_tag("failure", f"diverged: {str(exc)[:400]}")
                raise DivergenceError(f"{exc}; {where}") from exc
            if sink.last_checkpoint is None:     # resumed at the last step: nothing was trained or saved
                sink.on_checkpoint(state, {})
        wall = time.perf_counter() - t0
        log_generator(state, config)
        mlflow.log_metric("train_wall_s", wall)
        last = {k: float(v) for k, v in (state.history[-1] if state.history else {}).items() if k != "step"}
        last.update(speed)
        log.info(f"trained to step {state.step} in {wall:.0f}s; checkpoint {ckpt_path}")
        return TrainOutcome(run.info.run_id, str(ckpt_path), str(out), state.step, wall, last, start_step)


def _train_local(config: Config, state: GANState | None, on_log, on_sample, on_checkpoint, print_fn) -> GANState:
    """The reference single-process trainer (no Spark): the same math, for debugging and comparison."""
    from models.step import build_state

    data = load_dataset(config.data.source, config.model.resolution, config.model.channels, config.data.limit)
    state = build_state(config) if state is None else state
    return train(state, LocalGradSource(data, config), on_log=on_log, on_sample=on_sample,
                 on_checkpoint=on_checkpoint, print_fn=print_fn)


def _engine_summary(config: Config, engine: str) -> str:
    if engine != "spark":
        return "single process (reference trainer)"
    sc = config.spark
    return (f"DFAGD on Spark {sc.master} with {sc.workers} workers x {sc.threads_per_worker} threads, "
            f"{config.partitions} data partitions, global batch {config.train.batch_size}")


def _log_validation(path: Path) -> None:
    """The data gate's reports (validation.json, quarantine.csv, data_docs/) go under validation/."""
    if path.is_dir():
        mlflow.log_artifacts(str(path), f"validation/{path.name}")
    elif path.is_file():
        mlflow.log_artifact(str(path), "validation")
