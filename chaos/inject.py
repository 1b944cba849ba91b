"""`python -m chaos.inject --nan-steps S[-E] -- COMMAND ...`: the `transsrgan` CLI with faults installed from outside."""

import argparse
import contextlib
import sys
from collections.abc import Iterator

from chaos.faults import nan_gradients, step_range
from spark_training.dfagd import DFAGDHooks, train_dfagd


@contextlib.contextmanager
def default_hooks(hooks: DFAGDHooks) -> Iterator[None]:
    """Every train_dfagd call in this process that passes no hooks of its own runs with `hooks` meanwhile.

    The function's own keyword default is swapped, so callers that imported it by name are reached as well.
    """
    defaults = train_dfagd.__kwdefaults__
    saved = defaults["hooks"]
    defaults["hooks"] = hooks
    try:
        yield
    finally:
        defaults["hooks"] = saved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chaos.inject",
                                description="Runs `transsrgan COMMAND ...` in this process with faults installed "
                                            "in DFAGD training: everything after `--` is the transsrgan command line.")
    p.add_argument("--nan-steps", metavar="S[-E]", type=step_range, required=True,
                   help="the first D gradient of these 0-based steps (inclusive) comes back NaN")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "--" not in argv:
        parser.error("expected `-- COMMAND ...` after the faults")
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
    from flows.cli import main as cli_main

    with default_hooks(DFAGDHooks(wrap_source=nan_gradients(args.nan_steps))):
        return cli_main(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main())
