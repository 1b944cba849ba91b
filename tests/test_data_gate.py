"""The GX data gate: quarantine driven by GX results, every file accounted for, outputs, exit codes."""

import csv
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

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


def test_dataset_failure_names_expectations_and_counts(bad_root, gate, tmp_path):
    strict = replace(LENIENT, max_bad_fraction=0.2, min_images=100)
    with pytest.raises(DataGateError) as info:
        run_data_gate(str(bad_root), tmp_path, strict, resolution=32)
    msg = str(info.value)
    assert f"valid images >= data.min_images (100): {gate.n_valid}" in msg
    assert "data.max_bad_fraction (0.2)" in msg and f"({gate.n_quarantined} of {gate.n_files})" in msg
    res = info.value.result
    assert not res.passed and len(res.failed_expectations) == 2
    assert res.fingerprint == gate.fingerprint                    # same valid files, same settings
    assert Path(res.manifest_path).is_file() and Path(res.validation_json).is_file()


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
