"""Where the project keeps its local state (TRANSSRGAN_HOME, default ./transsrgan-data in the working directory), and
how a path a user gives is read."""

import os
from pathlib import Path


def data_home() -> Path:
    """Root for the embedded MLflow store, checkpoints, samples, caches and materialised datasets."""
    home = Path(os.environ.get("TRANSSRGAN_HOME", "transsrgan-data")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def user_path(value: str | Path) -> Path:
    """A path as given, with ~ and ~user expanded where that user exists; otherwise left as written (pathlib's
    expanduser raises RuntimeError for an unknown user, which a command would show as a traceback)."""
    return Path(os.path.expanduser(value))
