"""Scenarios of the safe defaults: weights-only loading, symlinks out of the data root, loopback-only servers, user files."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chaos.harness import ChaosContext, Outcome, brief, scenario
from chaos.services import LOOPBACK, listening_addresses, mlflow_server
from models.checkpoint import read_checkpoint
from models.config import DataConfig, resolve_config
from models.data import load_dataset
from spark_training.dfagd import train_dfagd


class _Payload:
    """Unpickling this runs code: it touches a marker file. weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@scenario("weights-only-load",
          "a checkpoint file carrying a pickled code payload: loading refuses it and the payload never runs")
def weights_only_load(ctx: ChaosContext) -> Outcome:
    import torch

    marker = ctx.current / "payload-ran"
    path = ctx.current / "checkpoint.pt"
    torch.save({"step": 1, "G": {}, "payload": _Payload(marker)}, path)
    try:
        read_checkpoint(path)
        refused = "loaded without complaint"
    except pickle.UnpicklingError as exc:
        refused = f"refused ({type(exc).__name__}: {brief(str(exc).splitlines()[0], 100)})"
    ran = marker.exists()
    return Outcome(f"{refused}; payload ran: {'yes' if ran else 'no'}", refused.startswith("refused") and not ran)


@scenario("symlink-escape",
          "a data folder with a symlink to an image outside it and a symlink loop: neither is followed, both are "
          "quarantined with a reason, every file is accounted for")
def symlink_escape(ctx: ChaosContext) -> Outcome:
    from tasks.data_gate import run_data_gate

    root, outside = ctx.folder("data"), ctx.folder("outside")
    digits = load_dataset("digits", 16, 1, limit=20).images          # (20, 1, 16, 16) uint8
    for i, img in enumerate(digits):
        Image.fromarray(img[0]).save(root / f"digit_{i:02d}.png")
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(root, root / "loop")
    gate = run_data_gate(str(root), ctx.folder("gate"), DataConfig(min_images=1), resolution=16)
    manifest = pd.read_parquet(gate.manifest_path)
    quarantine = pd.read_csv(gate.quarantine_path)
    reasons = dict(zip(quarantine["path"].map(lambda p: Path(p).name), quarantine["reason"]))
    leaked = any("outside" in str(p) or "secret" in str(p) for p in manifest.get("path", []))
    accounted = gate.n_valid == 20 and {"escape.png", "loop"} <= set(reasons)
    held = accounted and not leaked and "outside" in reasons.get("escape.png", "") \
        and "loop" in reasons.get("loop", "")
    return Outcome(f"{gate.n_valid} valid, quarantined: escape.png ({reasons.get('escape.png', '-')[:80]}), "
                   f"loop ({reasons.get('loop', '-')[:60]}); outside file in the manifest: {'yes' if leaked else 'no'}",
                   held, data_lost=not accounted)


@scenario("servers-bind-loopback",
          "every server the project starts listens on 127.0.0.1 only: Prefect and MLflow servers, the Spark driver "
          "and local-cluster executors, the DFAGD reduction server")
def servers_bind_loopback(ctx: ChaosContext) -> Outcome:
    import psutil

    seen: dict[str, set[tuple[str, int]]] = {}
    seen["prefect server"] = listening_addresses(ctx.prefect_service().pids())
    mlflow = mlflow_server(ctx.folder("mlflow"), ctx.current / "mlflow-server.log").start()
    try:
        seen["mlflow server"] = listening_addresses(mlflow.pids())
    finally:
        mlflow.stop()
    cfg = resolve_config("tiny", {"train.steps": 2, "train.log_every": 1, "train.sample_every": 0,
                                  "train.checkpoint_every": 0, "spark.workers": 2,
                                  "spark.master": "local-cluster[2,1,1024]", "spark.executor_memory": "900m"})

    def snapshot(state, metrics) -> None:             # mid-training: JVMs, executors, reduction server all up
        me = psutil.Process()
        seen["spark + dfagd (this process and its children)"] = listening_addresses(
            [me.pid] + [c.pid for c in me.children(recursive=True)])

    train_dfagd(cfg, data=load_dataset("digits", 16, 1, limit=128), print_fn=None, on_log=snapshot)
    exposed = {who: sorted(a for a in addrs if a[0] not in LOOPBACK) for who, addrs in seen.items()}
    exposed = {k: v for k, v in exposed.items() if v}
    counts = ", ".join(f"{who}: {len(addrs)}" for who, addrs in seen.items())
    held = not exposed and all(seen.values())
    return Outcome(f"listening sockets checked ({counts}); not on loopback: "
                   f"{exposed or 'none'}", held)


def _digests(files: list[Path]) -> dict[str, str | None]:
    """path -> sha256 of its bytes, None when it is gone."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in files}


@scenario("user-files-beside-outputs",
          "the user's files in the gate's output folder and in a run folder survive `transsrgan validate` twice and "
          "`transsrgan train --preset tiny --data GATE/manifest.parquet --out DIR` byte-identical; reruns replace "
          "only the project's own files and say what they left alone")
def user_files_beside_outputs(ctx: ChaosContext) -> Outcome:
    from chaos.training import TINY

    data, gate, run = ctx.folder("data"), ctx.folder("gate"), ctx.folder("run")
    for i, img in enumerate(load_dataset("digits", 16, 1, limit=40).images):     # (40, 1, 16, 16) uint8
        Image.fromarray(img[0]).save(data / f"digit_{i:02d}.png")
    mine = [gate / "thesis.txt", gate / "data_docs" / "thesis.txt", gate / "data_docs" / "static" / "mine.css",
            run / "notes.md", run / "samples" / "keep.png"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"the user's own {p.name}\n".encode())
    before = _digests(mine)
    validate = ("validate", str(data), "--out", str(gate), "--preset", "tiny")
    steps = [("validate", ctx.run_cli(*validate)), ("rerun", ctx.run_cli(*validate)),
             ("train", ctx.run_cli("train", *TINY, "--steps", "4", "--data", str(gate / "manifest.parquet"),
                                   "--out", str(run), "--force", timeout_s=900))]
    for name, proc in steps:
        (ctx.current / f"{name}.log").write_text(proc.stdout + proc.stderr)
    codes = {name: proc.returncode for name, proc in steps}
    after = _digests(mine)
    changed = [Path(p).relative_to(ctx.current).as_posix() for p in mine if after[str(p)] != before[str(p)]]
    reported = "left alone" in steps[1][1].stdout
    trained = (run / "checkpoint.pt").is_file()
    held = not changed and all(c == 0 for c in codes.values()) and reported and trained
    return Outcome(f"exit codes {codes}; user files changed or gone: {changed or 'none'} of {len(mine)}; "
                   f"rerun reported them left alone: {'yes' if reported else 'no'}; trained from the manifest: "
                   f"{'yes' if trained else 'no'}", held, data_lost=bool(changed))
