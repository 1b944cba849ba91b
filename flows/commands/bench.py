"""`transsrgan bench speedup`: DFAGD against plain PyTorch and DDP; other bench sub-commands plug in here.

Extension hook: if flows/commands/bench_quality.py exists, its register(bench_subparsers) adds
`transsrgan bench quality` (any module named in BENCH_MODULES is tried the same way).
"""

import argparse
import importlib
import json
from pathlib import Path

BENCH_MODULES = ("bench_quality",)


def _worker_list(text: str) -> tuple[int, ...]:
    try:
        ns = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2, got {text!r}") from None
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts >= 1, got {text!r}")
    return ns


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
    s.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo", help="model/batch preset (default demo)")
    s.add_argument("--steps", type=int, default=10, metavar="N", help="timed iterations per run (default 10)")
    s.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed iterations first (default 2)")
    s.add_argument("--spark-master", metavar="URL", help="spark.master (default local[max workers])")
    s.add_argument("--threads-per-worker", type=int, default=1, metavar="T", help="spark.threads_per_worker")
    s.add_argument("--no-ddp", action="store_true", help="skip the TorchDistributor DDP run")
    s.add_argument("--json", metavar="FILE", help="write the result JSON here")
    s.add_argument("--markdown", metavar="FILE", help="write the Markdown table here")
    s.set_defaults(func=run_speedup)
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(f"flows.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flows.commands.{name}":
                continue
            raise
        module.register(bench_sub)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])


def run_speedup(args: argparse.Namespace) -> int:
    from flows.errors import UsageError

    if args.steps < 1:
        raise UsageError(f"--steps: expected >= 1, got {args.steps}")
    if args.warmup < 0:
        raise UsageError(f"--warmup: expected >= 0, got {args.warmup}")
    if args.threads_per_worker < 1:
        raise UsageError(f"--threads-per-worker: expected >= 1, got {args.threads_per_worker}")
    from spark_training.bench_speedup import bench_speedup, markdown

    result = bench_speedup(args.preset, args.workers, args.steps, args.warmup, args.spark_master,
                           args.threads_per_worker, ddp=not args.no_ddp)
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    _log_mlflow(result)
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
