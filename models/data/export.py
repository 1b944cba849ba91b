"""Write the embedded digits out as PNG files (what `transsrgan demo-data` and the data gate use)."""

from pathlib import Path

from PIL import Image

from models.data.digits import load_digits
from models.files import OutputFolder

DEMO_DATA = "demo-data"   # the command name the output folder's ledger records


def export_digits(out_dir: str | Path, resolution: int = 32) -> tuple[int, Path]:
    """Write <index>_label<digit>.png per image; returns (images written, folder).

    A rerun replaces only the files an earlier export wrote; a file of one of those names that the project did
    not write raises models.files.ForeignFileError before anything is written. Other files are left alone.
    """
    images, labels = load_digits(resolution)                       # uint8 (N, 1, res, res), (N,)
    names = [f"{i:05d}_label{int(label)}.png" for i, label in enumerate(labels)]
    with OutputFolder(out_dir, DEMO_DATA) as folder:
        folder.check(*names)
        for name, img in zip(names, images):
            # no fsync per file: it would dominate thousands of small writes; each file still appears whole
            with folder.atomic(name, fsync=False) as tmp:
                Image.fromarray(img[0]).save(tmp, format="PNG", optimize=False)
    return len(images), folder.path
