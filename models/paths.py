"""Where the project keeps its local state: TRANSSRGAN_HOME, default ./transsrgan-data in the working directory."""

import os
from pathlib import Path


def data_home() -> Path:
    """Root for the embedded MLflow store, checkpoints, samples, caches and materialised datasets."""
    home = Path(os.environ.get("TRANSSRGAN_HOME", "transsrgan-data")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home
