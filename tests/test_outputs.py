"""Output folders hold only what the project made: a rerun replaces its own files, the user's are never touched."""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from models.config import DataConfig
from models.files import LEDGER, ForeignFileError, OutputFolder, check_output, write_output
from tasks.data_gate import run_data_gate

GATE_CONFIG = DataConfig(min_images=4, gate_workers=1)


def digests(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under root (the ledger included)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def ledger(folder: Path) -> dict[str, dict[str, str]]:
    return json.loads((folder / LEDGER).read_text())["files"]


def images(root: Path, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"img_{i:02d}.png")
    return root


def user_files(folder: Path) -> dict[str, bytes]:
    """The user's own files beside the outputs, including one where the gate writes its Data Docs."""
    files = {"thesis.txt": b"chapter 1\n", "data_docs/thesis.txt": b"my notes on the docs\n",
             "photos/cat.png": b"\x89PNG not really\n", "data_docs/static/mine.css": b"body {}\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def exit_code(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the rule itself

def test_a_rerun_replaces_the_project_files_and_leaves_the_rest(tmp_path):
    (tmp_path / "mine.txt").write_text("user")
    with OutputFolder(tmp_path, "cmd") as out:
        out.write("a.txt", "one")
        out.write("sub/b.txt", "two")
    assert set(ledger(tmp_path)) == {"a.txt", "sub/b.txt"}
    with OutputFolder(tmp_path, "cmd") as out:
        out.write("a.txt", "three")                       # an unchanged earlier output: replaced
        assert out.foreign() == ["mine.txt"]
        assert "mine.txt" in out.report() and "1 file(s)" in out.report()
    assert (tmp_path / "a.txt").read_text() == "three" and (tmp_path / "mine.txt").read_text() == "user"
    assert not (tmp_path / "sub").exists()                # b.txt was not written again: retired, folder pruned
    assert set(ledger(tmp_path)) == {"a.txt"}


def test_a_file_the_project_did_not_write_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "b.txt").write_text("user")
    with pytest.raises(ForeignFileError, match=r"b\.txt was not written by transsrgan.*nothing was overwritten"):
        with OutputFolder(tmp_path, "cmd") as out:
            out.check("a.txt", "b.txt")
    assert sorted(os.listdir(tmp_path)) == ["b.txt"] and (tmp_path / "b.txt").read_text() == "user"


def test_a_project_file_the_user_changed_becomes_theirs(tmp_path):
    with OutputFolder(tmp_path, "cmd") as out:
        out.write("a.txt", "ours")
        out.write("b.txt", "ours")
    (tmp_path / "a.txt").write_text("edited by the user")
    with OutputFolder(tmp_path, "cmd") as out:
        with pytest.raises(ForeignFileError, match="changed since transsrgan wrote it"):
            out.claim("a.txt")
    # that session wrote nothing: b.txt (unchanged) was retired, a.txt is the user's from now on
    assert (tmp_path / "a.txt").read_text() == "edited by the user"
    assert sorted(os.listdir(tmp_path)) == [LEDGER, "a.txt"] and ledger(tmp_path) == {}
    assert OutputFolder(tmp_path, "cmd").foreign() == ["a.txt"]


def test_links_files_on_the_way_and_other_commands_outputs_are_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "linked")
    (tmp_path / "plain").write_text("user")
    with OutputFolder(tmp_path, "one") as out:
        out.write("theirs.txt", "x")
    folder = OutputFolder(tmp_path, "two")
    for rel, needle in (("linked/a.txt", "not a folder"), ("plain/a.txt", "not a folder"),
                        ("theirs.txt", "an output of transsrgan one, not of two")):
        with pytest.raises(ForeignFileError, match=needle):
            folder.claim(rel)
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_foreign_ledger_file_is_never_replaced(tmp_path):
    (tmp_path / LEDGER).write_text("my own notes")
    with pytest.raises(ForeignFileError, match="not transsrgan's list"):
        OutputFolder(tmp_path, "cmd")
    assert (tmp_path / LEDGER).read_text() == "my own notes"


def test_single_report_files(tmp_path):
    report = tmp_path / "r.json"
    assert check_output(report, "cmd") == report                # absent: fine
    write_output(report, "{}", "cmd")
    write_output(report, '{"again": 1}', "cmd")                 # the same command's earlier report: replaced
    with pytest.raises(ForeignFileError):
        check_output(report, "other")
    (tmp_path / "user.json").write_text("keep")
    with pytest.raises(ForeignFileError):
        write_output(tmp_path / "user.json", "{}", "cmd")
    assert (tmp_path / "user.json").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        check_output(tmp_path / "file" / "r.json", "cmd")


# ---------------------------------------------------------------- the gate's outputs

def test_gate_twice_into_a_folder_of_user_files_keeps_every_byte_of_them(tmp_path):
    data, out = images(tmp_path / "data"), tmp_path / "gate"
    mine = user_files(out)
    before = digests(out)
    first = run_data_gate(str(data), out, GATE_CONFIG, resolution=32)
    after_first = digests(out)
    assert {rel: after_first[rel] for rel in mine} == {rel: before[rel] for rel in mine}
    assert sorted(first.left_alone) == ["data_docs/static/mine.css", "data_docs/thesis.txt", "photos/",
                                        "thesis.txt"]
    owned = set(ledger(out))
    assert {"manifest.parquet", "quarantine.csv", "validation.json", "data_docs/index.html"} <= owned
    assert set(after_first) == owned | set(mine) | {LEDGER}      # nothing else appeared

    (data / "img_00.png").unlink()                                # different data: some outputs change
    second = run_data_gate(str(data), out, GATE_CONFIG, resolution=32)
    after_second = digests(out)
    assert {rel: after_second[rel] for rel in mine} == {rel: before[rel] for rel in mine}
    assert set(after_second) == set(ledger(out)) | set(mine) | {LEDGER}
    assert second.n_files == 7 and first.n_files == 8
    # the first run's validation pages (named by run time) were the gate's: replaced, not piling up
    pages = sorted(p.relative_to(out).as_posix() for p in (out / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 2 and all(p in ledger(out) for p in pages)


def test_gate_refuses_an_output_path_that_holds_a_user_file(tmp_path):
    data, out = images(tmp_path / "data"), tmp_path / "gate"
    (out / "data_docs").mkdir(parents=True)
    (out / "data_docs" / "index.html").write_text("<p>my page</p>")
    with pytest.raises(ForeignFileError, match="index.html was not written by transsrgan"):
        run_data_gate(str(data), out, GATE_CONFIG, resolution=32)
    assert (out / "data_docs" / "index.html").read_text() == "<p>my page</p>"
    assert not (out / "manifest.parquet").exists()              # all or nothing


@pytest.mark.parametrize("case", ["out-is-path", "path-inside-out"])
def test_validate_out_that_is_or_holds_the_data_is_exit_2(tmp_path, capsys, case):
    data = images(tmp_path / "data")
    before = digests(tmp_path)
    out = data if case == "out-is-path" else tmp_path
    code, err = exit_code(["validate", str(data), "--out", str(out), "--min-images", "4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--out" in err, err
    assert digests(tmp_path) == before


@pytest.mark.parametrize("out", ["FILE/sub", "/proc/nope"])
def test_validate_out_that_cannot_be_a_folder_is_exit_2(tmp_path, capsys, out):
    data = images(tmp_path / "data")
    (tmp_path / "FILE").write_text("a file")
    code, err = exit_code(["validate", str(data), "--out", out.replace("FILE", str(tmp_path / "FILE"))], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("transsrgan validate: error: --out"), err


def test_validate_out_holding_user_files_keeps_them_and_says_so(tmp_path, capsys):
    data, out = images(tmp_path / "data"), tmp_path / "gate"
    mine = user_files(out)
    for _ in range(2):
        assert main(["validate", str(data), "--out", str(out), "--min-images", "4", "--gate-workers", "1"]) == 0
        printed = capsys.readouterr().out
        assert "left alone" in printed and "data_docs/thesis.txt" in printed
        assert re.search(r"^files\s+8$", printed, re.M)             # the user's files are not counted as data
        assert {rel: (out / rel).read_bytes() for rel in mine} == mine


def test_validate_out_inside_path_is_skipped_and_reported(tmp_path, capsys):
    data = images(tmp_path / "data")
    assert main(["validate", str(data), "--out", str(data / "gate"), "--min-images", "4"]) == 0
    assert main(["validate", str(data), "--out", str(data / "gate"), "--min-images", "4"]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"^not scanned\s+{re.escape(str(data / 'gate'))} \(the output folder, inside PATH\)$",
                     printed, re.M)
    assert re.findall(r"^files\s+(\d+)$", printed, re.M) == ["8", "8"]


# ---------------------------------------------------------------- the other commands' outputs

def test_report_files_of_validate_evaluate_and_bench_never_replace_a_user_file(tmp_path, capsys):
    data = images(tmp_path / "data")
    user = tmp_path / "results.json"
    user.write_text("my results")
    for argv in (["validate", str(data), "--out", str(tmp_path / "gate"), "--json", str(user)],
                 ["evaluate", "--fake", str(data), "--real", str(data), "--json", str(user)],
                 ["bench", "speedup", "--json", str(user)],
                 ["bench", "speedup", "--markdown", str(user)]):
        code, err = exit_code(argv, capsys)
        flag = "--markdown" if "--markdown" in argv else "--json"
        assert code == 2 and err.count("\n") == 1 and f"error: {flag}: {user}" in err, (argv, err)
    assert user.read_text() == "my results"
    assert not (tmp_path / "gate").exists() or not (tmp_path / "gate" / "manifest.parquet").exists()
    # the same command's earlier report is replaced
    report = tmp_path / "summary.json"
    for _ in range(2):
        assert main(["validate", str(data), "--out", str(tmp_path / "gate"), "--min-images", "4",
                     "--json", str(report)]) == 0
    assert json.loads(report.read_text())["n_valid"] == 8


def test_demo_data_keeps_user_files_and_refuses_a_clash(tmp_path, capsys):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    assert main(["demo-data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5000 images" in printed and "left alone 1 file(s)" in printed and "README.txt" in printed
    assert (out / "README.txt").read_text() == "my notes"
    assert main(["demo-data", str(out)]) == 0                      # a rerun replaces its own files
    capsys.readouterr()
    first = sorted(out.glob("*.png"))[0]
    first.write_bytes(b"the user's own picture")                   # now a file the project did not write
    code, err = exit_code(["demo-data", str(out)], capsys)
    assert code == 2 and "OUT_DIR" in err and first.name in err and err.count("\n") == 1
    assert first.read_bytes() == b"the user's own picture"


def test_sample_each_refuses_a_user_file_before_loading_a_model(tmp_path, capsys):
    each = tmp_path / "each"
    each.mkdir()
    (each / "sample_0001.png").write_bytes(b"\x89PNG\r\n\x1a\nthe user's own picture")
    code, err = exit_code(["sample", "--model", "models:/nope@champion", "-n", "4", "--out",
                           str(tmp_path / "grid.png"), "--each", str(each)], capsys)
    assert code == 2 and "--each" in err and "sample_0001.png" in err, err
    assert (each / "sample_0001.png").read_bytes() == b"\x89PNG\r\n\x1a\nthe user's own picture"
