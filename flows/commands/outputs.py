"""Report files named by a flag (--json, --markdown): written only over the same command's earlier report.

A FILE that exists and that this command did not write before (per the folder's .transsrgan-outputs.json, by
content) is the user's: the command stops with exit 2 naming the flag, before its long part runs.
"""

import os
import tempfile
from pathlib import Path

from flows.errors import UsageError
from models.paths import user_path

REFUSAL = ("an existing FILE is replaced only when it is this command's earlier output (unchanged since); "
           "anything else stops the command with exit 2")


def check_writable(path: str | Path | None, flag: str, *, folder: bool = False) -> None:
    """UsageError naming `flag` unless PATH can be written before any work starts: a file (a folder with `folder`)
    that is not empty, not the other kind, not below a regular file, whose nearest existing folder takes a new
    entry. That is probed by making and removing an empty folder there: root passes permission checks even where
    nothing can be made (/proc); nothing is left behind."""
    if path is None:
        return
    if not str(path).strip():
        raise UsageError(f"{flag}: expected a path, got {str(path)!r}")
    target = user_path(path).absolute()
    if target.exists() and target.is_dir() != folder:
        raise UsageError(f"{flag}: {path} is {'not a folder' if folder else 'a folder, not a file'}")
    above = next(p for p in (target if folder else target.parent, *target.parents) if p.exists())
    if not above.is_dir():
        raise UsageError(f"{flag}: cannot write {path}: {above} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".transsrgan-probe-", dir=above))
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {exc.strerror or exc} in {above}") from None


def check_report(path: str | None, flag: str, command: str) -> None:
    """UsageError naming `flag` unless FILE is absent or `command`'s unchanged earlier report."""
    from models.files import ForeignFileError, check_output

    if path is None:
        return
    check_writable(path, flag)
    try:
        check_output(path, command)
    except ForeignFileError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {exc}") from None


def write_report(path: str, data: bytes | str, flag: str, command: str) -> Path:
    """Write the report (atomically, recorded in its folder's ledger); UsageError naming `flag` if refused."""
    from models.files import ForeignFileError, write_output

    try:
        return write_output(path, data, command)
    except ForeignFileError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {exc.strerror or exc}") from None


def check_folder(path: str | Path, names: list[str], flag: str, command: str) -> None:
    """UsageError naming `flag` unless every name in the folder is free or `command`'s unchanged earlier output."""
    from models.files import ForeignFileError, OutputFolder

    check_writable(path, flag, folder=True)
    folder = user_path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    try:
        OutputFolder(folder, command, create=False).check(*names)
    except ForeignFileError as exc:
        raise UsageError(f"{flag}: {exc}") from None
