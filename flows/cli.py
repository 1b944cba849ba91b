"""The `transsrgan` console script: builds parameters from flags and launches; the work lives in flows/ and tasks/."""

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from flows.errors import UsageError

# Each module in flows/commands/ adds one sub-command with `register(subparsers)` and keeps heavy imports
# (torch, Spark, MLflow, Prefect) inside its handler, so that `--help` stays fast.
COMMAND_MODULES = ("demo_data", "validate", "train", "evaluate", "sample", "bench", "serve", "chaos")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line naming the argument, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _choices(annotation: Any) -> list[Any] | None:
    """The values of a Literal (also inside Optional / Annotated), else None."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for arg in get_args(annotation):
        found = _choices(arg)
        if found:
            return found
    return None


def add_params(parser: argparse.ArgumentParser, *models: type[BaseModel]) -> None:
    """One flag per parameter of `models` (flows.params), named and documented by the field's declaration.

    Parameters that several models share become one flag; Literal choices are merged. Every value is passed on as
    typed (a string, or True for switches), and the model validates it: the one place the rules live.
    """
    flags: dict[str, dict[str, Any]] = {}
    for model in models:
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra or {}
            flag = "--" + extra.get("flag", name.replace("_", "-"))
            key = f" ({extra['config']})" if extra.get("config") else ""
            spec = flags.get(flag)
            if spec is None:
                spec = flags[flag] = {"help": (field.description or "") + key, "keys": {key}}
            elif key not in spec["keys"] and field.description:   # another family reads it differently
                spec["help"] += f"; for {model.__name__.removesuffix('Params')}: {field.description}{key}"
                spec["keys"].add(key)
            if extra.get("metavar"):
                spec["metavar"] = extra["metavar"]
            if field.annotation is bool:
                spec["action"] = "store_true"
            elif flag == "--set":
                spec["action"], spec["default"] = "append", []
            elif "const" in extra:
                spec.update(nargs="?", const=extra["const"])
            choices = _choices(field.annotation)
            if choices:
                spec["choices"] = sorted({*spec.get("choices", []), *choices})
                spec.pop("metavar", None)
    for flag, spec in flags.items():
        parser.add_argument(flag, **{k: v for k, v in spec.items() if k != "keys"})
    parser.set_defaults(param_flags=[f.lstrip("-").replace("-", "_") for f in flags])


def params_from_args(args: argparse.Namespace, model: type[BaseModel]) -> Any:
    """`model` validated from the flags that were given (the others keep the model's defaults); UsageError names
    the flag. Command-line strings are parsed to the declared types ('3' -> 3), but never rounded or guessed."""
    from flows.params import describe_error

    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        flag = extra.get("flag", name.replace("_", "-"))
        given = getattr(args, flag.replace("-", "_"), None)
        if given is None or given is False or given == []:
            continue
        if field.annotation is bool:
            values[name] = not given if extra.get("negate") else given
        elif flag == "set":
            values[name] = parse_set(given)
        else:
            values[name] = _number(given, _types(field.annotation), "--" + flag)
    unused = [f for f in _given_flags(args) if f not in _flags_of(model)]
    if unused:
        family = getattr(args, "model", None)
        raise UsageError(f"{', '.join(unused)}: not used by " + (f"--model {family}" if family else "this command"))
    try:
        return model.model_validate(values, strict=False)
    except ValidationError as exc:
        raise UsageError(describe_error(exc, model)) from None


def _types(annotation: Any) -> set[Any]:
    """The plain types inside an annotation: PositiveInt | None -> {int, NoneType}."""
    if isinstance(annotation, type):
        return {annotation}
    return set().union(*(_types(a) for a in get_args(annotation))) if get_args(annotation) else set()


def _number(text: Any, types: set[Any], flag: str) -> Any:
    """A flag's text as the number its parameter takes, written plainly: '3' for an integer (not '3.0', '3_0' or
    '0x3'); a finite decimal for a number. Other parameters keep the text."""
    kind = types - {type(None)}
    if not isinstance(text, str) or kind not in ({int}, {float}):
        return text
    if kind == {int} and re.fullmatch(r"[+-]?[0-9]+", text) and len(text) <= 100:
        return int(text)
    if kind == {float} and re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
        if math.isfinite(float(text)):
            return float(text)
    raise UsageError(f"{flag}: expected {'an integer' if kind == {int} else 'a finite number'}, got {text!r}")


def _flags_of(model: type[BaseModel]) -> set[str]:
    return {"--" + (f.json_schema_extra or {}).get("flag", n.replace("_", "-")) for n, f in model.model_fields.items()}


def _given_flags(args: argparse.Namespace) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in getattr(args, "param_flags", ())
            if getattr(args, k, None) not in (None, False, [])]


def parse_set(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as {dotted key: JSON value, or the raw string where it is not JSON}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        try:
            out[key] = json.loads(value, parse_constant=_no_constant)
        except json.JSONDecodeError:
            out[key] = value          # a plain string; the config's types decide whether it fits
        except (ValueError, RecursionError):   # JSON, but more digits or nesting than Python reads
            raise UsageError(f"--set {key!r}: the value has more digits or nesting than a config value may "
                             "have") from None
    return out


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a config value", name, 0)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No library warnings or INFO logs on the terminal while a command runs: its user sees our lines only.

    MLflow re-enables its UserWarnings inside its own catch_warnings blocks, so the display hook is replaced too
    (those blocks keep the hook they find); it sets its loggers' level when first imported, so it is imported first.
    """
    mlflow_log = logging.getLogger("mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # no "Downloading artifacts" bars
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.showwarning = lambda *args, **kwargs: None
        import mlflow  # noqa: F401

        level = mlflow_log.level
        mlflow_log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            mlflow_log.setLevel(level)


def require_checkout(package: str) -> None:
    """Make a development package (chaos/, benchmarks/) importable from the source checkout that holds flows/;
    UsageError for an installed transsrgan, which never ships them."""
    root = Path(__file__).resolve().parents[1]
    if not (root / package / "__init__.py").is_file():
        raise UsageError(f"this command needs the {package}/ package, which comes with a source checkout of the "
                         f"project, not with an installed transsrgan")
    if str(root) not in sys.path:
        sys.path.append(str(root))


# Stores MLflow can track to; a plain folder is its retired file store, refused unless MLFLOW_ALLOW_FILE_STORE is set
STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def seed(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**32), the range of models.config's seeds."""
    if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**32 - 1}, got {text!r}")
    return int(text)


def tracking_uri(text: str) -> str:
    """argparse type of --tracking-uri: a store URI MLflow accepts (checked here, not in MLflow's first call)."""
    import os
    from urllib.parse import urlsplit

    scheme = urlsplit(text).scheme.split("+")[0]
    file_store = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true") and scheme in ("", "file")
    if not text.strip() or not (scheme in STORE_SCHEMES or text in STORE_SCHEMES or file_store):
        raise argparse.ArgumentTypeError(f"expected an MLflow store such as sqlite:///PATH/mlflow.db or "
                                         f"http://HOST:5000, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="transsrgan", description="TransSRGAN on Spark with Prefect and MLflow.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"flows.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from models.config import ConfigError

    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with quiet_libraries():
            return int(args.func(args) or 0)
    except (UsageError, ConfigError) as exc:
        # one line, whatever a library put in the message it carries
        print(f"transsrgan {args.command}: error: " + " | ".join(filter(None, map(str.strip, str(exc).splitlines()))),
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `transsrgan train --dry-run | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
