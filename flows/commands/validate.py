"""`transsrgan validate PATH --out DIR [--json FILE]`: run the data gate and print its summary table.

Exit codes: 0 the dataset passes; 1 a dataset-level expectation fails; 2 bad usage (missing path, bad flags, an
output folder that is or holds the data, an output path that holds a file transsrgan did not write).
"""

import argparse
from pathlib import Path

from flows.commands.outputs import REFUSAL, check_report, check_writable, write_report
from models.paths import user_path

COMMAND = "validate"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="run the data gate (Great Expectations) over an image folder",
                       description="Validate an image folder (recursive), 'digits', or a manifest.parquet an earlier "
                                   "run wrote, with the data gate. Writes DIR/manifest.parquet, DIR/quarantine.csv "
                                   "(path, reason), DIR/validation.json, DIR/summary.html (a self-contained page that "
                                   "reads offline) and DIR/data_docs/ (GX Data Docs). Input files are "
                                   "never modified. DIR may hold other files: a rerun replaces only the gate's own "
                                   "earlier outputs (listed in DIR/.transsrgan-outputs.json), leaves the rest alone "
                                   "and says so; a file the gate would have to replace but did not write stops it "
                                   "(exit 2). Exit 0 if the dataset passes, 1 if a dataset-level expectation "
                                   "fails, 2 for bad usage.")
    p.add_argument("path", metavar="PATH", help="an image folder, 'digits' for the embedded dataset, or a "
                                                "manifest.parquet written by `transsrgan validate`")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output folder (created if missing); not PATH itself nor a folder above it (a folder "
                        "inside PATH is fine: the scan skips it)")
    p.add_argument("--json", metavar="FILE", help=f"also write the summary (counts, reasons, paths) as JSON; {REFUSAL}")
    p.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo",
                   help="config preset the gate settings start from (default demo)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of config overrides (data.* fields)")
    p.add_argument("--resolution", type=int, metavar="N", help="model.resolution: minimum width and height")
    p.add_argument("--min-images", type=int, metavar="N", help="data.min_images: fewer valid images fails")
    p.add_argument("--max-bad-fraction", type=float, metavar="X",
                   help="data.max_bad_fraction: a larger fraction of quarantined files (duplicates aside) fails")
    p.add_argument("--max-duplicate-fraction", type=float, metavar="X",
                   help="data.max_duplicate_fraction: a larger fraction of extra copies of an image fails")
    p.add_argument("--max-aspect", type=float, metavar="X", help="data.max_aspect: larger aspect ratios are quarantined")
    p.add_argument("--gate-workers", type=int, metavar="N", help="data.gate_workers: manifest processes (0 = all cores)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from flows.errors import UsageError
    from models.config import ConfigError, resolve_config

    overrides = {key: value for key, value in (
        ("model.resolution", args.resolution), ("data.min_images", args.min_images),
        ("data.max_bad_fraction", args.max_bad_fraction), ("data.max_duplicate_fraction", args.max_duplicate_fraction),
        ("data.max_aspect", args.max_aspect), ("data.gate_workers", args.gate_workers)) if value is not None}
    try:
        return resolve_config(args.preset, overrides, args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def summary_table(result) -> str:
    """The table the CLI prints: counts, quarantine reasons, expectations, fingerprint, outputs."""
    rows = [("source", result.source), ("files", result.n_files),
            ("valid", f"{result.n_valid} unique image(s); these train"),
            ("quarantined", f"{result.n_quarantined} (bad: {result.n_bad}, duplicate copies: {result.n_duplicates})")]
    rows += [(f"  {code}", n) for code, n in result.quarantined_by_reason.items()]
    for c in result.checks:  # per-file expectations flag rows (-> quarantine); dataset ones pass or fail
        if c["suite"] == "files":
            status = c.get("note") or ("passed" if c["success"] else f"{c['unexpected_count']} file(s) flagged")
        else:
            status = f"{'passed' if c['success'] else 'FAILED'} (observed {c['observed_value']})"
        rows.append((f"expect {c['suite']}: {c['check']}", status))
    rows += [("dataset", "PASSED" if result.passed else "FAILED"), ("fingerprint", result.fingerprint),
             ("manifest", result.manifest_path), ("quarantine", result.quarantine_path),
             ("validation", result.validation_json), ("summary", f"{result.summary_html} (open this one; offline)"),
             ("data docs", f"{Path(result.data_docs_dir) / 'index.html'} (GX; styles and lists need network access)")]
    if result.excluded:
        rows.append(("not scanned", f"{result.excluded} (the output folder, inside PATH)"))
    if result.left_alone:
        names = ", ".join(result.left_alone[:5]) + (f" and {len(result.left_alone) - 5} more"
                                                    if len(result.left_alone) > 5 else "")
        rows.append(("left alone", f"{len(result.left_alone)} file(s) in the output folder that transsrgan did "
                                   f"not write: {names}"))
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows)


def _check_paths(args: argparse.Namespace, resolution: int) -> Path:
    """PATH exists; --out is a folder that can be created and keeps clear of the data; --json may be written."""
    from flows.errors import UsageError
    from tasks.data_gate import check_out_dir, materialise_digits

    if args.path == "digits":
        root = materialise_digits(resolution)
    else:
        root = user_path(args.path)
        if not root.exists():
            raise UsageError(f"PATH does not exist: {args.path} (expected an image folder or 'digits')")
        if not (root.is_dir() or root.suffix == ".parquet"):
            raise UsageError(f"PATH is not a folder: {args.path} (expected an image folder, 'digits' or a "
                             "manifest.parquet)")
    check_writable(args.out, "--out", folder=True)
    out = user_path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: not a folder: {args.out}")
    try:
        check_out_dir(root, out)
        out.mkdir(parents=True, exist_ok=True)
    except ValueError as exc:
        raise UsageError(f"--out: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--out: cannot create the folder {args.out}: {exc.strerror or exc}") from None
    check_report(args.json, "--json", COMMAND)
    return out


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from flows.errors import UsageError
    from models.files import ForeignFileError

    cfg = _config(args)
    out = _check_paths(args, cfg.model.resolution)

    from tasks.data_gate import DataGateError, run_data_gate

    try:
        result, code, error = run_data_gate(args.path, out, cfg.data, cfg.model.resolution), 0, None
    except DataGateError as exc:
        result, code, error = exc.result, 1, str(exc)
    except ForeignFileError as exc:
        raise UsageError(f"--out: {exc}") from None
    except ValueError as exc:     # a .parquet that is not a gate's manifest
        raise UsageError(f"PATH: {exc}") from None
    print(summary_table(result))
    if args.json:
        print(f"wrote {write_report(args.json, json.dumps(asdict(result), indent=2, default=str), '--json', COMMAND)}")
    if error:
        print(f"transsrgan validate: {error}")
    return code
