"""The `transsrgan` console script: builds config from flags and launches; the work lives in flows/ and tasks/."""

import argparse
import importlib
import sys

from flows.errors import UsageError

# Each module in flows/commands/ adds one sub-command with `register(subparsers)` and keeps heavy imports
# (torch, Spark, MLflow, Prefect) inside its handler, so that `--help` stays fast.
COMMAND_MODULES = ("demo_data", "validate", "train", "evaluate", "sample", "bench", "serve", "chaos")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line naming the argument, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="transsrgan", description="TransSRGAN on Spark with Prefect and MLflow.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"flows.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flows.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from models.config import ConfigError

    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"transsrgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `transsrgan train --dry-run | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
