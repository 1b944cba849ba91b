"""The data gate: a Great Expectations 1.x suite over the manifest; quarantine, Parquet manifest, Data Docs, fingerprint.

Two suites run on the same manifest DataFrame (one row per entry under the data root):
  data_gate.files    per-file expectations; their unexpected rows (GX's unexpected_index_list) ARE the quarantine;
  data_gate.dataset  dataset-level expectations (enough valid images, bad fraction); failing one raises DataGateError
                     so the caller stops before Spark starts.
Files are never deleted or modified; every entry ends up in exactly one of manifest.parquet and quarantine.csv.
"""

import csv
import json
import os
import shutil
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
from models.data.manifest import Entry, build_manifest, fingerprint  # noqa: E402
from models.paths import data_home  # noqa: E402

MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.csv"
VALIDATION = "validation.json"
DATA_DOCS = "data_docs"
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


def _quarantine(df: pd.DataFrame, result, data: DataConfig, resolution: int) -> dict[str, str]:
    """relpath -> reason for every row GX flagged; duplicates keep the first (by relpath) otherwise-valid copy."""
    failed: dict[str, list[str]] = {}
    dup_rows: list[str] = []
    for r in result.results:
        check = r.expectation_config.meta["check"]
        for item in r.result.get("unexpected_index_list") or []:
            rel = item["relpath"]
            if check == "unique":
                dup_rows.append(rel)
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
    kept: dict[str, str] = {}
    for rel in sorted(set(dup_rows)):
        if rel in reasons:
            continue
        sha = rows.loc[rel, "sha256"]
        if sha in kept:
            reasons[rel] = f"duplicate: same sha256 as {kept[sha]} (kept)"
        else:
            kept[sha] = rel
    return reasons


def _dataset_checks(data: DataConfig) -> list[tuple[str, Any]]:
    return [
        ("files", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        ("min_images", gxe.ExpectColumnSumToBeBetween(column="valid", min_value=data.min_images)),
        ("max_bad_fraction", gxe.ExpectColumnMeanToBeBetween(column="quarantined", min_value=0.0,
                                                            max_value=data.max_bad_fraction)),
    ]


def _dataset_failure(check: str, n_files: int, n_valid: int, data: DataConfig) -> str:
    bad = n_files - n_valid
    if check == "files":
        return f"files >= 1 (the folder has no files): {n_files}"
    if check == "min_images":
        return f"valid images >= data.min_images ({data.min_images}): {n_valid}"
    frac = bad / n_files if n_files else float("nan")
    return f"quarantined fraction <= data.max_bad_fraction ({data.max_bad_fraction}): {frac:.3f} ({bad} of {n_files})"


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so GateResult is plain JSON."""
    return value.item() if hasattr(value, "item") else value


def _write_manifest(valid: pd.DataFrame, path: Path, meta: dict[str, str]) -> None:
    table = pa.Table.from_pandas(valid[MANIFEST_SCHEMA.names].reset_index(drop=True), schema=MANIFEST_SCHEMA,
                                 preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           **{f"transsrgan.{k}".encode(): v.encode() for k, v in meta.items()}})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_quarantine(rows: list[tuple[str, str]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows(rows)
    os.replace(tmp, path)


def materialise_digits(resolution: int) -> Path:
    """The embedded digits as PNGs under data_home()/datasets/, written once (a marker file says it is complete)."""
    from models.data.export import export_digits

    side = max(DIGITS_SIDE, resolution)
    folder = data_home() / "datasets" / ("digits" if side == DIGITS_SIDE else f"digits-{side}")
    marker = folder.with_name(folder.name + ".complete")  # outside the folder, so it is not validated
    if not marker.exists():
        n, _ = export_digits(folder, side)
        marker.write_text(f"{n}\n")
    return folder


def run_data_gate(source: str, out_dir: Path, data: DataConfig, resolution: int) -> GateResult:
    """Validate `source` ('digits' or an image folder); write manifest, quarantine, validation JSON, Data Docs.

    Raises DataGateError when a dataset-level expectation fails (after writing every output), and
    FileNotFoundError / NotADirectoryError when `source` is not a folder.
    """
    root = materialise_digits(resolution) if source == "digits" else Path(source).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = build_manifest(root, workers=data.gate_workers, max_pixels=data.max_pixels, exclude=out_dir)
    df = _frame(entries)
    docs_dir = out_dir / DATA_DOCS
    shutil.rmtree(docs_dir, ignore_errors=True)
    ctx = _context(docs_dir)

    files_result = _validate(ctx, "files", [(c, build(data, resolution)) for c, build in FILE_CHECKS], df)
    reasons = _quarantine(df, files_result, data, resolution)
    df["quarantined"] = df["relpath"].isin(reasons).astype("int64")
    df["valid"] = 1 - df["quarantined"]
    dataset_result = _validate(ctx, "dataset", _dataset_checks(data), df[["relpath", "valid", "quarantined"]])
    ctx.build_data_docs(site_names=["gate"])

    valid = df[df["valid"] == 1]
    n_files, n_valid = len(df), len(valid)
    settings = {"resolution": resolution, "min_std": data.min_std, "max_aspect": data.max_aspect,
                "max_pixels": data.max_pixels, "allowed_formats": list(data.allowed_formats),
                "allowed_modes": list(data.allowed_modes)}
    fp = fingerprint(valid["sha256"].tolist(), settings)
    failed = [_dataset_failure(r.expectation_config.meta["check"], n_files, n_valid, data)
              for r in dataset_result.results if not r.success]
    checks = [{"suite": suite, "check": r.expectation_config.meta["check"], "expectation": r.expectation_config.type,
               "success": bool(r.success), "unexpected_count": int(r.result.get("unexpected_count") or 0),
               "observed_value": _plain(r.result.get("observed_value"))}
              for suite, res in (("files", files_result), ("dataset", dataset_result)) for r in res.results]
    by_reason = Counter(reason.split(":", 1)[0] for reason in reasons.values())

    manifest_path, quarantine_path = out_dir / MANIFEST, out_dir / QUARANTINE
    _write_manifest(valid, manifest_path, {"fingerprint": fp, "source": str(root), "settings": json.dumps(settings)})
    paths = df.set_index("relpath")["path"]
    _write_quarantine([(paths[rel], reason) for rel, reason in sorted(reasons.items())], quarantine_path)
    result = GateResult(
        source=str(root), manifest_path=str(manifest_path), quarantine_path=str(quarantine_path),
        validation_json=str(out_dir / VALIDATION), data_docs_dir=str(docs_dir), fingerprint=fp,
        n_files=n_files, n_valid=n_valid, n_quarantined=len(reasons), passed=not failed,
        failed_expectations=failed, quarantined_by_reason=dict(sorted(by_reason.items())), checks=checks)
    report = {"success": result.passed, "summary": asdict(result), "settings": settings,
              "suites": {"files": files_result.to_json_dict(), "dataset": dataset_result.to_json_dict()}}
    tmp = out_dir / (VALIDATION + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, out_dir / VALIDATION)
    if failed:
        raise DataGateError(f"data gate failed for {root}: {'; '.join(failed)} "
                            f"(see {quarantine_path} and {docs_dir / 'index.html'})", result)
    return result
