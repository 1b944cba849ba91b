"""`transsrgan chaos [--json FILE]`: run the fault scenarios on the tiny preset and print their table."""

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="run the fault scenarios (kills, NaNs, outages, full disk) and print their table",
                       description="Runs each fault scenario for real on the tiny preset (SIGKILL of the training "
                                   "run and --resume, a killed Spark Python worker and executor on local-cluster, "
                                   "NaN steps and divergence, an MLflow server that dies mid-run, a full disk "
                                   "during a checkpoint, and the safe defaults) and prints a table: scenario, "
                                   "expected, observed, steps lost, data lost. Exit code 0 only if every scenario "
                                   "held. Takes a few minutes; starts its own Prefect and MLflow servers on "
                                   "127.0.0.1 and stops them.")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON ({'scenarios': [...]})")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--only", metavar="NAMES", help="comma-separated scenario names (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios and what each expects, then exit")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, checkpoints, stores) for inspection")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.cli import require_checkout
    from flows.errors import UsageError
    from models.files import write_atomic

    require_checkout("chaos")
    from chaos import harness

    registry = harness.load_scenarios()
    if args.list:
        for s in registry.values():
            print(f"{s.name}\n    {s.expected}")
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    unknown = sorted(set(names or []) - set(registry))
    if unknown:
        raise UsageError(f"--only: unknown scenario(s) {', '.join(unknown)}; expected some of {', '.join(registry)}")
    from flows.commands.outputs import check_writable

    for flag in ("json", "markdown", "keep"):          # before the scenarios' minutes, not after
        check_writable(getattr(args, flag), f"--{flag}", folder=flag == "keep")
    result = harness.run_chaos(names, workdir=Path(args.keep) if args.keep else None, keep=bool(args.keep))
    md = harness.table(result)
    print("\n" + md)
    if args.json:
        print(f"wrote {harness.write_json(result, Path(args.json))}")
    if args.markdown:
        written = write_atomic(args.markdown, md + "\n")
        print(f"wrote {written}")
    if result["workdir"]:
        print(f"kept the scenarios' folders in {result['workdir']}")
    return 0 if result["held"] else 1
