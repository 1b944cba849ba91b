"""Training tasks of both families, tracked in MLflow: TransSRGAN/DCGAN (DFAGD on Spark or local) and SinGAN."""

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import Config
from models.data import load_dataset
from models.grid import make_grid, sample, save_png, to_uint8
from models.paths import data_home
from models.singan import SinGANState, fit, load_singan, save_singan
from models.singan import sample as singan_sample
from models.step import GANState
from models.trainer import DivergenceError, LocalGradSource, TimeBudget, train
from spark_training.dfagd import DFAGDStats, train_dfagd
from spark_training.speedup_probe import measure_speedup
from tasks.data_gate import GateResult
from tasks.model_io import SINGAN, log_generator, log_singan
from tasks.pipeline import ValidatedImage
from tasks.runs import (
    CHECKPOINT,
    ResumeError,
    ResumePoint,
    RetrainDecision,
    config_differences,
    read_run_record,
    write_run_record,
)
from tasks.sink import MlflowSink
from tasks.tags import (
    CHECKPOINTS_DIR,
    RUNNING,
    SAMPLES_DIR,
    SAMPLES_KEY,
    TAG_CONFIG_HASH,
    TAG_ENGINE,
    TAG_FAILURE,
    TAG_FLOW_RUN,
    TAG_IMAGE,
    TAG_IMAGE_FINGERPRINT,
    TAG_IMAGE_SOURCE,
    TAG_PIPELINE,
    TAG_RESUMED_FROM,
    TAG_RETRAIN_REASON,
    TAG_STOPPED_BY,
    VALIDATION_DIR,
    image_slug,
)
from tasks.tracking import TRAINING, configure_tracking, log_dataset, start_training_run

SINGAN_CHECKPOINT = "singan.pt"
SINGAN_GRID_N, SINGAN_GRID_SEED = 16, 0


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What the later tasks need: small values only (no modules, no sessions)."""

    run_id: str
    checkpoint: str
    out_dir: str
    wall_s: float
    metrics: dict[str, float]     # the last logged training metrics (loss_d, loss_g, images_per_s, ...)
    steps: int = 0                # generator updates reached (TransSRGAN, DCGAN)
    resumed_from: int = 0         # step the run resumed at (0 = fresh)
    sizes: list[list[int]] = dataclasses.field(default_factory=list)   # SinGAN: (H, W) per scale, coarsest first


# ---------------------------------------------------------------- the trainers' callbacks

class GANSink(MlflowSink):
    """The GAN trainer's callbacks over the sink: `train(..., **sink.callbacks())` logs metrics, sample grids of
    the EMA generator (MLflow images under key `samples`, step = the training step) and checkpoints. Checkpoints
    are written to checkpoint_dir first (atomically, models.checkpoint.save_checkpoint) and only then queued for
    upload, so an outage never costs one."""

    def __init__(self, run_id: str, *, sample_n: int = 64, sample_seed: int = 0, keep_checkpoints: bool = False,
                 **sink: Any):
        super().__init__(run_id, **sink)
        self.sample_n, self.sample_seed = sample_n, sample_seed
        self.keep_checkpoints = keep_checkpoints   # False: checkpoints/checkpoint.pt holds the latest only

    def callbacks(self) -> dict[str, Callable[[GANState, dict[str, float]], None]]:
        return {"on_log": self.on_log, "on_sample": self.on_sample, "on_checkpoint": self.on_checkpoint}

    def on_log(self, state: GANState, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=state.step)

    def on_sample(self, state: GANState, metrics: dict[str, float]) -> None:
        mc = state.config.model
        images = sample(state.G_ema, self.sample_n, self.sample_seed, mc.z_dim, mc.num_classes)  # (n, C, H, W)
        png = save_png(make_grid(to_uint8(images)), self.checkpoint_dir / SAMPLES_DIR / f"step_{state.step:06d}.png",
                       scale=2)
        self.log_image(png, SAMPLES_KEY, state.step)      # the run page's image slider, one grid per step
        self.log_artifact(png, SAMPLES_DIR)               # and samples/step_NNNNNN.png, by name, for scripts

    def on_checkpoint(self, state: GANState, metrics: dict[str, float]) -> None:
        name = f"step_{state.step:06d}.pt" if self.keep_checkpoints else CHECKPOINT
        path = save_checkpoint(state, self.checkpoint_dir / name)   # CheckpointError names what is left
        self.log_artifact(path, CHECKPOINTS_DIR)


class SinGANSink(MlflowSink):
    """SinGAN's callbacks over the sink: `fit(..., **sink.callbacks())` logs metrics per global iteration and,
    after every scale, the checkpoint (written locally first, atomically) and a grid of that scale's samples (an
    MLflow image under key `samples`, step = the scale)."""

    def callbacks(self) -> dict[str, Callable[[SinGANState, dict[str, float]], None]]:
        return {"on_log": self.on_log, "on_scale_end": self.on_scale_end}

    def on_log(self, state: SinGANState, metrics: dict[str, float]) -> None:
        self.log_metrics({k: v for k, v in metrics.items() if k not in ("step", "iter")}, step=int(metrics["step"]))

    def on_scale_end(self, state: SinGANState, metrics: dict[str, float]) -> None:
        self.log_artifact(save_singan(state, self.checkpoint_dir / SINGAN_CHECKPOINT), CHECKPOINTS_DIR)
        n = state.trained_scales - 1
        h, w = state.sizes[n]
        images = singan_sample(state, SINGAN_GRID_N, SINGAN_GRID_SEED)                       # (n, C, H, W)
        grid = save_png(make_grid(to_uint8(images)), self.checkpoint_dir / SAMPLES_DIR / f"scale_{n:02d}_{h}x{w}.png",
                        scale=2)
        self.log_image(grid, SAMPLES_KEY, n)              # the slider's step is the scale, coarsest = 0
        self.log_artifact(grid, SAMPLES_DIR)


# ---------------------------------------------------------------- shared pieces

def _progress(key: str, description: str, done: float, total: float) -> Callable[[float], None]:
    """A Prefect progress artifact at done/total; returns the function that moves it."""
    artifact = create_progress_artifact(100.0 * done / max(total, 1), key=key, description=description)
    return lambda now: update_progress_artifact(artifact, 100.0 * now / max(total, 1))


def _run_name() -> str:
    return flow_run.name or time.strftime("%Y%m%d-%H%M%S")


def _run_folder(out_dir: str | None, default_name: str) -> Path:
    """out_dir, default $TRANSSRGAN_HOME/runs/<default_name>: private to the flow run. Flow run names can repeat
    (also at the same moment), so a default folder that another flow run made gets <name>-<flow run id> instead."""
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return Path(out_dir)
    out = data_home() / "runs" / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.mkdir()                                       # atomic: exactly one flow run makes it
    except FileExistsError:
        own = str(flow_run.id or "")
        if not own or read_run_record(out).get("flow_run_id") != own:
            out = out.with_name(f"{default_name}-{own[:8] or os.getpid()}")
            out.mkdir(exist_ok=True)
    return out


def log_gate_reports(gate: GateResult) -> None:
    """The data gate's reports (validation.json, quarantine.csv, summary.html, data_docs/) under validation/ of the
    active run; summary.html is the page that reads offline (MLflow's artifact view shows it)."""
    for report in (gate.validation_json, gate.quarantine_path, gate.summary_html):
        if report and Path(report).is_file():
            mlflow.log_artifact(report, VALIDATION_DIR)
    if gate.data_docs_dir and Path(gate.data_docs_dir).is_dir():
        mlflow.log_artifacts(gate.data_docs_dir, f"{VALIDATION_DIR}/{Path(gate.data_docs_dir).name}")


# ---------------------------------------------------------------- TransSRGAN, DCGAN

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


@task(name="measure-speedup", cache_policy=NO_CACHE)
def probe_speedup(config: Config, gate: GateResult) -> dict[str, float]:
    """DFAGD's speed-up over 1 worker on this model and cluster, timed on the gate's data before training
    (spark.speedup_probe_steps iterations each); {} with one worker or 0 probe steps."""
    speed = measure_speedup(config.updated({"data.source": str(gate.manifest_path)}))
    if speed:
        get_run_logger().info(f"speed-up probe: {speed['speedup_vs_1_worker']:.2f}x over 1 worker (efficiency "
                              f"{speed['efficiency']:.2f}, {config.spark.speedup_probe_steps} iterations each)")
    return speed


@task(name="train", cache_policy=NO_CACHE)
def train_model(config: Config, gate: GateResult, decision: RetrainDecision, out_dir: str | None = None,
                engine: Literal["spark", "local"] = "spark", resume: ResumePoint | None = None,
                speed: dict[str, float] | None = None) -> TrainOutcome:
    """Train on the gate's manifest inside one MLflow run; the Spark session lives and dies inside this task.

    Output (checkpoint, samples, run.json) goes to out_dir, default $TRANSSRGAN_HOME/runs/<flow run name>, where a
    retried flow run resumes from its own checkpoint. `resume` (tasks.runs.resume_point) continues that run: its
    folder, its MLflow run. `speed` (probe_speedup's result) is logged with the run's DFAGD breakdown.
    """
    log = get_run_logger()
    speed = speed or {}
    configure_tracking()
    source = config.data.source
    config = config.updated({"data.source": str(gate.manifest_path)})
    run_name = _run_name()
    out = _run_folder(resume.out_dir if resume else out_dir, run_name)
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
    progress = _progress("training-progress", f"{config.model.arch} training: steps done / {total}", start_step,
                         total)

    tags = {TAG_CONFIG_HASH: decision.config_hash, TAG_PIPELINE: RUNNING, TAG_FLOW_RUN: str(flow_run.id or ""),
            TAG_ENGINE: engine, TAG_RETRAIN_REASON: decision.reason[:500]}
    if start_step:
        tags[TAG_RESUMED_FROM] = str(start_step)
    with start_training_run(config, run_name=run_name, tags=tags, dataset_fingerprint=gate.fingerprint,
                            dataset_size=gate.n_valid, run_id=previous_run) as run:
        write_run_record(out, mlflow_run_id=run.info.run_id, data_source=source, flow_run_id=str(flow_run.id or ""),
                         dataset_fingerprint=gate.fingerprint, config_hash=decision.config_hash)
        log_dataset(gate.manifest_path, TRAINING)
        log_gate_reports(gate)
        t0 = time.perf_counter()
        budget = TimeBudget(config.train.max_minutes) if config.train.max_minutes else None
        limit = f" or {config.train.max_minutes:g} min, whichever comes first," if budget else ""
        log.info(f"training {config.model.arch} ({config.preset} preset) for {total} steps{limit} with "
                 f"engine={engine}: {_engine_summary(config, engine)}; MLflow run {run.info.run_id}; checkpoints in {out}")
        # writes out/checkpoint.pt and logs checkpoints/; buffers tracking records while the store is unreachable
        with GANSink(run.info.run_id, checkpoint_dir=out, print_fn=log.warning) as sink:

            done: dict[str, int] = {}            # the last step sampled and checkpointed

            def on_log(s: GANState, m: dict[str, float]) -> None:
                sink.on_log(s, m)
                progress(s.step)

            def on_sample(s: GANState, m: dict[str, float]) -> None:
                sink.on_sample(s, m)
                done["sample"] = s.step

            def on_checkpoint(s: GANState, m: dict[str, float]) -> None:
                sink.on_checkpoint(s, m)
                done["checkpoint"] = s.step

            callbacks = dict(on_log=on_log, on_sample=on_sample, on_checkpoint=on_checkpoint, should_stop=budget,
                             print_fn=log.info)
            try:
                if engine == "spark":
                    stats = DFAGDStats()
                    state = train_dfagd(config, state=state, stats_out=stats, **callbacks)
                    sink.log_metrics({f"dfagd_{k}_per_iter": v for k, v in stats.breakdown().items()} | speed,
                                     step=state.step)
                else:
                    state = _train_local(config, state, **callbacks)
            except DivergenceError as exc:
                last = sink.last_checkpoint or (ckpt_path if ckpt_path.is_file() else None)
                where = (f"the last good checkpoint is {last} (logged under {CHECKPOINTS_DIR}/). Training is "
                         f"deterministic, so resuming it would diverge again: train anew with lower learning rates "
                         f"(train.lr_g, train.lr_d) or tighter clipping (train.clip_norm_g, train.clip_norm_d)"
                         if last else "no checkpoint was written before it")
                mlflow.set_tag(TAG_FAILURE, f"diverged: {str(exc)[:400]}")
                raise DivergenceError(f"{exc}; {where}") from exc
            if budget is not None and budget.reached and state.step < total:
                log.info(f"train.max_minutes ({config.train.max_minutes:g}) reached: training stopped at step "
                         f"{state.step} of {total}")
                mlflow.set_tag(TAG_STOPPED_BY, "max_minutes")
                if done.get("sample") != state.step:
                    on_sample(state, {})
            # the final state is saved: a budget stop ends between checkpoints, and a run resumed at its last
            # step trained and saved nothing
            if done.get("checkpoint") != state.step:
                on_checkpoint(state, {})
        wall = time.perf_counter() - t0
        log_generator(state, config)
        mlflow.log_metric("train_wall_s", wall)
        last = {k: float(v) for k, v in (state.history[-1] if state.history else {}).items() if k != "step"}
        last.update(speed)
        log.info(f"trained to step {state.step} in {wall:.0f}s; checkpoint {ckpt_path}")
        return TrainOutcome(run.info.run_id, str(ckpt_path), str(out), wall, last, steps=state.step,
                            resumed_from=start_step)


def _train_local(config: Config, state: GANState | None, **callbacks: Any) -> GANState:
    """The reference single-process trainer (no Spark): the same math, for debugging and comparison."""
    from models.step import build_state

    data = load_dataset(config.data.source, config.model.resolution, config.model.channels, config.data.limit)
    state = build_state(config) if state is None else state
    return train(state, LocalGradSource(data, config), **callbacks)


def _engine_summary(config: Config, engine: str) -> str:
    if engine != "spark":
        return "single process (reference trainer)"
    sc = config.spark
    return (f"DFAGD on Spark {sc.master} with {sc.workers} workers x {sc.threads_per_worker} threads, "
            f"{config.partitions} data partitions, global batch {config.train.batch_size}")


# ---------------------------------------------------------------- SinGAN

def _own_singan(path: Path, config: Config, print_fn) -> SinGANState | None:
    """A retried flow run resumes at the first unfinished scale of its own checkpoint (same config only)."""
    if not path.is_file():
        return None
    state = load_singan(path)
    if state.config.to_dict() != config.singan.to_dict():
        print_fn(f"ignoring {path}: it was written with another config")
        return None
    print_fn(f"resuming from {path}: {state.trained_scales}/{state.num_scales} scales done")
    return state


@task(name="train-singan", cache_policy=NO_CACHE)
def train_singan_model(config: Config, image: ValidatedImage, out_dir: str | None = None) -> TrainOutcome:
    """models.singan.fit on the validated image (config.singan) inside one MLflow run of experiment `singan`.

    Progress goes to the Prefect run logger (one line per singan.log_every iterations) and a progress artifact;
    metrics per global iteration to MLflow; after every scale the checkpoint (singan.pt) is written to out_dir
    (default $TRANSSRGAN_HOME/runs/singan-<flow run name>) and logged under checkpoints/, with a grid of that
    scale's samples as MLflow image `samples` (step = scale).
    """
    log = get_run_logger()
    configure_tracking()
    config = config.updated({"singan.image": image.path})
    run_name = _run_name()
    out = _run_folder(out_dir, f"singan-{run_name}")
    state = None if out_dir else _own_singan(out / SINGAN_CHECKPOINT, config, log.info)
    tags = {TAG_IMAGE: image_slug(image.name), TAG_IMAGE_SOURCE: image.source, TAG_IMAGE_FINGERPRINT: image.sha256,
            TAG_PIPELINE: RUNNING, TAG_FLOW_RUN: str(flow_run.id or "")}
    with start_training_run(config, experiment=SINGAN, run_name=run_name, tags=tags,
                            dataset_fingerprint=image.gate.fingerprint, dataset_size=image.gate.n_valid) as run:
        log_dataset(image.gate.manifest_path, TRAINING)
        log_gate_reports(image.gate)
        t0 = time.perf_counter()
        log.info(f"training SinGAN ({config.preset} preset) on {image.source}; MLflow run {run.info.run_id}")
        with SinGANSink(run.info.run_id, checkpoint_dir=out, print_fn=log.info) as sink:
            progress = _progress("singan-training-progress", "SinGAN training: iterations done / total", 0, 1)

            def on_log(s: SinGANState, m: dict[str, float]) -> None:
                sink.on_log(s, m)
                progress(m["step"] / max(s.total_iters, 1))

            state = fit(config.singan, state=state, on_log=on_log, on_scale_end=sink.on_scale_end, print_fn=log.info)
        wall = time.perf_counter() - t0
        if not state.done:
            raise RuntimeError(f"SinGAN training stopped after {state.trained_scales}/{state.num_scales} scales")
        log_singan(state)
        mlflow.log_metric("train_wall_s", wall)
        last = {k: float(v) for k, v in (state.history[-1] if state.history else {}).items()}
        ckpt = out / SINGAN_CHECKPOINT
        log.info(f"trained {state.num_scales} scales in {wall:.0f}s; checkpoint {ckpt}")
        return TrainOutcome(run.info.run_id, str(ckpt), str(out), wall, last,
                            sizes=[list(s) for s in state.sizes])
