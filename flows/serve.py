"""The served deployments: train-transsrgan (and train-singan once it exists), each with the retraining cron."""

import importlib
import importlib.util
from typing import Any

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

DEFAULT_CRON = "0 3 * * *"   # daily at 03:00 (the server's timezone, UTC by default)
# (deployment name == flow name, module, flow object name)
FLOWS = (("train-transsrgan", "flows.train_transsrgan", "train_transsrgan"),
         ("train-singan", "flows.train_singan", "train_singan"))


def available_flows() -> list[Flow]:
    """The flows whose module exists in this checkout (train-singan lands later)."""
    out = []
    for _name, module, attr in FLOWS:
        if importlib.util.find_spec(module) is not None:
            out.append(getattr(importlib.import_module(module), attr))
    return out


def build_deployments(cron: str | None = DEFAULT_CRON, parameters: dict[str, Any] | None = None,
                      paused: bool = False) -> list[RunnerDeployment]:
    """One deployment per flow, named like the flow, scheduled by `cron` (None: triggered runs only).

    Module-path entrypoints let the runner import the flow from the installed package, whatever its cwd.
    """
    deployments = []
    for fl in available_flows():
        deployments.append(fl.to_deployment(
            name=fl.name, cron=cron or None, paused=paused, parameters=parameters or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"{fl.name}: {fl.description or ''}".strip(),
            tags=["transsrgan", "retraining" if cron else "manual"]))
    return deployments


def serve_deployments(cron: str | None = DEFAULT_CRON, limit: int | None = 1) -> None:
    """Blocks: registers the deployments with the Prefect API and runs their flow runs until interrupted.

    `limit` caps concurrent runs (default 1: two trainings at once would share the same cores).
    """
    serve(*build_deployments(cron), limit=limit)
