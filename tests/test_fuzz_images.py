"""Fuzzed image folders through the data gate, evaluation and training: no traceback, no hang, every file accounted
for, nothing modified.

The default suite runs a few seeded corpora in-process (about 20 s); `-m slow` soaks more seeds (the count is
$TRANSSRGAN_FUZZ_SEEDS, default 30) and runs `transsrgan validate`, `evaluate` and `train` as subprocesses
(about 5 minutes on 2 busy cores, most of it the train flow).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fuzz_images import MUTATORS, make_corpus, snapshot
from fuzz_images import entries as corpus_entries
from test_evaluate import small_extractor  # noqa: F401 - a fixture (no_weights is in conftest.py)

from models.config import DataConfig
from models.data.folder import read_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEEDS = (0, 1, 2)
SOAK_SEEDS = range(100, 100 + int(os.environ.get("TRANSSRGAN_FUZZ_SEEDS", "30")))
# what the gate's scan/probe must say for the entries whose outcome does not depend on the random bytes
EXPECTED_CODE = {"fifo": ("not-a-file",), "empty": ("empty-file",), "animated": ("animated",),
                 "non-utf8-name": ("non-utf8-name",), "unsupported-suffix": ("unsupported-suffix",),
                 "symlink": ("symlink", "symlink-broken", "symlink-outside-root"), "other-format": ("format",),
                 "not-an-image": ("decode-error",), "png-huge-ihdr": ("too-large",)}


def _read(root: Path, **kw):
    data = DataConfig()
    return read_folder(root, max_pixels=data.max_pixels, formats=data.allowed_formats, modes=data.allowed_modes,
                       workers=1, **kw)


def _check_read(root: Path, cases) -> None:
    """read_folder keeps every valid image, skips the rest with the expected reason, and touches nothing."""
    before = snapshot(root)
    found = _read(root, resolution=16, channels=3)
    assert snapshot(root) == before
    assert found.n_entries == len(corpus_entries(root)) and found.unused == 0
    assert found.images.shape == (len(found.paths), 3, 16, 16)
    rel = {p: os.path.relpath(p, root.resolve()) for p in found.paths + [p for p, _ in found.skipped]}
    used = {rel[p] for p in found.paths}
    reasons = {rel[p]: r for p, r in found.skipped}
    assert not used & set(reasons)
    for case in cases:
        if case.kind == "valid":
            assert case.relpath in used, (case, reasons.get(case.relpath))
        for kind, codes in EXPECTED_CODE.items():
            if case.kind.split("+")[0] == kind:
                assert reasons[case.relpath].split(":", 1)[0] in codes, (case, reasons[case.relpath])
    assert all(":" in r and r.split(":", 1)[1].strip() for r in reasons.values())


def test_corpus_is_seeded_and_has_every_class(tmp_path):
    a, b, c = (make_corpus(tmp_path / name, seed) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    files = lambda root: {k: v for k, v in snapshot(root).items() if not v.startswith(("link", "special"))}  # noqa: E731
    assert a == b and files(tmp_path / "a") == files(tmp_path / "b") != files(tmp_path / "c")
    kinds = {case.kind.split("+")[0] for case in a}
    assert set(MUTATORS) | set(EXPECTED_CODE) | {"valid"} <= kinds
    assert len(corpus_entries(tmp_path / "a")) == len(a)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_folder_reading_accounts_for_every_fuzzed_file(tmp_path, seed):
    root = tmp_path / "corpus"
    _check_read(root, make_corpus(root, seed, big_side=3000 if seed == 0 else 0))


def test_limit_replaces_a_file_that_fails_late(tmp_path, monkeypatch):
    """A file that passes the header probe but not the full decode is skipped, and the next valid one is used."""
    import models.data.images as images

    root = tmp_path / "corpus"
    make_corpus(root, 3, n_valid=6, n_mutants=0)
    first = _read(root)
    assert len(first.paths) == 7 and first.unused == 0          # 6 valid + the image inside the folder named *.png
    late = first.paths[1]
    load = images._load_one
    monkeypatch.setattr(images, "_load_one", lambda job: "decode-error: fails late" if job[0] == late else load(job))
    found = _read(root, limit=3)
    assert found.paths == [p for p in first.paths if p != late][:3] and found.unused == 3
    assert (late, "decode-error: fails late") in found.skipped and found.n_entries == first.n_entries
    assert found.images.shape == (3, *first.images.shape[1:])              # the first valid image's size and mode


def _gate_accounts_for(root: Path, out: Path) -> tuple[set[str], dict[str, str]]:
    """(manifest relpaths, quarantined relpath -> reason): disjoint and together every entry under root."""
    manifest = set(pq.read_table(out / "manifest.parquet", columns=["relpath"]).column("relpath").to_pylist())
    with open(out / "quarantine.csv", newline="", encoding="utf-8") as fh:
        quarantined = {os.path.relpath(row["path"], root.resolve()): row["reason"] for row in csv.DictReader(fh)}
    assert not manifest & set(quarantined)
    assert manifest | set(quarantined) == corpus_entries(root)
    assert all(reason.strip() for reason in quarantined.values())
    return manifest, quarantined


@pytest.mark.timeout(240)
def test_cli_validate_and_evaluate_on_a_fuzzed_corpus(tmp_path, capsys, small_extractor):  # noqa: F811
    from flows.cli import main

    root, gate = tmp_path / "corpus", tmp_path / "gate"
    cases = make_corpus(root, 11)
    before = snapshot(root)

    rc = main(["validate", str(root), "--out", str(gate), "--preset", "tiny"])
    assert rc in (0, 1)                      # mutants outnumber the valid images: the bad fraction fails
    manifest, _ = _gate_accounts_for(root, gate)
    assert {c.relpath for c in cases if c.kind == "valid"} <= manifest

    report = tmp_path / "eval.json"
    for real in (str(root), str(gate / "manifest.parquet")):
        assert main(["evaluate", "--fake", str(root), "--real", real, "--n", "8", "--allow-random-features",
                     "--json", str(report)]) == 0
        inputs = json.loads(report.read_text())["inputs"]
        for side in ("fake", "real") if real == str(root) else ("fake",):
            got = inputs[side]
            assert got["images"] + got["unused"] + len(got["skipped"]) == got["entries"] == len(before)
            assert got["images"] == 8 if side == "fake" else got["images"] >= 13   # 13: 12 valid + folder.png/
            assert all(s["reason"] for s in got["skipped"])
        err = capsys.readouterr().err
        assert "Traceback" not in err and "skipped" in err and "not-a-file" in err

    bad = tmp_path / "bad"                   # only the mutants and the special entries: too few images remain
    make_corpus(bad, 12, n_valid=1, n_mutants=0)
    assert main(["evaluate", "--fake", str(bad), "--real", "digits", "--n", "8", "--allow-random-features"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"transsrgan evaluate: error: fake images {bad}: ") and "expected at least 6" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert snapshot(root) == before


# ---------------------------------------------------------------- slow: more seeds, and the real commands

@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_soak_folder_reading_and_gate(tmp_path, seed):
    from tasks.data_gate import DataGateError, run_data_gate

    root = tmp_path / "corpus"
    cases = make_corpus(root, seed, n_valid=24, n_mutants=160, big_side=4000 if seed % 10 == 0 else 0)
    _check_read(root, cases)
    before = snapshot(root)
    data = DataConfig(min_images=1, max_bad_fraction=1.0, gate_workers=1)
    try:
        run_data_gate(str(root), tmp_path / "gate", data, 16)
    except DataGateError:
        pass
    _gate_accounts_for(root, tmp_path / "gate")
    assert snapshot(root) == before


def _cli(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """`transsrgan ARGS` in a subprocess; a hang fails the test (TimeoutExpired)."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1, 2), (proc.returncode, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_commands_in_subprocesses_on_a_fuzzed_corpus(tmp_path):
    root, gate, home = tmp_path / "corpus", tmp_path / "gate", tmp_path / "home"
    cases = make_corpus(root, 21, n_valid=24, n_mutants=60)
    before = snapshot(root)
    env = {**os.environ, "TRANSSRGAN_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")         # a temporary Prefect server on its own database
    env.pop("PREFECT_API_URL", None)

    proc = _cli(["validate", str(root), "--out", str(gate), "--preset", "tiny"], env, 300)
    assert proc.returncode in (0, 1)
    manifest, _ = _gate_accounts_for(root, gate)

    # evaluate's success path runs in-process above (Inception and FID's 2048x2048 sqrtm cost minutes here);
    # a real process shows the refusal: per-kind lines, then one error line naming the folder
    bad = tmp_path / "bad"
    make_corpus(bad, 22, n_valid=1, n_mutants=0)
    proc = _cli(["evaluate", "--fake", str(bad), "--real", str(gate / "manifest.parquet"), "--n", "8",
                 "--allow-random-features"], env, 300)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith(f"transsrgan evaluate: error: fake "
                                                                            f"images {bad}: "), proc.stderr

    proc = _cli(["train", "--preset", "tiny", "--steps", "2", "--engine", "local", "--data", str(root),
                 "--set", "data.max_bad_fraction=1.0", "--set", "eval.n_samples=8",
                 "--set", 'eval.metrics=["kid", "msssim_diversity"]', "--set", "eval.primary_metric=kid"], env, 900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [trained_on] = list((home / "validation").glob("*/manifest.parquet"))
    trained, _ = _gate_accounts_for(root, trained_on.parent)
    assert {c.relpath for c in cases if c.kind == "valid"} <= trained
    assert snapshot(root) == before
