"""`transsrgan validate PATH --out DIR [--json FILE]`: run the data gate and print its summary table.

Exit codes: 0 the dataset passes; 1 a dataset-level expectation fails; 2 bad usage (missing path, bad flags).
"""

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="run the data gate (Great Expectations) over an image folder",
                       description="Validate an image folder (recursive) or 'digits' with the data gate. Writes "
                                   "DIR/manifest.parquet, DIR/quarantine.csv (path, reason), DIR/validation.json "
                                   "and DIR/data_docs/ (HTML). Files are never modified. Exit 0 if the dataset "
                                   "passes, 1 if a dataset-level expectation fails, 2 for bad usage.")
    p.add_argument("path", metavar="PATH", help="an image folder, or 'digits' for the embedded dataset")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created if missing)")
    p.add_argument("--json", metavar="FILE", help="also write the summary (counts, reasons, paths) as JSON")
    p.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo",
                   help="config preset the gate settings start from (default demo)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of config overrides (data.* fields)")
    p.add_argument("--resolution", type=int, metavar="N", help="model.resolution: minimum width and height")
    p.add_argument("--min-images", type=int, metavar="N", help="data.min_images: fewer valid images fails")
    p.add_argument("--max-bad-fraction", type=float, metavar="X",
                   help="data.max_bad_fraction: a larger quarantined fraction fails")
    p.add_argument("--max-aspect", type=float, metavar="X", help="data.max_aspect: larger aspect ratios are quarantined")
    p.add_argument("--gate-workers", type=int, metavar="N", help="data.gate_workers: manifest processes (0 = all cores)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from flows.errors import UsageError
    from models.config import ConfigError, resolve_config

    overrides = {key: value for key, value in (
        ("model.resolution", args.resolution), ("data.min_images", args.min_images),
        ("data.max_bad_fraction", args.max_bad_fraction), ("data.max_aspect", args.max_aspect),
        ("data.gate_workers", args.gate_workers)) if value is not None}
    try:
        return resolve_config(args.preset, overrides, args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def summary_table(result) -> str:
    """The table the CLI prints: counts, quarantine reasons, expectations, fingerprint, outputs."""
    rows = [("source", result.source), ("files", result.n_files), ("valid", result.n_valid),
            ("quarantined", result.n_quarantined)]
    rows += [(f"  {code}", n) for code, n in result.quarantined_by_reason.items()]
    for c in result.checks:  # per-file expectations flag rows (-> quarantine); dataset ones pass or fail
        if c["suite"] == "files":
            status = "passed" if c["success"] else f"{c['unexpected_count']} file(s) flagged"
        else:
            status = f"{'passed' if c['success'] else 'FAILED'} (observed {c['observed_value']})"
        rows.append((f"expect {c['suite']}: {c['check']}", status))
    rows += [("dataset", "PASSED" if result.passed else "FAILED"), ("fingerprint", result.fingerprint),
             ("manifest", result.manifest_path), ("quarantine", result.quarantine_path),
             ("validation", result.validation_json), ("data docs", str(Path(result.data_docs_dir) / "index.html"))]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from flows.errors import UsageError

    if args.path != "digits":
        path = Path(args.path).expanduser()
        if not path.exists():
            raise UsageError(f"PATH does not exist: {args.path} (expected an image folder or 'digits')")
        if not path.is_dir():
            raise UsageError(f"PATH is not a folder: {args.path} (expected an image folder or 'digits')")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: not a folder: {args.out}")
    cfg = _config(args)

    from tasks.data_gate import DataGateError, run_data_gate

    try:
        result, code, error = run_data_gate(args.path, out, cfg.data, cfg.model.resolution), 0, None
    except DataGateError as exc:
        result, code, error = exc.result, 1, str(exc)
    print(summary_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2, default=str))
    if error:
        print(f"transsrgan validate: {error}")
    return code
