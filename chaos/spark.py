"""Scenarios of DFAGD on Spark local-cluster: a worker's Python process, then a whole executor, SIGKILLed."""

import re

from chaos.faults import KillReplica, KillWorker
from chaos.harness import ChaosContext, Outcome, scenario
from chaos.training import ATOL, _max_diff
from models.checkpoint import read_checkpoint, save_checkpoint, state_to_dict
from models.config import resolve_config
from models.data import load_dataset
from models.step import build_state
from models.trainer import LocalGradSource, train
from spark_training.dfagd import DFAGDError, DFAGDHooks, DFAGDStats, train_dfagd

MASTER = "local-cluster[2,1,1024]"
STEPS, KILL_STEP = 8, 3          # the kill lands while step KILL_STEP's first gradient is being computed


def _config(reduction: str):
    """The killed runs' config: tiny, 2 workers on MASTER, a checkpoint every 2 steps."""
    return resolve_config("tiny", {"train.steps": STEPS, "train.log_every": 1, "train.sample_every": 0,
                                   "train.checkpoint_every": 2, "spark.workers": 2, "spark.master": MASTER,
                                   "spark.executor_memory": "900m", "spark.reduction": reduction})


def _killed_run(ctx: ChaosContext, target: str) -> tuple[dict | None, dict, DFAGDStats, list[str], BaseException | None]:
    """DFAGD with 2 workers on local-cluster, one of them SIGKILLed mid-update; checkpoints every 2 steps."""
    cfg = _config("star")
    kill = KillWorker(target, worker=1, step=KILL_STEP)
    kill.check_master(cfg.spark.master)
    data = load_dataset("digits", 16, 1, limit=256)
    ckpt = ctx.folder("run") / "checkpoint.pt"
    stats, lines = DFAGDStats(), []
    try:
        state = train_dfagd(cfg, data=data, print_fn=lines.append, stats_out=stats,
                            on_checkpoint=lambda s, m: save_checkpoint(s, ckpt), hooks=DFAGDHooks(before_reduce=kill))
        final, error = state_to_dict(state), None
    except DFAGDError as exc:
        final, error = None, exc
    (ctx.current / "train.log").write_text("\n".join(lines))
    ref = state_to_dict(train(build_state(cfg), LocalGradSource(data, cfg), print_fn=None))
    return final, ref, stats, lines, error


def _recovery_s(lines: list[str]) -> float:
    """The slowest step's seconds: the one that waited for Spark to re-run the barrier stage."""
    secs = [float(m.group(1)) for ln in lines if (m := re.search(r"\| ([\d.]+) s/it", ln))]
    return max(secs, default=0.0)


@scenario("sigkill-python-worker",
          f"on {MASTER}, worker 1's Python process SIGKILLed in the middle of step {KILL_STEP + 1}: Spark re-runs the "
          "barrier stage, the run completes, no gradient is counted twice (weights equal a clean run)")
def sigkill_python_worker(ctx: ChaosContext) -> Outcome:
    final, ref, stats, lines, error = _killed_run(ctx, "python")
    if final is None:
        return Outcome(f"the run failed: {error}", False)
    diff = _max_diff(final, ref)
    return Outcome(f"completed {final['step']}/{STEPS} steps; {stats.reconnects} worker reconnect(s), the "
                   f"interrupted step took {_recovery_s(lines):.1f}s; max |w - w_clean| = {diff:.1e}",
                   final["step"] == STEPS and stats.reconnects >= 1 and diff <= ATOL, data_lost=diff > ATOL)


@scenario("sigkill-executor",
          f"on {MASTER}, worker 1's whole executor JVM SIGKILLed mid-step: the run recovers (weights equal a clean "
          "run) or fails with a clear error; either way the last checkpoint is intact")
def sigkill_executor(ctx: ChaosContext) -> Outcome:
    final, ref, stats, lines, error = _killed_run(ctx, "executor")
    ckpt = read_checkpoint(ctx.current / "run" / "checkpoint.pt")        # raises if torn
    if final is None:
        clear = "DFAGD" in str(error) and len(str(error)) < 2000
        return Outcome(f"failed clearly ({str(error)[:200]}); last checkpoint at step {ckpt['step']} loads",
                       clear, steps_lost=KILL_STEP - ckpt["step"])
    diff = _max_diff(final, ref)
    return Outcome(f"recovered: completed {final['step']}/{STEPS} steps after Spark replaced the executor "
                   f"({stats.reconnects} reconnect(s), the interrupted step took {_recovery_s(lines):.1f}s); "
                   f"max |w - w_clean| = {diff:.1e}; last checkpoint (step {ckpt['step']}) loads",
                   final["step"] == STEPS and diff <= ATOL, data_lost=diff > ATOL)


@scenario("sigkill-python-worker-allreduce",
          f"spark.reduction=allreduce on {MASTER}: rank 1's Python process SIGKILLed at step {KILL_STEP}; Spark re-runs "
          "the barrier stage from the driver's last state (the step-2 checkpoint) and the run ends with the weights "
          "of a clean run; the replayed steps are counted")
def sigkill_python_worker_allreduce(ctx: ChaosContext) -> Outcome:
    cfg = _config("allreduce")
    KillWorker("python", worker=1, step=KILL_STEP).check_master(cfg.spark.master)
    data = load_dataset("digits", 16, 1, limit=256)
    ckpt, saved, stats, lines = ctx.folder("run") / "checkpoint.pt", [], DFAGDStats(), []

    def on_checkpoint(state, _metrics) -> None:
        saved.append(state.step)
        save_checkpoint(state, ckpt)

    try:
        state = train_dfagd(cfg, data=data, print_fn=lines.append, stats_out=stats, on_checkpoint=on_checkpoint,
                            hooks=DFAGDHooks(wrap_source=KillReplica.at(rank=1, step=KILL_STEP)))
    except DFAGDError as exc:
        return Outcome(f"the run failed: {exc}", False)
    (ctx.current / "train.log").write_text("\n".join(lines))
    ref = state_to_dict(train(build_state(cfg), LocalGradSource(data, cfg), print_fn=None))
    diff = _max_diff(state_to_dict(state), ref)
    resumed_from = max((s for s in saved if s < KILL_STEP), default=0)
    replayed = KILL_STEP - 1 - resumed_from           # whole steps done before the kill and done again
    logged = [int(h["step"]) for h in state.history]
    return Outcome(f"completed {state.step}/{STEPS} steps; {stats.reconnects} reconnect(s); resumed from the "
                   f"driver's state at step {resumed_from}: {replayed} completed step(s) replayed and the interrupted "
                   f"step {KILL_STEP} redone; each step logged once: {logged == list(range(1, STEPS + 1))}; "
                   f"max |w - w_clean| = {diff:.1e}",
                   state.step == STEPS and stats.reconnects >= 1 and diff <= ATOL
                   and logged == list(range(1, STEPS + 1)), data_lost=diff > ATOL)
