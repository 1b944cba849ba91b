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

from models.checkpoint import load_checkpoint, read_checkpoint
from models.config import Config
from models.data import load_dataset
from models.paths import data_home
from models.step import GANState
from models.trainer import LocalGradSource, train
from spark_training.dfagd import DFAGDStats, train_dfagd
from tasks.model_io import log_generator
from tasks.retrain import TAG_CONFIG_HASH, TAG_FLOW_RUN, TAG_PIPELINE, RetrainDecision
from tasks.tracking import MlflowSink, configure_tracking, start_training_run

CHECKPOINT = "checkpoint.pt"


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What the later tasks need: small values only (no modules, no sessions)."""

    run_id: str
    checkpoint: str
    out_dir: str
    steps: int
    wall_s: float
    metrics: dict[str, float]     # the last logged training metrics (loss_d, loss_g, images_per_s, ...)
    resumed_from: int             # step a retried flow run resumed at (0 = fresh)


def _resume_state(path: Path, config: Config, print_fn) -> GANState | None:
    """A retried flow run finds its own checkpoint in its output folder; resume only with the same config."""
    if not path.is_file():
        return None
    stored = read_checkpoint(path).get("config")
    if stored != config.to_dict():
        print_fn(f"ignoring {path}: it was written with another config")
        return None
    state = load_checkpoint(path, config)
    print_fn(f"resuming from {path} at step {state.step}")
    return state


@task(name="train", cache_policy=NO_CACHE)
def train_model(config: Config, gate: Any, decision: RetrainDecision, out_dir: str | None = None,
                engine: Literal["spark", "local"] = "spark") -> TrainOutcome:
    """Train on the gate's manifest inside one MLflow run; the Spark session lives and dies inside this task.

    `gate` is the data gate's GateResult (paths and counts). Output (checkpoint, samples) goes to out_dir,
    default $TRANSSRGAN_HOME/runs/<flow run name>, where a retried flow run resumes from its own checkpoint.
    """
    log = get_run_logger()
    configure_tracking()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=str(gate.manifest_path)))
    run_name = flow_run.name or time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else data_home() / "runs" / run_name
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    # Only the default folder is private to this flow run; a shared --out folder never resumes someone else.
    state = None if out_dir else _resume_state(ckpt_path, config, log.info)
    start_step = state.step if state else 0
    total = config.train.steps
    progress_id = create_progress_artifact(100.0 * start_step / max(total, 1), key="training-progress",
                                           description=f"{config.model.arch} training: steps done / {total}")

    tags = {TAG_CONFIG_HASH: decision.config_hash, TAG_PIPELINE: "running", TAG_FLOW_RUN: str(flow_run.id or ""),
            "engine": engine, "retrain_reason": decision.reason[:500]}
    with start_training_run(config, run_name=run_name, tags=tags, dataset_fingerprint=gate.fingerprint,
                            dataset_size=gate.n_valid) as run:
        for report in (gate.validation_json, gate.quarantine_path, gate.data_docs_dir):
            if report:
                _log_validation(Path(report))
        sink = MlflowSink(run.info.run_id, checkpoint_dir=out)   # writes out/checkpoint.pt, logs checkpoints/

        def on_log(s: GANState, m: dict[str, float]) -> None:
            sink.on_log(s, m)
            update_progress_artifact(progress_id, 100.0 * s.step / max(total, 1))

        t0 = time.perf_counter()
        log.info(f"training {config.model.arch} ({config.preset} preset) for {total} steps with engine={engine}: "
                 f"{_engine_summary(config, engine)}; MLflow run {run.info.run_id}")
        if engine == "spark":
            stats = DFAGDStats()
            state = train_dfagd(config, state=state, on_log=on_log, on_sample=sink.on_sample,
                                on_checkpoint=sink.on_checkpoint, print_fn=log.info, stats_out=stats)
            sink.log_metrics({f"dfagd_{k}_per_iter": v for k, v in stats.breakdown().items()}, step=state.step)
        else:
            state = _train_local(config, state, on_log, sink.on_sample, sink.on_checkpoint, log.info)
        wall = time.perf_counter() - t0
        if sink.last_checkpoint is None:     # resumed at the last step: nothing was trained or saved
            sink.on_checkpoint(state, {})
        log_generator(state, config)
        mlflow.log_metric("train_wall_s", wall)
        last = {k: float(v) for k, v in (state.history[-1] if state.history else {}).items() if k != "step"}
        log.info(f"trained to step {state.step} in {wall:.0f}s; checkpoint {ckpt_path}")
        return TrainOutcome(run.info.run_id, str(ckpt_path), str(out), state.step, wall, last, start_step)


def _train_local(config: Config, state: GANState | None, on_log, on_sample, on_checkpoint, print_fn) -> GANState:
    """The reference single-process trainer (no Spark): the same math, for debugging and comparison."""
    from models.step import build_state

    data = load_dataset(config.data.source, config.model.resolution, config.model.channels, config.data.limit)
    state = state or build_state(config)
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
