"""Atomic file writes (`atomic_path`) and output folders that replace only the project's own files (`OutputFolder`)."""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from models.paths import user_path


def _file_mode() -> int:
    mask = os.umask(0)                   # the only way to read the umask; set back at once (module import)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`, on error removed.

    The temporary file lives in the same folder (a rename across file systems would not be atomic) and starts
    with a dot, so folder scans that skip hidden files never pick it up. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)            # mkstemp makes 0600; outputs get the mode open() would give them
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str, *, fsync: bool = True) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------- output folders: only the project's files are replaced

# Every folder the project writes into keeps this ledger of the files it wrote there (relpath -> command, sha256).
# A path the ledger does not list, or whose bytes changed since, belongs to the user and is never replaced.
LEDGER = ".transsrgan-outputs.json"
LEDGER_FORMAT = "transsrgan-outputs/1"
SHOWN = 5  # foreign names a report or an error spells out; the rest is a count


class ForeignFileError(FileExistsError):
    """A path the project would write holds something it did not write; nothing was written over it."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _read_ledger(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / LEDGER
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != LEDGER_FORMAT or not isinstance(doc.get("files"), dict):
            raise ValueError
    except (ValueError, OSError, AttributeError):
        raise ForeignFileError(f"{path} exists and is not transsrgan's list of its outputs (nothing was "
                               "written; move it away or choose another folder)") from None
    return doc["files"]


@contextlib.contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Held by one process at a time: another that asks for the same lock file (created if missing, left in place
    for the next) waits. For work two runs would otherwise do at once into one shared folder."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself, so two writers never lose each other's ledger entries."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class OutputFolder:
    """A folder the project writes into, possibly beside the user's own files: it replaces only what it wrote.

    `claim(relpath)` returns the path to write (by any atomic writer) after checking that nothing but an unchanged
    earlier output of the project is there; anything else raises ForeignFileError. On a clean exit the ledger
    records what was written and, with `replace=True`, this command's earlier outputs that this session did not
    write again are removed (a rerun leaves no stale pages behind). Nothing else is ever removed or replaced;
    `foreign()` lists what was left alone. The folder is created; an uncreatable one raises OSError.
    """

    def __init__(self, path: str | Path, command: str, *, replace: bool = True, create: bool = True):
        self.path = user_path(path).absolute()
        self.command, self.replace = command, replace
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self._ledger = _read_ledger(self.path)
        self._claimed: set[str] = set()

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(retire=exc_type is None)

    def _rel(self, relpath: str | Path) -> str:
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts or rel.as_posix() in ("", ".", LEDGER):
            raise ValueError(f"not a path inside the output folder: {relpath}")
        return rel.as_posix()

    def _unchanged(self, rel: str) -> bool:
        """`rel` is in the ledger and still holds the bytes the project wrote there."""
        entry = self._ledger.get(rel)
        path = self.path / rel
        return bool(entry) and path.is_file() and not path.is_symlink() and sha256_file(path) == entry["sha256"]

    def blocked(self, relpath: str | Path) -> str | None:
        """Why `relpath` may not be written, or None when it is free or this command's unchanged earlier output."""
        rel = self._rel(relpath)
        parts = rel.split("/")
        for i in range(1, len(parts)):   # every folder on the way must be a real folder, not a file or a link
            above = self.path.joinpath(*parts[:i])
            if above.is_symlink() or (above.exists() and not above.is_dir()):
                return f"{above} is not a folder transsrgan can write into"
        path = self.path / rel
        if not path.exists() and not path.is_symlink():
            return None
        if rel in self._claimed:
            return None
        entry = self._ledger.get(rel)
        if entry is None:
            return f"{path} was not written by transsrgan"
        if not self._unchanged(rel):
            return f"{path} was changed since transsrgan wrote it"
        if entry.get("command") != self.command:
            return f"{path} is an output of transsrgan {entry.get('command')}, not of {self.command}"
        return None

    def check(self, *relpaths: str | Path) -> None:
        """Raise ForeignFileError (one line, every blocked path) unless all of `relpaths` may be written."""
        why = [w for w in map(self.blocked, relpaths) if w]
        if why:
            raise ForeignFileError(f"{_names(why)} (nothing was overwritten; move it away or choose another folder)")

    def claim(self, relpath: str | Path) -> Path:
        """The absolute path to write `relpath` to, after check(); recorded in the ledger when the folder closes."""
        self.check(relpath)
        rel = self._rel(relpath)
        self._claimed.add(rel)
        (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
        return self.path / rel

    def atomic(self, relpath: str | Path, *, fsync: bool = True) -> contextlib.AbstractContextManager[Path]:
        """claim() then atomic_path(): yields the temporary path to write; it becomes `relpath` on success."""
        return atomic_path(self.claim(relpath), fsync=fsync)

    def write(self, relpath: str | Path, data: bytes | str, *, fsync: bool = True) -> Path:
        return write_atomic(self.claim(relpath), data, fsync=fsync)

    def copy(self, relpath: str | Path, source: str | Path, *, fsync: bool = True) -> Path:
        """Place a copy of the file `source` at `relpath` (atomically)."""
        with self.atomic(relpath, fsync=fsync) as tmp:
            shutil.copyfile(source, tmp)
        return self.path / self._rel(relpath)

    def foreign(self) -> list[str]:
        """What sits beside the project's files and is not theirs ('sub/' for a folder of the user's), sorted."""
        owned = set(self._ledger) | self._claimed
        dirs = {"."} | {Path(rel).parents[i].as_posix() for rel in owned for i in range(len(Path(rel).parents))}
        found = []
        for d in sorted(dirs):
            folder = self.path / d
            if not folder.is_dir() or folder.is_symlink():
                continue
            for name in sorted(os.listdir(folder)):
                rel = name if d == "." else f"{d}/{name}"
                if rel in owned or rel in dirs or rel == LEDGER:
                    continue
                found.append(rel + ("/" if (folder / name).is_dir() and not (folder / name).is_symlink() else ""))
        return found

    def report(self) -> str:
        """One line about the user's files left alone, or '' when there are none."""
        foreign = self.foreign()
        if not foreign:
            return ""
        return (f"left alone {len(foreign)} file(s) in {self.path} that transsrgan did not write: "
                f"{_names(foreign)}")

    def close(self, *, retire: bool = True) -> None:
        """Record what this session wrote; with `retire` (and replace=True) remove this command's stale outputs."""
        if not self._claimed and not (retire and self.replace and self._ledger):
            return                                      # nothing to record: no ledger appears in the folder
        with _locked(self.path):
            self._ledger = ledger = _read_ledger(self.path)   # another writer may have added entries meanwhile
            for rel in sorted(self._claimed):
                path = self.path / rel
                if path.is_file() and not path.is_symlink():
                    ledger[rel] = {"command": self.command, "sha256": sha256_file(path)}
            if retire and self.replace:
                for rel, entry in sorted(ledger.items()):
                    if entry.get("command") != self.command or rel in self._claimed:
                        continue
                    if self._unchanged(rel):
                        (self.path / rel).unlink()
                        self._prune(Path(rel).parent)
                    del ledger[rel]                     # gone, or changed by the user: theirs from now on
            write_atomic(self.path / LEDGER, json.dumps({"format": LEDGER_FORMAT, "files": ledger}, indent=1,
                                                       sort_keys=True))
            self._claimed = set()

    def _prune(self, rel_dir: Path) -> None:
        """Remove folders emptied by retiring outputs, up to (not including) the output folder."""
        while rel_dir.parts:
            try:
                (self.path / rel_dir).rmdir()
            except OSError:      # not empty: something else lives there
                return
            rel_dir = rel_dir.parent


def check_output(path: str | Path, command: str) -> Path:
    """Raise ForeignFileError unless the file `path` is absent or an unchanged earlier output of `command`'s kind.

    Meant before a long computation, so a refused report costs nothing; NotADirectoryError when a folder on the
    way is a file.
    """
    path = user_path(path).absolute()
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise NotADirectoryError(f"{above} is not a folder")
            break
    OutputFolder(path.parent, command, replace=False, create=False).check(path.name)
    return path


def write_output(path: str | Path, data: bytes | str, command: str) -> Path:
    """Write one file (a --json or --markdown report) under the output-folder rule; returns its path."""
    path = user_path(path).absolute()
    with OutputFolder(path.parent, command, replace=False) as folder:
        return folder.write(path.name, data)
