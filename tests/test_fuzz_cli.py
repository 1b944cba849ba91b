"""Fuzzing every `transsrgan` command's flags: empty, negative, huge, non-numeric and path-like values.

Every case ends in success, or in exit 2 with one stderr line; never a traceback. Commands run in this process from
their real entry point (`flows.cli.main`); where success would start long work (Spark, MLflow, Inception, a chaos
run) that one call is replaced by a stub that stops the command there, so a case that gets that far is a success
that skipped its work. A value that cannot work (an output path below a regular file or in /proc, an empty path,
NaN, infinity) must be refused before that point. `-m slow` adds random values for every flag.
"""

import argparse
import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_config import cli  # tests/ is on sys.path (pytest rootdir conftest)

from flows.cli import build_parser


class Reached(Exception):
    """A stub's signal: the command accepted its arguments and got to its long work."""


def _reach(*_args: Any, **_kwargs: Any) -> Any:
    raise Reached


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf command ('train', 'bench speedup', ...) and its parser, read from the parser itself."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_commands(sub, (*path, name)) or {(*path, name): sub})
    return out


COMMANDS = _commands(build_parser())
NUMERIC_TYPES = (int, float)


def _arguments(command: tuple[str, ...]) -> list[tuple[str, argparse.Action]]:
    """(how the case names it, action) for every flag and positional of a command, --help aside."""
    out = []
    for action in COMMANDS[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        out.append((max(action.option_strings, key=len) if action.option_strings else action.dest, action))
    return out


def test_every_command_of_the_help_is_fuzzed():
    code, out, _ = cli("--help")
    listed = {line.split()[0] for line in out.splitlines() if line[:4] == "    " and line[4:5].isalpha()}
    assert code == 0 and {c[0] for c in COMMANDS} == listed and len(COMMANDS) >= 9


# Files and folders the cases point at; `regular/x` lies below a regular file.
def _places(root: Path) -> dict[str, str]:
    (root / "images").mkdir(exist_ok=True)
    (root / "regular").write_text("a regular file\n")
    return {"images": str(root / "images"), "below_file": str(root / "regular" / "x"), "json": str(root / "c.json")}


VALUES = ["", "-1", "0", "99999999999999999999", "1e309", "nan", "abc", "/proc/nope", "a/../../b", "{below_file}", ".",
          "~nobody/x"]
# Flags that name something the command writes: a value that cannot be written must stop it before its long part.
OUTPUTS = {("demo-data", "out_dir"), ("validate", "--out"), ("validate", "--json"), ("train", "--out"),
           ("evaluate", "--json"), ("sample", "--out"), ("sample", "--each"), ("bench speedup", "--json"),
           ("bench speedup", "--markdown"), ("bench quality", "--json"), ("bench quality", "--markdown"),
           ("bench quality", "--figure"), ("bench quality", "--out"), ("bench cluster", "--json"),
           ("bench cluster", "--markdown"), ("bench cluster", "--figure"), ("chaos", "--json"),
           ("chaos", "--markdown"), ("chaos", "--keep")}
UNWRITABLE = ("", "/proc/nope", "{below_file}")


def _base(command: str, flag: str, places: dict[str, str]) -> list[str]:
    """Arguments that make `command` valid and cheap, except those `flag` replaces."""
    images = places["images"]
    base = {
        "demo-data": [str(Path(images).parent / "digits-out")],
        "validate": [images, "--out", str(Path(images).parent / "gate"), "--preset", "tiny"],
        "train": ["--dry-run", "--preset", "tiny"],
        "evaluate": ["--real", images, *(["--fake", images] if flag not in ("--model", "--fake") else [])],
        "sample": ["--model", "models:/transsrgan@champion", "--out", str(Path(images).parent / "grid.png"),
                   "-n", "4"],
        "bench speedup": ["--steps", "1", "--no-ddp"],
        "bench quality": ["--minutes", "0.1"],
        "bench cluster": [],
        "serve": [],
        "chaos": [],
    }[command]
    # drop what the fuzzed flag (or positional) itself provides
    if flag in base:
        i = base.index(flag)
        del base[i:i + 2]
    elif not flag.startswith("-") and base and not base[0].startswith("-"):
        base = base[1:]
    return base


def _stubs(command: str, flag: str) -> list[Any]:
    """The long work of `command`, replaced: each stub raises Reached (or does the same job on two images)."""
    def digits(resolution: int):
        if resolution > 4096:
            raise Reached
        return np.zeros((2, 1, resolution, resolution), np.uint8), np.array([3, 7])

    targets = {
        "demo-data": [mock.patch("models.data.export.load_digits", side_effect=digits)],
        "validate": [mock.patch("tasks.data_gate.run_data_gate", side_effect=_reach)],
        "evaluate": [mock.patch("tasks.evaluate.evaluate_folder", side_effect=_reach),
                     mock.patch("tasks.evaluate.evaluate_generator", side_effect=_reach)],
        "sample": [mock.patch("tasks.model_io.write_samples", side_effect=_reach)]
        + ([] if flag == "--model" else [mock.patch("tasks.model_io.load_model", return_value=object())]),
        "bench speedup": [mock.patch("benchmarks.speedup.bench_speedup", side_effect=_reach)],
        "bench quality": [mock.patch("flows.commands.bench_quality.bench_and_log", side_effect=_reach)],
        "bench cluster": [mock.patch("benchmarks.cluster.bench_cluster", side_effect=_reach)],
        "serve": [mock.patch("flows.serve.serve_deployments", side_effect=_reach)],
        "chaos": [mock.patch("chaos.harness.run_chaos", side_effect=_reach)],
    }
    return targets.get(command, [])


def _expand(value: str, places: dict[str, str]) -> str:
    return value.replace("{below_file}", places["below_file"])


def run_case(command: tuple[str, ...], flag: str, value: str | None, places: dict[str, str]) -> tuple[Any, str]:
    """('reached' | exit code, stderr) of `transsrgan COMMAND BASE FLAG VALUE` with the long work stubbed."""
    name = " ".join(command)
    given = [] if value is None else [_expand(value, places)]
    argv = [*command, *_base(name, flag, places), *([flag] if flag.startswith("-") else []), *given]
    if flag.startswith("-") and given and given[0].startswith("-"):
        argv[-2:] = [f"{flag}={given[0]}"]               # '--steps=-1': a value, not another flag
    with contextlib.ExitStack() as stack:
        for stub in _stubs(name, flag):
            stack.enter_context(stub)
        try:
            code, _, err = cli(*argv)
        except Reached:
            return "reached", ""
    return code, err


def check(command: tuple[str, ...], flag: str, action: argparse.Action, value: str | None,
          places: dict[str, str]) -> None:
    outcome, err = run_case(command, flag, value, places)
    name = " ".join(command)
    cannot_work = value is not None and (
        ((name, flag) in OUTPUTS and value in UNWRITABLE)
        or (action.type is not None and value in ("", "nan", "1e309", "abc")))
    if outcome == "reached" or outcome == 0:
        assert not cannot_work, f"transsrgan {name} {flag} {value!r} was accepted"
        return
    assert outcome == 2, f"transsrgan {name} {flag} {value!r}: exit {outcome}, stderr {err!r}"
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("transsrgan"), \
        f"transsrgan {name} {flag} {value!r}: not one line: {err!r}"
    if cannot_work:
        named = [flag, action.dest, action.metavar or "", flag.lstrip("-")]
        assert any(n and n in err for n in named) or (value and _expand(value, places) in err), \
            f"transsrgan {name} {flag} {value!r}: the refusal does not name the flag: {err!r}"


def _values(action: argparse.Action, every: bool) -> list[str | None]:
    """The values a flag gets: all of VALUES in the soak; by default the ones that matter for its kind."""
    if action.nargs == 0:
        return [None]                            # a switch: given or not
    if every:
        return VALUES
    if action.choices:
        return ["", "abc"]
    if action.type is not None:                  # a number (or a parsed list)
        return ["", "-1", "0", "99999999999999999999", "1e309", "nan", "abc"]
    return ["", "-1", "abc", "/proc/nope", "a/../../b", "{below_file}", ".", "~nobody/x"]


def _cases(every: bool) -> list[Any]:
    return [pytest.param(command, flag, action, value, id=f"{' '.join(command)} {flag} {value!r}")
            for command in COMMANDS for flag, action in _arguments(command) for value in _values(action, every)]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """A scratch folder as the working directory (relative paths such as a/../../b land inside it)."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    work = root / "work" / "here"
    work.mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(work)
    import flows.serve  # noqa: F401  (imported before a stub replaces one of its functions)
    import tasks.data_gate  # noqa: F401
    import tasks.evaluate  # noqa: F401
    import tasks.model_io  # noqa: F401
    from flows.cli import require_checkout

    require_checkout("benchmarks")
    import benchmarks.cluster  # noqa: F401
    import benchmarks.speedup  # noqa: F401
    import chaos.harness  # noqa: F401

    logging.getLogger("prefect").disabled = True
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # serve needs a Prefect server to get past its checks; the stub stops it before it connects
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}), \
            mock.patch("flows.cli.build_parser", functools.cache(build_parser)):
        yield _places(root)
    logging.getLogger("prefect").disabled = False
    os.chdir(cwd)
    from tasks.tracking import configure_tracking

    configure_tracking()                         # a case's --tracking-uri must not outlive the module


@pytest.mark.parametrize("command, flag, action, value", _cases(every=False))
def test_flag_values(places, command, flag, action, value):
    check(command, flag, action, value, places)


DEFAULT_IDS = {c.id for c in _cases(every=False)}


@pytest.mark.slow
@pytest.mark.parametrize("command, flag, action, value", [c for c in _cases(every=True) if c.id not in DEFAULT_IDS])
def test_flag_values_every(places, command, flag, action, value):
    check(command, flag, action, value, places)


# ---------------------------------------------------------------------------------------------------- soak

TEXT = st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(repr),
                 st.sampled_from(["-0", "+1", "1_000", "0x10", " 1", "1e-400", "inf", "-inf", "//", ".", "..", "~",
                                  "~nobody/x", "{below_file}/y", "/dev/null", "/dev/full/x", "models:/x@y", "runs:/",
                                  "local[2]", "0 3 * * *", "* * *", "skimage:coffee", "digits"]))
ARGUMENTS = [(c, f, a) for c in COMMANDS for f, a in _arguments(c) if a.nargs != 0]


@pytest.mark.slow
@settings(derandomize=True, database=None, deadline=None, max_examples=3000, suppress_health_check=list(HealthCheck))
@given(case=st.tuples(st.sampled_from(ARGUMENTS), TEXT))
def test_flag_values_soak(places, case):
    (command, flag, action), value = case
    check(command, flag, action, value, places)
