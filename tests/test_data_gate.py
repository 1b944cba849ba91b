"""The GX data gate: quarantine driven by GX results, every file accounted for, outputs, exit codes."""

import csv
import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_manifest import EXPECTED, all_entries, bad_inputs_root

from flows.cli import main
from models.config import DataConfig
from models.data import load_dataset
from tasks.data_gate import DataGateError, run_data_gate

LENIENT = DataConfig(min_images=5, max_bad_fraction=1.0, gate_workers=2)


def read_quarantine(path: str) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [] or list(rows[0]) == ["path", "reason"]
    return {r["path"]: r["reason"] for r in rows}


def snapshot(root: Path) -> dict[bytes, tuple[int, int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    return bad_inputs_root(tmp_path_factory)


@pytest.fixture(scope="module")
def gate(bad_root, tmp_path_factory):
    before = snapshot(bad_root)
    result = run_data_gate(str(bad_root), tmp_path_factory.mktemp("gate-out"), LENIENT, resolution=32)
    assert snapshot(bad_root) == before, "the gate modified, added or removed files under the data root"
    return result


def test_every_input_is_in_exactly_one_of_manifest_and_quarantine(bad_root, gate):
    manifest = set(pq.read_table(gate.manifest_path).column("path").to_pylist())
    quarantine = set(read_quarantine(gate.quarantine_path))
    expected = {str(bad_root) + "/" + rel for rel in all_entries(bad_root)}
    assert manifest.isdisjoint(quarantine)
    assert manifest | quarantine == expected
    assert (gate.n_files, gate.n_valid, gate.n_quarantined) == (len(expected), len(manifest), len(quarantine))


def test_per_file_outcomes(bad_root, gate):
    quarantine = read_quarantine(gate.quarantine_path)
    got = {p.removeprefix(str(bad_root) + "/"): reason.split(":", 1)[0] for p, reason in quarantine.items()}
    assert got == {rel: code for rel, code in EXPECTED.items() if code is not None}
    by_path = {p.removeprefix(str(bad_root) + "/"): r for p, r in quarantine.items()}
    assert "good/rgb_00.png" in by_path["zz_dup.png"]             # names the kept copy
    assert "4x4" in by_path["bad/tiny4.png"] and "model.resolution (32)" in by_path["bad/tiny4.png"]
    assert "GIF" in by_path["bad/gif_named.png"] and "CMYK" in by_path["bad/cmyk.jpg"]
    assert "20000x20000" in by_path["bad/bomb.png"]
    assert gate.passed and gate.failed_expectations == []
    assert sum(gate.quarantined_by_reason.values()) == gate.n_quarantined
    observed = {c["check"]: c["observed_value"] for c in gate.checks if c["suite"] == "dataset"}
    assert observed["min_images"] == gate.n_valid and isinstance(observed["min_images"], int)
    json.dumps(asdict(gate))  # plain values only: it travels between Prefect tasks


def test_quarantine_is_exactly_what_gx_flagged(gate):
    """The per-file suite's unexpected rows (GX's own result) are the quarantine, minus the kept duplicate."""
    report = json.loads(Path(gate.validation_json).read_text())
    flagged = set()
    for r in report["suites"]["files"]["results"]:
        rels = {item["relpath"] for item in r["result"]["unexpected_index_list"]}
        flagged |= rels - ({"good/rgb_00.png"} if r["expectation_config"]["type"].endswith("unique") else set())
    quarantined = {Path(p).relative_to(gate.source).as_posix() if "\\x" not in p else p.rsplit("/", 1)[1]
                   for p in read_quarantine(gate.quarantine_path)}
    assert flagged == quarantined
    assert report["success"] is True and report["summary"]["fingerprint"] == gate.fingerprint


def test_manifest_feeds_training_and_carries_the_fingerprint(gate):
    meta = pq.read_schema(gate.manifest_path).metadata
    assert meta[b"transsrgan.fingerprint"].decode() == gate.fingerprint
    table = pq.read_table(gate.manifest_path)
    assert {"path", "relpath", "sha256", "format", "width", "height", "mode", "channels", "bytes", "decodes",
            "mean", "std"} <= set(table.column_names)
    data = load_dataset(gate.manifest_path, resolution=16, channels=3)
    assert data.images.shape == (gate.n_valid, 3, 16, 16)


def test_data_docs_are_written(gate):
    index = Path(gate.data_docs_dir) / "index.html"
    assert index.is_file()
    pages = list(Path(gate.data_docs_dir).rglob("*.html"))
    text = " ".join(p.read_text(errors="replace") for p in pages)
    assert "data_gate.files" in text and "data_gate.dataset" in text


def _quarantine_rows(page: str) -> dict[str, tuple[int, str]]:
    """reason code -> (count, the row's HTML) from the summary's quarantine table."""
    table = page.split("<h2>Quarantine by reason</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r'<tr><td class="mono">([^<]+)</td><td>(\d+)</td>(.*?)</tr>', table, re.S)
    return {code: (int(n), rest) for code, n, rest in rows}


def test_offline_summary_is_self_contained_and_lists_quarantine_and_expectations(gate):
    page = Path(gate.summary_html).read_text(encoding="utf-8")
    assert Path(gate.summary_html).parent == Path(gate.data_docs_dir).parent     # beside the Data Docs
    assert not re.search(r"https?://", page), "the summary must not load anything from the network"
    assert re.findall(r'\b(?:src|href)="(?!data:image/png;base64,)([^"]*)"', page) == ["data_docs/index.html"]
    assert "<script" not in page and "@import" not in page and "url(" not in page
    rows = _quarantine_rows(page)
    assert {code: n for code, (n, _) in rows.items()} == gate.quarantined_by_reason
    assert "bad/bomb.png" in rows["too-large"][1] and "20000x20000" in rows["too-large"][1]
    assert "zz_dup.png" in rows["duplicate"][1] and "good/rgb_00.png" in rows["duplicate"][1]
    expectations = page.split("<h2>Expectations</h2>", 1)[1].split("<h2>", 1)[0]
    for c in gate.checks:
        assert f'<td class="mono">{c["check"]}</td><td class="mono">{c["expectation"]}</td>' in expectations
    observed = {c["check"]: c["observed_value"] for c in gate.checks if c["suite"] == "dataset"}
    assert f"<td>{observed['min_images']}</td><td><span class=\"pass\">passed</span>" in expectations
    # thumbnails: decoded files only; the decompression bomb and the links are never opened
    quarantined = page.split("<h2>Quarantined images</h2>", 1)[1].split("<h2>", 1)[0]
    accepted = page.split("<h2>Accepted images</h2>", 1)[1]
    assert quarantined.count("data:image/png;base64,") >= 3 and accepted.count("data:image/png;base64,") >= 3
    assert "bad/bomb.png" not in quarantined or "not decoded" in quarantined


def test_dataset_failure_names_expectations_and_counts(bad_root, gate, tmp_path):
    strict = LENIENT.model_copy(update={"max_bad_fraction": 0.2, "min_images": 100})
    with pytest.raises(DataGateError) as info:
        run_data_gate(str(bad_root), tmp_path, strict, resolution=32)
    msg = str(info.value)
    assert f"valid images >= data.min_images (100): {gate.n_valid}" in msg
    assert "data.max_bad_fraction (0.2)" in msg and f"({gate.n_bad} of {gate.n_files})" in msg
    assert gate.n_bad == gate.n_quarantined - 1                   # zz_dup.png is a duplicate, not a bad file
    res = info.value.result
    assert not res.passed and len(res.failed_expectations) == 2
    assert res.fingerprint == gate.fingerprint                    # same valid files, same settings
    assert Path(res.manifest_path).is_file() and Path(res.validation_json).is_file()
    assert str(Path(res.summary_html)) in msg and "FAILED" in Path(res.summary_html).read_text()


def test_empty_folder_fails_the_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataGateError, match=r"files >= 1 \(the folder has no files\): 0"):
        run_data_gate(str(tmp_path / "empty"), tmp_path / "out", LENIENT, resolution=32)
    assert pq.read_table(tmp_path / "out" / "manifest.parquet").num_rows == 0


def test_output_folder_inside_the_root_is_skipped(tmp_path):
    for i in range(6):
        Image.effect_noise((32, 32), 60 + i).save(tmp_path / f"{i}.png")
    first = run_data_gate(str(tmp_path), tmp_path / "gate", LENIENT, resolution=32)
    second = run_data_gate(str(tmp_path), tmp_path / "gate", LENIENT, resolution=32)
    assert first.n_files == second.n_files == 6 and first.fingerprint == second.fingerprint


def test_cli_exit_codes_and_table(bad_root, tmp_path, capsys):
    assert main(["validate", str(bad_root), "--out", str(tmp_path / "a"), "--min-images", "5",
                 "--max-bad-fraction", "1", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "quarantined" in out and "symlink-loop" in out and "fingerprint" in out and "PASSED" in out
    assert json.loads((tmp_path / "s.json").read_text())["n_files"] == len(EXPECTED)
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]) == 1
    assert "data gate failed" in capsys.readouterr().out
    assert main(["validate", "digits", "--out", str(tmp_path / "c"), "--preset", "tiny"]) == 0
    assert "5000" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["validate", "/no/such/folder", "--out", "x"], "PATH does not exist: /no/such/folder"),
    (["validate", "digits"], "--out"),
    (["validate", "digits", "--out", "x", "--max-bad-fraction", "2"], "data.max_bad_fraction"),
    (["validate", "digits", "--out", "x", "--min-images", "many"], "--min-images"),
])
def test_bad_usage_exits_2(args, needle, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- duplicates: kept out of training, not "bad"

def _with_copies(root: Path, unique: int, copies: int) -> Path:
    """`unique` distinct noise images, then `copies` exact copies of them (round robin) under other names."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for i in range(unique):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"a_{i:02d}.png")
    for j in range(copies):
        shutil.copy(root / f"a_{j % unique:02d}.png", root / f"b_copy_{j:02d}.png")
    return root


def test_duplicates_train_once_are_reported_and_do_not_count_as_bad_files(tmp_path, capsys):
    root = _with_copies(tmp_path / "faces", unique=10, copies=6)     # 6 of 16 = 0.375 > max_bad_fraction 0.2
    data = DataConfig(min_images=5, gate_workers=1)
    gate = run_data_gate(str(root), tmp_path / "gate", data, resolution=32)
    assert gate.passed and (gate.n_files, gate.n_valid, gate.n_duplicates, gate.n_bad) == (16, 10, 6, 0)
    assert gate.quarantined_by_reason == {"duplicate": 6}
    table = pq.read_table(gate.manifest_path)
    assert len(set(table.column("sha256").to_pylist())) == table.num_rows == 10       # one copy of each trains
    assert all(Path(p).name.startswith("a_") for p in table.column("path").to_pylist())  # the first by relpath
    assert load_dataset(gate.manifest_path, resolution=16, channels=1).images.shape[0] == 10
    unique = next(c for c in gate.checks if c["check"] == "unique")
    # GX flags every copy (12 files in 6 groups); 6 are kept, 6 quarantined: the counts read together
    assert unique["unexpected_count"] == 12
    assert unique["note"] == "12 file(s) share their bytes with another (6 group(s)): 6 kept, one per group; " \
                             "6 duplicate(s) quarantined"
    observed = {c["check"]: c["observed_value"] for c in gate.checks if c["suite"] == "dataset"}
    assert observed["max_bad_fraction"] == 0 and observed["max_duplicate_fraction"] == pytest.approx(6 / 16)
    assert main(["validate", str(root), "--out", str(tmp_path / "cli"), "--min-images", "5"]) == 0
    printed = capsys.readouterr().out
    assert "10 unique image(s); these train" in printed and "duplicate copies: 6" in printed
    assert "6 duplicate(s) quarantined" in printed


def test_too_many_duplicates_fail_naming_their_own_threshold(tmp_path):
    root = _with_copies(tmp_path / "faces", unique=4, copies=6)      # 6 of 10 = 0.6 > the default 0.5
    with pytest.raises(DataGateError) as info:
        run_data_gate(str(root), tmp_path / "gate", DataConfig(min_images=2, gate_workers=1), resolution=32)
    msg = str(info.value)
    assert "duplicate fraction <= data.max_duplicate_fraction (0.5): 0.600 (6 extra copies among 10 files)" in msg
    assert "max_bad_fraction" not in msg
    strict = DataConfig(min_images=2, gate_workers=1, max_duplicate_fraction=0.3)
    root2 = _with_copies(tmp_path / "few", unique=10, copies=4)      # 4 of 14 = 0.286 passes at 0.3 ...
    assert run_data_gate(str(root2), tmp_path / "gate2", strict, resolution=32).passed
    with pytest.raises(DataGateError, match=r"data.max_duplicate_fraction \(0.2\)"):   # ... not at 0.2
        run_data_gate(str(root2), tmp_path / "gate3", strict.model_copy(update={"max_duplicate_fraction": 0.2}),
                      resolution=32)


# ---------------------------------------------------------------- a gate's manifest.parquet as the data source

def test_a_manifest_is_the_validated_dataset_rechecked_cheaply(tmp_path):
    from tasks.pipeline import stat_fingerprint

    root = _with_copies(tmp_path / "faces", unique=8, copies=2)
    data = DataConfig(min_images=2, gate_workers=1)
    first = run_data_gate(str(root), tmp_path / "gate", data, resolution=32)
    again = run_data_gate(first.manifest_path, tmp_path / "again", data, resolution=32)
    assert again.passed and again.source == first.manifest_path
    assert (again.n_files, again.n_valid, again.fingerprint) == (8, 8, first.fingerprint)
    assert pq.read_table(again.manifest_path).column("path").to_pylist() == \
        pq.read_table(first.manifest_path).column("path").to_pylist()
    key = stat_fingerprint(first.manifest_path)
    assert key is not None and key == stat_fingerprint(first.manifest_path)

    (root / "a_00.png").unlink()                                     # the folder changed since the gate ran
    with open(root / "a_01.png", "ab") as fh:
        fh.write(b"appended")
    assert stat_fingerprint(first.manifest_path) != key
    changed = run_data_gate(first.manifest_path, tmp_path / "again", data.model_copy(update={"max_bad_fraction": 0.5}),
                            resolution=32)
    reasons = {Path(p).name: r for p, r in read_quarantine(changed.quarantine_path).items()}
    assert reasons["a_00.png"].startswith("missing:") and reasons["a_01.png"].startswith("changed:")
    assert changed.n_valid == 6
    # the current settings decide: the same manifest at a larger resolution quarantines every image
    with pytest.raises(DataGateError, match="valid images >= data.min_images"):
        run_data_gate(first.manifest_path, tmp_path / "at64", data, resolution=64)


def test_a_parquet_that_is_not_a_gate_manifest_is_refused(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"path": ["x.png"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a manifest.parquet written by `transsrgan validate`"):
        run_data_gate(str(tmp_path / "other.parquet"), tmp_path / "gate", LENIENT, resolution=32)
    assert main(["validate", str(tmp_path / "other.parquet"), "--out", str(tmp_path / "gate")]) == 2
    assert "PATH" in capsys.readouterr().err


def test_train_accepts_the_manifest_that_validate_wrote(tmp_path, capsys):
    root = _with_copies(tmp_path / "faces", unique=8, copies=0)
    assert main(["validate", str(root), "--out", str(tmp_path / "gate"), "--min-images", "2"]) == 0
    capsys.readouterr()
    manifest = str(tmp_path / "gate" / "manifest.parquet")
    assert main(["train", "--preset", "tiny", "--data", manifest, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["source"] == manifest
    gate = run_data_gate(manifest, tmp_path / "flow-gate", DataConfig(min_images=2), resolution=16)
    assert gate.passed and load_dataset(gate.manifest_path, 16, 1).images.shape == (8, 1, 16, 16)
