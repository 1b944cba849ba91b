"""The data gate: Great Expectations 1.x suites over the manifest; quarantine, Parquet manifest, Data Docs, fingerprint."""

# Two suites run on the same manifest DataFrame (one row per entry under the data root):
#   data_gate.files    per-file expectations; their unexpected rows (GX's unexpected_index_list) ARE the quarantine;
#   data_gate.dataset  dataset-level expectations (enough valid images, bad and duplicate fractions); failing one
#                      raises DataGateError so the caller stops before Spark starts.
# Input files are never deleted or modified; every entry ends up in exactly one of manifest.parquet and
# quarantine.csv. Outputs go through models.files.OutputFolder: only the gate's own earlier files are replaced.

import csv
import json
import os
import stat
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from models.config import DataConfig  # noqa: E402
from models.data.gate_report import THUMBS, ReportFile, render_gate_report  # noqa: E402
from models.data.manifest import Entry, build_manifest, duplicates, fingerprint  # noqa: E402
from models.files import OutputFolder, atomic_path, exclusive, write_atomic  # noqa: E402
from models.paths import data_home, user_path  # noqa: E402

MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.csv"
VALIDATION = "validation.json"
DATA_DOCS = "data_docs"
SUMMARY = "summary.html"   # the self-contained page beside the Data Docs (they need a CDN)
GATE = "data-gate"   # the command name the output folder's ledger records
DIGITS_SIDE = 32  # the embedded digits are 28x28 padded to 32x32

# Columns of manifest.parquet (valid files only); `path` is what models.data.load_dataset reads.
MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()), ("relpath", pa.string()), ("sha256", pa.string()), ("format", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("aspect", pa.float64()), ("mode", pa.string()),
    ("channels", pa.int64()), ("bytes", pa.int64()), ("decodes", pa.bool_()), ("mean", pa.float64()),
    ("std", pa.float64()),
])


class DataGateError(RuntimeError):
    """A dataset-level expectation failed; the message names each one with its count. `.result` has the paths."""

    def __init__(self, message: str, result: "GateResult"):
        super().__init__(message)
        self.result = result


@dataclass
class GateResult:
    """What the gate produced; plain str/int/list so it passes between Prefect tasks."""

    source: str
    manifest_path: str
    quarantine_path: str
    validation_json: str
    data_docs_dir: str
    fingerprint: str
    n_files: int
    n_valid: int
    n_quarantined: int
    passed: bool
    failed_expectations: list[str] = field(default_factory=list)  # dataset-level, "name: count"
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # every expectation: suite, check, success, count
    n_duplicates: int = 0        # extra copies of a trained image (quarantined as `duplicate`, not counted as bad)
    excluded: str = ""           # the output folder, when it lies inside the data root (not scanned)
    left_alone: list[str] = field(default_factory=list)  # the user's files beside the outputs, never touched
    summary_html: str = ""       # the offline summary page (works without network, unlike the Data Docs)

    @property
    def n_bad(self) -> int:
        """Quarantined for a reason other than being a duplicate (what data.max_bad_fraction limits)."""
        return self.n_quarantined - self.n_duplicates


# Per-file checks in priority order: the first failing one gives the quarantine code.
# (check, expectation builder(data, resolution)); the reason text comes from _reason().
FILE_CHECKS = (
    ("readable", lambda d, r: gxe.ExpectColumnValuesToBeNull(column="scan_error")),
    ("decodes", lambda d, r: gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
    ("format", lambda d, r: gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(d.allowed_formats))),
    ("width", lambda d, r: gxe.ExpectColumnValuesToBeBetween(column="width", min_value=r)),
    ("height", lambda d, r: gxe.ExpectColumnValuesToBeBetween(column="height", min_value=r)),
    ("aspect", lambda d, r: gxe.ExpectColumnValuesToBeBetween(column="aspect", max_value=d.max_aspect)),
    ("mode", lambda d, r: gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=list(d.allowed_modes))),
    ("not_degenerate", lambda d, r: gxe.ExpectColumnValuesToBeBetween(column="std", min_value=d.min_std,
                                                                       strict_min=True)),
    ("unique", lambda d, r: gxe.ExpectColumnValuesToBeUnique(column="sha256")),
)


def _reason(check: str, row: pd.Series, data: DataConfig, resolution: int) -> str:
    """'code: detail' for a row that failed `check`; the code is stable, the detail names the value."""
    if check == "readable":
        return str(row["scan_error"])
    if check == "decodes":
        return str(row["decode_error"] or "decode-error: unknown")
    if check == "format":
        return f"format: {row['format']} is not one of data.allowed_formats {list(data.allowed_formats)}"
    if check in ("width", "height"):
        return (f"too-small: {int(row['width'])}x{int(row['height'])}, expected both sides >= "
                f"model.resolution ({resolution})")
    if check == "aspect":
        return f"aspect: {row['aspect']:.2f} > data.max_aspect ({data.max_aspect})"
    if check == "mode":
        return f"mode: {row['mode']} is not one of data.allowed_modes {list(data.allowed_modes)}"
    if check == "not_degenerate":
        return f"degenerate: intensity std {row['std']:.2f} <= data.min_std ({data.min_std}); constant or blank"
    raise KeyError(check)


def _frame(entries: list[Entry]) -> pd.DataFrame:
    df = pd.DataFrame([e.record() for e in entries], columns=list(Entry.__dataclass_fields__)[:-1])
    w, h = df["width"].astype("float64"), df["height"].astype("float64")
    df["aspect"] = pd.concat([w, h], axis=1).max(axis=1) / pd.concat([w, h], axis=1).min(axis=1)
    df["decodes"] = df["decodes"].astype(object)  # True / False / None (not attempted: GX skips nulls)
    return df


def _context(docs_dir: Path):
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site("gate", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return ctx


def _validate(ctx, name: str, expectations: list[tuple[str, Any]], df: pd.DataFrame):
    """Run one suite over df; result_format COMPLETE keyed by relpath so Data Docs name the files."""
    asset = ctx.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"data_gate.{name}"))
    for check, exp in expectations:
        exp.meta = {"check": check}
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"data_gate.{name}", data=batch, suite=suite))
    fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": ["relpath"], "partial_unexpected_count": 20}
    return vd.run(batch_parameters={"dataframe": df}, result_format=fmt)


def _quarantine(df: pd.DataFrame, result, data: DataConfig, resolution: int) -> tuple[dict[str, str], set[str]]:
    """(relpath -> reason for every row GX flagged, the relpaths GX's unique expectation flagged).

    Of identical files (GX flags every copy) the first otherwise-valid one by relpath trains; the other copies
    are quarantined as `duplicate`, which counts against data.max_duplicate_fraction, not data.max_bad_fraction.
    """
    failed: dict[str, list[str]] = {}
    dup_rows: set[str] = set()
    for r in result.results:
        check = r.expectation_config.meta["check"]
        for item in r.result.get("unexpected_index_list") or []:
            rel = item["relpath"]
            if check == "unique":
                dup_rows.add(rel)
            else:
                failed.setdefault(rel, []).append(check)
    order = [c for c, _ in FILE_CHECKS]
    rows = df.set_index("relpath", drop=False)
    reasons: dict[str, str] = {}
    for rel, checks in failed.items():
        checks = sorted(set(checks), key=order.index)
        if "width" in checks and "height" in checks:
            checks.remove("height")
        reason = _reason(checks[0], rows.loc[rel], data, resolution)
        if len(checks) > 1:
            reason += f" [also failed: {', '.join(checks[1:])}]"
        reasons[rel] = reason
    candidates = [(rel, rows.loc[rel, "sha256"]) for rel in dup_rows if rel not in reasons]
    for rel, kept in duplicates(candidates).items():
        reasons[rel] = f"duplicate: same sha256 as {kept} (kept; one copy of each image trains)"
    return reasons, dup_rows


def _unique_note(flagged: set[str], reasons: dict[str, str], df: pd.DataFrame) -> str:
    """How GX's count for the unique expectation (every copy) relates to the duplicates quarantined."""
    if not flagged:
        return "passed"
    groups = df.loc[df["relpath"].isin(flagged), "sha256"].nunique()
    dups = sum(reasons.get(rel, "").startswith("duplicate:") for rel in flagged)
    other = sum(rel in reasons and not reasons[rel].startswith("duplicate:") for rel in flagged)
    note = (f"{len(flagged)} file(s) share their bytes with another ({groups} group(s)): "
            f"{len(flagged) - dups - other} kept, one per group; {dups} duplicate(s) quarantined")
    return note + (f"; {other} quarantined for another reason" if other else "")


def _dataset_checks(data: DataConfig) -> list[tuple[str, Any]]:
    return [
        ("files", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        ("min_images", gxe.ExpectColumnSumToBeBetween(column="valid", min_value=data.min_images)),
        ("max_bad_fraction", gxe.ExpectColumnMeanToBeBetween(column="bad", min_value=0.0,
                                                            max_value=data.max_bad_fraction)),
        ("max_duplicate_fraction", gxe.ExpectColumnMeanToBeBetween(column="duplicate", min_value=0.0,
                                                                  max_value=data.max_duplicate_fraction)),
    ]


def _dataset_failure(check: str, n_files: int, n_valid: int, n_dup: int, data: DataConfig) -> str:
    bad = n_files - n_valid - n_dup
    if check == "files":
        return f"files >= 1 (the folder has no files): {n_files}"
    if check == "min_images":
        return f"valid images >= data.min_images ({data.min_images}): {n_valid}"
    if check == "max_duplicate_fraction":
        frac = n_dup / n_files if n_files else float("nan")
        return (f"duplicate fraction <= data.max_duplicate_fraction ({data.max_duplicate_fraction}): {frac:.3f} "
                f"({n_dup} extra copies among {n_files} files)")
    frac = bad / n_files if n_files else float("nan")
    return (f"quarantined fraction (duplicates aside) <= data.max_bad_fraction ({data.max_bad_fraction}): "
            f"{frac:.3f} ({bad} of {n_files})")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so GateResult is plain JSON."""
    return value.item() if hasattr(value, "item") else value


def _write_manifest(valid: pd.DataFrame, path: Path, meta: dict[str, str]) -> None:
    table = pa.Table.from_pandas(valid[MANIFEST_SCHEMA.names].reset_index(drop=True), schema=MANIFEST_SCHEMA,
                                 preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           **{f"transsrgan.{k}".encode(): v.encode() for k, v in meta.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_quarantine(rows: list[tuple[str, str]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows(rows)


def materialise_digits(resolution: int) -> Path:
    """The embedded digits as PNGs under data_home()/datasets/, written once (a marker file says it is complete)."""
    from models.data.export import export_digits

    side = max(DIGITS_SIDE, resolution)
    folder = data_home() / "datasets" / ("digits" if side == DIGITS_SIDE else f"digits-{side}")
    marker = folder.with_name(folder.name + ".complete")  # outside the folder, so it is not validated
    with exclusive(folder.with_name(folder.name + ".lock")):   # a second run waits, then finds it complete
        if not marker.exists():
            n, _ = export_digits(folder, side)
            write_atomic(marker, f"{n}\n")
    return folder


def check_out_dir(root: Path, out_dir: Path) -> None:
    """ValueError unless the output folder keeps clear of the data: not the data folder, not a folder above it.

    A folder inside the data root is fine (the scan skips it); a manifest source must not be replaced by its check.
    """
    root, out = Path(root).resolve(), user_path(out_dir).resolve()
    if root.is_file():
        if out / MANIFEST == root:
            raise ValueError(f"{out_dir} holds the manifest being checked ({root}), which the gate's own "
                             f"{MANIFEST} would replace; choose another folder")
        return
    if out == root:
        raise ValueError(f"{out_dir} is the data folder itself; the outputs would sit among the images (choose "
                         "another folder, or one inside it, which the scan skips)")
    if out in root.parents:
        raise ValueError(f"{out_dir} holds the data folder {root}; choose a folder beside it or inside it")


def _manifest_entries(path: Path) -> list[Entry]:
    """The rows of a gate's manifest.parquet as entries, re-checked cheaply: each file still there, same size.

    The measurements (format, size, mode, statistics, sha256) are reused, so the per-file suite runs again under
    the current settings without decoding anything; a missing or resized file is quarantined.
    """
    meta = pq.read_schema(path).metadata or {}
    if b"transsrgan.fingerprint" not in meta:
        raise ValueError(f"data.source: {path} is not a {MANIFEST} written by `transsrgan validate`")
    entries = []
    for row in pq.read_table(path).to_pylist():
        e = Entry(row["path"], row["relpath"], decodes=True, **{k: row[k] for k in (
            "sha256", "bytes", "format", "width", "height", "mode", "channels", "mean", "std")})
        try:
            st = os.lstat(e.path)
        except FileNotFoundError:
            e.scan_error = "missing: listed in the manifest but no longer on disk; validate the folder again"
        else:
            if not stat.S_ISREG(st.st_mode):
                e.scan_error = "changed: no longer a regular file; validate the folder again"
            elif st.st_size != e.bytes:
                e.scan_error = (f"changed: {st.st_size} bytes now, {e.bytes} in the manifest; validate the "
                                "folder again")
        if e.scan_error:
            e.decodes = None
        entries.append(e)
    return sorted(entries, key=lambda e: e.relpath)


def _place_docs(folder: OutputFolder, rendered: Path) -> None:
    """Copy the Data Docs tree GX rendered privately into DIR/data_docs/, all or nothing, under the folder's rule."""
    files = sorted(p for p in rendered.rglob("*") if p.is_file())
    rels = [f"{DATA_DOCS}/{p.relative_to(rendered).as_posix()}" for p in files]
    folder.check(*rels)
    for rel, src in zip(rels, files):
        folder.copy(rel, src, fsync=False)      # a page is re-rendered by the next run; no need to wait for disk


def _summary_page(result: GateResult, df: pd.DataFrame, reasons: dict[str, str], data: DataConfig) -> str:
    """The offline summary (models.data.gate_report): thumbnails only of files the gate decoded itself."""
    rows = df.set_index("relpath")
    decoded = rows["decodes"].eq(True) & rows["scan_error"].isna()
    quarantined = [ReportFile(rel, rows.at[rel, "path"], reason, bool(decoded[rel])) for rel, reason in reasons.items()]
    valid = df[df["valid"] == 1]
    spread = valid.iloc[::max(1, len(valid) // THUMBS)]          # from across the dataset, not its first folder
    accepted = [ReportFile(r.relpath, r.path, "", True) for r in spread.itertuples()]
    counts = [("files", result.n_files), ("valid (train)", result.n_valid), ("quarantined", result.n_quarantined),
              ("bad", result.n_bad), ("duplicate copies", result.n_duplicates)]
    return render_gate_report(source=result.source, passed=result.passed, counts=counts,
                              failed=result.failed_expectations, checks=result.checks, quarantined=quarantined,
                              accepted=accepted, fingerprint=result.fingerprint, max_pixels=data.max_pixels,
                              data_docs_href=f"{DATA_DOCS}/index.html")


def run_data_gate(source: str, out_dir: Path, data: DataConfig, resolution: int) -> GateResult:
    """Validate `source` ('digits', an image folder or a gate's manifest.parquet); write the gate's outputs.

    Writes manifest, quarantine, validation JSON, Data Docs and the offline summary into `out_dir`, replacing only
    the gate's own earlier files there (models.files.OutputFolder). Raises DataGateError when a dataset-level expectation fails
    (after writing every output); FileNotFoundError / NotADirectoryError when `source` is missing or a plain file;
    ValueError when `out_dir` is, or holds, the data; ForeignFileError when an output path holds a file the project
    did not write; OSError when `out_dir` cannot be created.
    """
    root = materialise_digits(resolution) if source == "digits" else user_path(source).resolve()
    if not root.exists():
        raise FileNotFoundError(f"data.source: path does not exist: {root}")
    from_manifest = root.is_file() and root.suffix == ".parquet"
    check_out_dir(root, out_dir)
    out_dir = user_path(out_dir).resolve()
    with OutputFolder(out_dir, GATE) as folder:
        folder.check(MANIFEST, QUARANTINE, VALIDATION, SUMMARY)  # refuse before the (long) scan, not after it
        inside = not from_manifest and root in out_dir.parents
        entries = _manifest_entries(root) if from_manifest else build_manifest(
            root, workers=data.gate_workers, max_pixels=data.max_pixels, exclude=out_dir if inside else None)
        df = _frame(entries)
        with tempfile.TemporaryDirectory(prefix="transsrgan-docs-") as rendered:
            ctx = _context(Path(rendered))
            files_result = _validate(ctx, "files", [(c, build(data, resolution)) for c, build in FILE_CHECKS], df)
            reasons, flagged = _quarantine(df, files_result, data, resolution)
            df["quarantined"] = df["relpath"].isin(reasons).astype("int64")
            df["duplicate"] = df["relpath"].map(lambda rel: reasons.get(rel, "").startswith("duplicate:"))
            df["duplicate"] = df["duplicate"].astype("int64")
            df["bad"] = df["quarantined"] - df["duplicate"]
            df["valid"] = 1 - df["quarantined"]
            dataset_result = _validate(ctx, "dataset", _dataset_checks(data),
                                       df[["relpath", "valid", "bad", "duplicate"]])
            ctx.build_data_docs(site_names=["gate"])
            _place_docs(folder, Path(rendered))

        valid = df[df["valid"] == 1]
        n_files, n_valid, n_dup = len(df), len(valid), int(df["duplicate"].sum())
        settings = {"resolution": resolution, "min_std": data.min_std, "max_aspect": data.max_aspect,
                    "max_pixels": data.max_pixels, "allowed_formats": list(data.allowed_formats),
                    "allowed_modes": list(data.allowed_modes)}
        fp = fingerprint(valid["sha256"].tolist(), settings)
        failed = [_dataset_failure(r.expectation_config.meta["check"], n_files, n_valid, n_dup, data)
                  for r in dataset_result.results if not r.success]
        checks = [{"suite": suite, "check": r.expectation_config.meta["check"],
                   "expectation": r.expectation_config.type, "success": bool(r.success),
                   "unexpected_count": int(r.result.get("unexpected_count") or 0),
                   "observed_value": _plain(r.result.get("observed_value")),
                   "limits": {k: _plain(v) for k, v in r.expectation_config.kwargs.items()
                              if k not in ("column", "batch_id", "result_format") and v is not None}}
                  for suite, res in (("files", files_result), ("dataset", dataset_result)) for r in res.results]
        for c in checks:
            if c["check"] == "unique":
                c["note"] = _unique_note(flagged, reasons, df)
        by_reason = Counter(reason.split(":", 1)[0] for reason in reasons.values())

        manifest_path, quarantine_path = folder.claim(MANIFEST), folder.claim(QUARANTINE)
        source_meta = str(root) if not from_manifest else (pq.read_schema(root).metadata or {}).get(
            b"transsrgan.source", str(root).encode()).decode()
        _write_manifest(valid, manifest_path, {"fingerprint": fp, "source": source_meta,
                                               "settings": json.dumps(settings)})
        paths = df.set_index("relpath")["path"]
        _write_quarantine([(paths[rel], reason) for rel, reason in sorted(reasons.items())], quarantine_path)
        result = GateResult(
            source=str(root), manifest_path=str(manifest_path), quarantine_path=str(quarantine_path),
            validation_json=str(out_dir / VALIDATION), data_docs_dir=str(out_dir / DATA_DOCS), fingerprint=fp,
            n_files=n_files, n_valid=n_valid, n_quarantined=len(reasons), passed=not failed,
            failed_expectations=failed, quarantined_by_reason=dict(sorted(by_reason.items())), checks=checks,
            n_duplicates=n_dup, excluded=str(out_dir) if inside else "", left_alone=folder.foreign(),
            summary_html=str(out_dir / SUMMARY))
        report = {"success": result.passed, "summary": asdict(result), "settings": settings,
                  "suites": {"files": files_result.to_json_dict(), "dataset": dataset_result.to_json_dict()}}
        folder.write(VALIDATION, json.dumps(report, indent=2, default=str))
        folder.write(SUMMARY, _summary_page(result, df, reasons, data))
    if failed:
        raise DataGateError(f"data gate failed for {root}: {'; '.join(failed)} "
                            f"(see {quarantine_path} and {out_dir / SUMMARY})", result)
    return result
