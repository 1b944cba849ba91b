"""`transsrgan bench`: `speedup` (DFAGD against plain PyTorch and DDP) and `cluster` here, `quality` in bench_quality.py.

The measuring code lives in benchmarks/, a development package beside flows/ in a source checkout: never
installed, never shipped to Spark, and imported only inside the handlers (after require_checkout()).
"""

import argparse
import json

from flows.commands import bench_quality
from flows.commands.outputs import REFUSAL, check_report, write_report


def _worker_list(text: str) -> tuple[int, ...]:
    try:
        ns = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2, got {text!r}") from None
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts >= 1, got {text!r}")
    return ns


def _rate_list(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated Gbit/s such as 1,10, got {text!r}") from None
    if not rates or not all(0 < r < 1e4 for r in rates):       # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected rates in Gbit/s above 0 and below 10000, got {text!r}")
    return rates


def _mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(x.strip() for x in text.split(",") if x.strip())
    if not modes or set(modes) - {"star", "allreduce"}:
        raise argparse.ArgumentTypeError(f"expected star and/or allreduce, got {text!r}")
    return modes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: speedup (DFAGD vs PyTorch vs DDP), quality",
                       description="Benchmarks. `bench speedup` measures DFAGD's speed against its peers.")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCH", parser_class=type(p))
    s = bench_sub.add_parser("speedup", help="DFAGD 1 vs N workers vs plain PyTorch vs TorchDistributor DDP",
                             description="In one run, on the same model, global batch and data: plain PyTorch "
                                         "(all the cores), DFAGD with 1 and N workers, DDP with N processes. "
                                         "Prints a table and a cost-model prediction for bigger clusters.")
    s.add_argument("--workers", type=_worker_list, default=(1, 2), metavar="N,M",
                   help="DFAGD worker counts to measure (1 is always included); default 1,2")
    s.add_argument("--preset", choices=["tiny", "demo", "thesis32", "quality32", "full"], default="demo",
                   help="model/batch preset (default demo; thesis32 is the thesis' recipe at the demo's size)")
    s.add_argument("--reductions", type=_mode_list, default=("star", "allreduce"), metavar="M,N",
                   help="spark.reduction values to time DFAGD with, side by side (default star,allreduce; the "
                        "ratios without a suffix are star's)")
    s.add_argument("--steps", type=int, default=10, metavar="N", help="timed iterations per run (default 10)")
    s.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed iterations first (default 2)")
    s.add_argument("--spark-master", metavar="URL", help="spark.master (default local[max workers])")
    s.add_argument("--threads-per-worker", type=int, default=1, metavar="T", help="spark.threads_per_worker")
    s.add_argument("--no-ddp", action="store_true", help="skip the TorchDistributor DDP run")
    s.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="any config field for every run, e.g. --set train.precision=bf16 (JSON values); "
                        "repeatable. DFAGD-N is then also timed with train.compile=off and train.precision=fp32, "
                        "side by side (vs_previous_defaults)")
    s.add_argument("--json", metavar="FILE", help=f"write the result JSON here; {REFUSAL}")
    s.add_argument("--markdown", metavar="FILE", help=f"write the Markdown table here; {REFUSAL}")
    s.set_defaults(func=run_speedup)
    c = bench_sub.add_parser("cluster", help="star vs all-reduce DFAGD on a Spark standalone cluster emulated in network "
                                             "namespaces (root)",
                             description="Starts a Spark master and N workers, each in its own Linux network namespace "
                                         "with a tc-shaped link, runs DFAGD with spark.reduction star and allreduce, "
                                         "counts every host's bytes, fits the cost model and removes everything it "
                                         "made. Needs root.")
    c.add_argument("--workers", type=_worker_list, default=(2, 4, 8), metavar="N,M", help="default 2,4,8")
    c.add_argument("--gbit", type=_rate_list, default=(1.0, 10.0), metavar="G,H", help="link rates, default 1,10")
    c.add_argument("--modes", type=_mode_list, default=("star", "allreduce"), metavar="M,N",
                   help="spark.reduction values, default star,allreduce")
    c.add_argument("--preset", choices=["tiny", "demo", "thesis32", "full"], default="demo",
                   help="model/batch preset (default demo; thesis32: the thesis' recipe, 4x the demo's gradient bytes)")
    c.add_argument("--steps", type=int, default=8, metavar="N", help="timed iterations per run (default 8)")
    c.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed iterations first (default 2)")
    c.add_argument("--json", metavar="FILE", help=f"write the result JSON here; {REFUSAL}")
    c.add_argument("--markdown", metavar="FILE", help=f"write the Markdown tables here; {REFUSAL}")
    c.add_argument("--figure", metavar="FILE.png", help=f"measured vs predicted exchange; {REFUSAL}")
    c.set_defaults(func=run_cluster)
    bench_quality.register(bench_sub)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])


def run_speedup(args: argparse.Namespace) -> int:
    from flows.errors import UsageError

    if args.steps < 1:
        raise UsageError(f"--steps: expected >= 1, got {args.steps}")
    if args.warmup < 0:
        raise UsageError(f"--warmup: expected >= 0, got {args.warmup}")
    if args.threads_per_worker < 1:
        raise UsageError(f"--threads-per-worker: expected >= 1, got {args.threads_per_worker}")
    from flows.cli import parse_set, require_checkout

    overrides = parse_set(args.set)
    check_report(args.json, "--json", "bench speedup")         # refuse a user's file before the long part runs
    check_report(args.markdown, "--markdown", "bench speedup")
    require_checkout("benchmarks")
    from benchmarks.speedup import bench_speedup, markdown

    result = bench_speedup(args.preset, args.workers, args.steps, args.warmup, args.spark_master,
                           args.threads_per_worker, ddp=not args.no_ddp, overrides=overrides,
                           reductions=args.reductions)
    _report(result, markdown(result), args, "bench speedup")
    _log_mlflow(result)
    return 0


def _report(result: dict, table: str, args: argparse.Namespace, command: str) -> None:
    """Print the Markdown table; write it and the JSON where --markdown / --json ask (never over a user's file)."""
    print(table)
    if args.json:
        write_report(args.json, json.dumps(result, indent=2), "--json", command)
    if args.markdown:
        write_report(args.markdown, table, "--markdown", command)


def run_cluster(args: argparse.Namespace) -> int:
    import os

    from flows.cli import require_checkout
    from flows.errors import UsageError

    if args.steps < 1 or args.warmup < 0:
        raise UsageError(f"--steps: expected >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if os.geteuid() != 0:
        raise UsageError("bench cluster: needs root (network namespaces, veth links, tc); nothing was started")
    for value, flag in ((args.json, "--json"), (args.markdown, "--markdown"), (args.figure, "--figure")):
        check_report(value, flag, "bench cluster")
    require_checkout("benchmarks")
    from benchmarks.cluster import SBIN, bench_cluster, figure, markdown, missing_tools

    if missing_tools():
        raise UsageError(f"bench cluster: needs iproute2's {' and '.join(missing_tools())} (not on PATH or in "
                         f"{', '.join(SBIN)}); nothing was started")

    result = bench_cluster(args.preset, args.workers, args.gbit, args.modes, args.warmup, args.steps)
    _report(result, markdown(result), args, "bench cluster")
    if args.figure:
        figure(result, args.figure)
    return 0


def _log_mlflow(result: dict) -> None:
    """Ratios to the active MLflow run, if any (speedup_vs_1_worker, efficiency; suffixed by N when N > 2)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    for n, sp in result["speedup"].items():
        suffix = "" if len(result["speedup"]) == 1 else f"_{n}"
        mlflow.log_metric(f"speedup_vs_1_worker{suffix}", sp)
        mlflow.log_metric(f"efficiency{suffix}", result["efficiency"][n])
        if n in result["vs_torch"]:
            mlflow.log_metric(f"speedup_vs_torch{suffix}", result["vs_torch"][n])
        if n in result["vs_ddp"]:
            mlflow.log_metric(f"speedup_vs_ddp{suffix}", result["vs_ddp"][n])
