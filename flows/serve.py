"""The served deployments: train-transsrgan and train-singan, each with the retraining cron."""

from typing import Any

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

DEFAULT_CRON = "0 3 * * *"   # daily at 03:00 (the server's timezone, UTC by default)


def flows_to_serve() -> list[Flow]:
    """Each deployment has its flow's name: train-transsrgan/train-transsrgan, train-singan/train-singan."""
    from flows.train_singan import train_singan
    from flows.train_transsrgan import train_transsrgan

    return [train_transsrgan, train_singan]


def build_deployments(cron: str | None = DEFAULT_CRON, parameters: dict[str, Any] | None = None,
                      paused: bool = False) -> list[RunnerDeployment]:
    """One deployment per flow, named like the flow, scheduled by `cron` (None: triggered runs only).

    Module-path entrypoints let the runner import the flow from the installed package, whatever its cwd.
    """
    deployments = []
    for fl in flows_to_serve():
        deployments.append(fl.to_deployment(
            name=fl.name, cron=cron or None, paused=paused, parameters=parameters or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=fl.description,
            tags=["transsrgan", "retraining" if cron else "manual"]))
    return deployments


def serve_deployments(cron: str | None = DEFAULT_CRON, limit: int | None = 1) -> None:
    """Blocks: registers the deployments with the Prefect API and runs their flow runs until interrupted.

    `limit` caps concurrent runs (default 1: two trainings at once would share the same cores).
    """
    serve(*build_deployments(cron), limit=limit)
