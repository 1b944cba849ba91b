"""A folder of images read through the data gate's file checks: what evaluation reads, with every skip explained."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data.images import channels_of, load_each
from models.data.manifest import build_manifest


@dataclass
class FolderImages:
    """A folder read through the data gate's file checks: the images and every entry left out, with its reason."""

    root: str
    images: np.ndarray                                   # uint8 (N, C, res, res), in path order
    paths: list[str]                                     # the file behind each image
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, "code: detail"), every other entry
    unused: int = 0                                      # valid images beyond `limit`, not decoded

    @property
    def n_entries(self) -> int:
        return len(self.paths) + len(self.skipped) + self.unused

    def skipped_by_code(self) -> dict[str, list[tuple[str, str]]]:
        groups: dict[str, list[tuple[str, str]]] = {}
        for path, reason in self.skipped:
            groups.setdefault(reason.split(":", 1)[0], []).append((path, reason))
        return groups

    def summary(self) -> list[str]:
        """One line per kind of skipped entry: count, the first one's reason and path."""
        return [f"skipped {len(group)} of {self.n_entries} entries: {group[0][1]} (e.g. {group[0][0]})"
                for group in self.skipped_by_code().values()]

    def counts(self) -> str:
        """'decode-error 3, not-a-file 1': the skipped entries by kind."""
        return ", ".join(f"{code} {n}" for code, n in Counter(r.split(":", 1)[0] for _, r in self.skipped).items())


def read_folder(root: str | Path, resolution: int | None = None, channels: int | None = None, *,
                max_pixels: int, formats: Iterable[str], modes: Iterable[str], limit: int = 0,
                workers: int = 0) -> FolderImages:
    """Images under root that pass the data gate's file checks, read like training reads them.

    The checks are models.data.manifest's scan and probe (regular UTF-8-named image files only, never a link,
    FIFO or device; decodes; still; at most max_pixels) plus the gate's format and mode lists; files that
    pass but fail to decode fully are skipped too. Nothing raises for a single file. resolution / channels
    default to the first valid image's shorter side and mode; `limit` > 0 decodes only that many.
    """
    formats, modes = set(formats), set(modes)
    valid, skipped = [], []
    for e in build_manifest(root, workers=workers, max_pixels=max_pixels):
        reason = e.scan_error or e.decode_error
        if reason is None and e.format not in formats:
            reason = f"format: {e.format} is not one of data.allowed_formats {sorted(formats)}"
        if reason is None and e.mode not in modes:
            reason = f"mode: {e.mode} is not one of data.allowed_modes {sorted(modes)}"
        if reason is None:
            valid.append(e)
        else:
            skipped.append((e.path, reason))
    if valid:
        resolution = resolution or min(valid[0].width, valid[0].height)
        channels = channels or channels_of(valid[0].mode)
    resolution, channels = resolution or 1, channels or 1
    want = limit or len(valid)
    paths, arrays, done = [], [], 0
    while len(arrays) < want and done < len(valid):   # a file that fails to decode is replaced by the next one
        todo = valid[done:done + want - len(arrays)]
        done += len(todo)
        for e, arr in zip(todo, load_each([e.path for e in todo], resolution, channels, workers)):
            if isinstance(arr, str):
                skipped.append((e.path, arr))
            else:
                paths.append(e.path)
                arrays.append(arr)
    images = np.stack(arrays) if arrays else np.zeros((0, channels, resolution, resolution), np.uint8)
    return FolderImages(str(root), images, paths, sorted(skipped), unused=len(valid) - done)
