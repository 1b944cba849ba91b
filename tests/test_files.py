"""models.files: atomic writes replace the target only on success and never leave a temporary file behind."""

import os

import pytest

from models.files import atomic_path, write_atomic


def test_success_renames_the_temporary_file_onto_the_target(tmp_path):
    target = tmp_path / "sub" / "out.bin"                          # the parent folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()                                 # readers see nothing until the rename
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["out.bin"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_an_interrupt_also_removes_the_temporary_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x", fsync=False) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_write_atomic_replaces_text_and_bytes(tmp_path):
    target = tmp_path / "a.json"
    assert write_atomic(target, "{}") == target and target.read_text() == "{}"
    write_atomic(target, "é".encode())
    assert target.read_text(encoding="utf-8") == "é"
    assert os.listdir(tmp_path) == ["a.json"]
