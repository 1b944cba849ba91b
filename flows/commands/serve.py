"""`transsrgan serve [--cron EXPR]`: serve the training deployments on a Prefect server, with retraining cron."""

import argparse

DEFAULT_CRON = "0 3 * * *"   # keep equal to flows.serve.DEFAULT_CRON (imported lazily to keep --help fast)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the train-transsrgan and train-singan deployments with a retraining schedule",
        description="Registers the deployments train-transsrgan/train-transsrgan and train-singan/train-singan "
                    "with the Prefect server at PREFECT_API_URL and runs their flow runs until "
                    "stopped (Ctrl-C). train-transsrgan runs skip training when the data and config are unchanged.")
    p.add_argument("--cron", default=DEFAULT_CRON, metavar="EXPR",
                   help=f"retraining schedule as a cron expression (default {DEFAULT_CRON!r}: daily at 03:00); "
                        "'none' serves without a schedule")
    p.add_argument("--limit", type=int, default=1, metavar="N",
                   help="flow runs at once (default 1: trainings share the machine's cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.errors import UsageError

    cron = None if args.cron.strip().lower() in ("", "none", "off") else args.cron.strip()
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=cron)
        except ValidationError:
            raise UsageError(f"--cron {args.cron!r}: not a valid cron expression (e.g. '0 3 * * *')") from None
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive integer")

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UsageError("PREFECT_API_URL is not set: serving needs a running Prefect server. Start one with "
                         "`prefect server start` and run `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
                         "(see docs/operations.md)")
    from flows.serve import serve_deployments

    print(f"serving on {PREFECT_API_URL.value()} with schedule {cron or 'none'}; trigger a run with "
          "`prefect deployment run train-transsrgan/train-transsrgan --param preset=tiny`; Ctrl-C stops")
    serve_deployments(cron, limit=args.limit)
    return 0
