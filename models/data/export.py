"""Write the embedded digits out as PNG files (what `transsrgan demo-data` and the data gate use)."""

from pathlib import Path

from PIL import Image

from models.data.digits import load_digits


def export_digits(out_dir: str | Path, resolution: int = 32) -> tuple[int, Path]:
    """Idempotent: existing files with the same name are overwritten with identical bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(resolution)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img[0]).save(out / f"{i:05d}_label{int(label)}.png", optimize=False)
    return len(images), out
