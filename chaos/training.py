"""Scenarios of the training loop: SIGKILL of the whole run and --resume, NaN steps, divergence, full disk."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from chaos.faults import NaNGradients
from chaos.harness import ChaosContext, Outcome, brief, scenario
from chaos.services import REPO_ROOT
from models.checkpoint import read_checkpoint
from models.config import config_from_dict, resolve_config
from models.data import load_dataset
from models.step import build_state, get_flat
from models.trainer import LocalGradSource, train
from tasks.runs import read_run_record

STEPS = 40
EVERY = 5            # checkpoint interval of the CLI scenarios
KILL_AT = 12         # SIGKILL once the run printed this step
ATOL = 1e-5
# The CLI runs: tiny preset, DFAGD with 2 workers on local[2], a progress line every step, a small evaluation.
TINY = ["--preset", "tiny", "--workers", "2", "--spark-master", "local[2]", "--set", "train.log_every=1",
        "--set", "train.sample_every=0", "--set", f"train.checkpoint_every={EVERY}", "--set", "eval.n_samples=32"]
PROGRESS = re.compile(r"step\s+(\d+)/(\d+) \|")


def _max_diff(a: dict, b: dict, keys=("G", "D", "G_ema")) -> float:
    """Largest absolute difference between the weights of two checkpoints (state dicts)."""
    return max(float((a[k][n].float() - b[k][n].float()).abs().max()) for k in keys for n in a[k])


def _uninterrupted(ckpt: dict) -> dict:
    """The same run never interrupted: DFAGD on the same master, config and validated data, from step 0."""
    from models.checkpoint import state_to_dict
    from spark_training.dfagd import train_dfagd

    return state_to_dict(train_dfagd(config_from_dict(ckpt["config"]), print_fn=None))


def _metric_steps(run_id: str, home: Path, key: str = "loss_d") -> tuple[set[int], str]:
    """The steps at which `key` was logged to the run, and the run's status, in the session's embedded store."""
    from mlflow.tracking import MlflowClient

    from chaos.harness import tracking_store

    with tracking_store(f"sqlite:///{home / 'mlflow.db'}"):
        client = MlflowClient()
        return {m.step for m in client.get_metric_history(run_id, key)}, client.get_run(run_id).info.status


@scenario("sigkill-driver-resume",
          f"`transsrgan train` SIGKILLed (driver, Spark JVM and all) at step {KILL_AT}; `--resume` reaches the "
          f"weights of an uninterrupted run at step {STEPS}, in the same MLflow run, losing at most {EVERY} steps")
def sigkill_driver_resume(ctx: ChaosContext) -> Outcome:
    out = ctx.folder("run")
    log = (ctx.current / "first.log").open("w")
    proc = subprocess.Popen(ctx.cli("train", *TINY, "--steps", str(STEPS), "--out", str(out), "--force"),
                            env=ctx.env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    killed_at = None
    deadline = time.monotonic() + 600
    for line in proc.stdout:                       # progress lines arrive as they are printed
        log.write(line)
        m = PROGRESS.search(line)
        if m and int(m.group(1)) >= KILL_AT:
            killed_at = int(m.group(1))
            os.killpg(proc.pid, signal.SIGKILL)    # the CLI, its Spark JVM and the Python workers at once
            break
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait(timeout=60)
    log.close()
    if killed_at is None:
        return Outcome(f"the run never reached step {KILL_AT} (exit {proc.returncode}); see {log.name}", False)
    first_run = read_run_record(out).get("mlflow_run_id")
    at_kill = read_checkpoint(out / "checkpoint.pt")["step"]

    resumed = ctx.run_cli("train", "--resume", str(out), timeout_s=600)
    (ctx.current / "resume.log").write_text(resumed.stdout + resumed.stderr)
    if resumed.returncode != 0:
        return Outcome(f"killed at step {killed_at}; `--resume` exited {resumed.returncode}: "
                       f"{(resumed.stderr or resumed.stdout).strip().splitlines()[-1][:300]}", False,
                       killed_at - at_kill)
    final = read_checkpoint(out / "checkpoint.pt")
    diff = _max_diff(final, _uninterrupted(final))
    run_id = read_run_record(out).get("mlflow_run_id")
    steps, status = _metric_steps(run_id, ctx.home)
    missing = sorted(set(range(1, STEPS + 1)) - steps)
    held = final["step"] == STEPS and diff <= ATOL and run_id == first_run and not missing and status == "FINISHED"
    return Outcome(f"killed at step {killed_at} with the checkpoint at step {at_kill}; resumed to step "
                   f"{final['step']}: max |w - w_uninterrupted DFAGD| = {diff:.1e}; MLflow run "
                   f"{'the same' if run_id == first_run else 'a different one'} ({status}), "
                   f"loss_d logged for {len(steps)}/{STEPS} steps", held, killed_at - at_kill,
                   data_lost=bool(missing) or diff > ATOL)


@scenario("nan-step-skipped",
          "a NaN gradient at one step: nothing of that step is applied (weights equal a run that skips the step), "
          "training goes on to the end")
def nan_step_skipped(ctx: ChaosContext) -> Outcome:
    over = {"train.steps": 8, "train.log_every": 1, "train.sample_every": 0, "train.checkpoint_every": 0,
            "data.limit": 256}
    data = load_dataset("digits", 16, 1, limit=256)
    clean = resolve_config("tiny", over)
    lines: list[str] = []
    got = train(build_state(clean), NaNGradients(LocalGradSource(data, clean), range(3, 4)), print_fn=lines.append)
    want = build_state(clean)
    src = LocalGradSource(data, clean)
    train(want, src, steps=3, print_fn=None)
    want.step = 4                                   # step 3 skipped: data and noise move on, weights do not
    train(want, src, print_fn=None)
    diff = max(float((get_flat(getattr(got, n)) - get_flat(getattr(want, n))).abs().max()) for n in ("G", "D", "G_ema"))
    finite = all(torch.isfinite(get_flat(getattr(got, n))).all() for n in ("G", "D", "G_ema"))
    warned = any("step 4: non-finite" in ln for ln in lines)
    return Outcome(f"reached step {got.step}/8; max |w - w_skipping_step_3| = {diff:.1e}; weights finite: {finite}; "
                   f"warned: {warned}", got.step == 8 and diff == 0.0 and finite and warned)


@scenario("divergence-stops",
          "NaN gradients from step 12 on: after train.max_bad_steps=3 bad steps the run stops with a clear error; "
          "the last good checkpoint (step 10) is kept, loadable and logged to MLflow")
def divergence_stops(ctx: ChaosContext) -> Outcome:
    out = ctx.folder("run")
    res = ctx.run_cli("train", *TINY, "--steps", "30", "--out", str(out), "--force",
                      "--set", "train.max_bad_steps=3", faults=("--nan-steps", "12-29"))
    (ctx.current / "train.log").write_text(res.stdout + res.stderr)
    last_line = (res.stderr.strip().splitlines() or [""])[-1]
    clear = res.returncode == 1 and "training diverged" in last_line and "last good checkpoint" in last_line
    ckpt = read_checkpoint(out / "checkpoint.pt")
    finite = all(torch.isfinite(t).all() for k in ("G", "D", "G_ema") for t in ckpt[k].values())
    from mlflow.tracking import MlflowClient

    from chaos.harness import tracking_store

    run_id = read_run_record(out)["mlflow_run_id"]
    with tracking_store(f"sqlite:///{ctx.home / 'mlflow.db'}"):
        client = MlflowClient()
        logged = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
        run = client.get_run(run_id)
    held = clear and ckpt["step"] == 10 and finite and "checkpoints/checkpoint.pt" in logged \
        and run.info.status == "FAILED" and run.data.tags.get("failure", "").startswith("diverged")
    return Outcome(f"exit {res.returncode}: {brief(last_line.removeprefix('transsrgan train: '), 300)}; checkpoint at step {ckpt['step']} (finite: {finite}), "
                   f"in MLflow: {'yes' if 'checkpoints/checkpoint.pt' in logged else 'no'}, run {run.info.status}",
                   held, steps_lost=12 - ckpt["step"])


_DISK_FULL = textwrap.dedent("""
    import os, sys, torch
    from models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
    from models.config import resolve_config
    from models.step import build_state
    folder, grow = sys.argv[1], int(sys.argv[2])
    state = build_state(resolve_config("tiny", {}))
    path = os.path.join(folder, "checkpoint.pt")
    save_checkpoint(state, path)                       # step 0: fits
    state.step = 1
    state.history = [{"step": float(i), "pad": float(i)} for i in range(grow)]   # the next one does not
    try:
        save_checkpoint(state, path)
        print("RESULT second-write-succeeded")
    except CheckpointError as exc:
        left = sorted(os.listdir(folder))
        ck = read_checkpoint(path)
        same = all(torch.equal(ck["G"][k], v) for k, v in build_state(resolve_config("tiny", {})).G.state_dict().items())
        print("RESULT", "step=%d" % ck["step"], "same=%s" % same, "files=%s" % ",".join(left), "error=" + str(exc))
""")


@scenario("disk-full-checkpoint",
          "the disk fills up while a checkpoint is written: a clear CheckpointError, no partial file, and the "
          "previous checkpoint still loads unchanged")
def disk_full_checkpoint(ctx: ChaosContext) -> Outcome:
    probe = ctx.folder("probe")
    from models.checkpoint import save_checkpoint

    size = save_checkpoint(build_state(resolve_config("tiny", {})), probe / "checkpoint.pt").stat().st_size
    limit = int(size * 1.5)
    grow = 40_000                                    # history entries: the second file is well over `limit`
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    script = ctx.current / "disk_full.py"
    script.write_text(_DISK_FULL)
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        how = f"a {limit / 1e6:.1f} MB tmpfs (real ENOSPC)"
        cmd = ["unshare", "-rm", "sh", "-c",
               f'mount -t tmpfs -o size={limit} tmpfs "$1" && exec "$2" "$3" "$1" {grow}', "sh",
               str(ctx.folder("disk")), sys.executable, str(script)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    else:                                            # no user namespaces: a per-file size limit (real EFBIG)
        import resource

        how = f"RLIMIT_FSIZE={limit / 1e6:.1f} MB (real EFBIG)"

        def limit_fsize() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        res = subprocess.run([sys.executable, str(script), str(ctx.folder("disk")), str(grow)], env=env,
                             capture_output=True, text=True, timeout=300, preexec_fn=limit_fsize)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), "")
    if not line:
        return Outcome(f"{how}: no result (exit {res.returncode}): {res.stderr.strip()[-300:]}", False)
    held = "step=0" in line and "same=True" in line and "files=checkpoint.pt " in line + " " \
        and "could not write the checkpoint of step 1" in line
    return Outcome(f"{how}: {line.removeprefix('RESULT ')[:400]}", held, data_lost=not held)
