"""Fuzzing the config tree: every key, through --set, JSON and TOML files, the flows' parameters and `validate`.

Each case must end in one of two ways: the value is kept exactly (same type and value in the resolved config; an
integer given to a float field must convert without loss), or the input is refused with exit 2 and one stderr line
naming the key (a malformed file may be named instead). Never a traceback, never a rounded or retyped value.
Derandomized; `-m slow` runs the soak with SOAK times more examples.
"""

import contextlib
import functools
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.cli import build_parser, main
from flows.params import SinGANParams, TrainParams, describe_error, flag_of
from models.config import Config, Section, resolve_config

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                suppress_health_check=list(HealthCheck))
SOAK = int(os.environ.get("TRANSSRGAN_FUZZ_SOAK", "20"))     # the slow soak runs SOAK x the default examples


def _keys() -> list[str]:
    """Every dotted key of the tree, e.g. 'train.steps', and the top-level ones ('preset')."""
    keys = []
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            keys += [f"{name}.{f}" for f in annotation.model_fields]
        else:
            keys.append(name)
    return keys


KEYS = _keys()
TINY = resolve_config("tiny").model_dump()
PLACES = Path(__file__).parent      # an existing folder and file for path-valued keys
NOWHERE = "/proc/nope/x"


class Reached(Exception):
    """The command got past its checks to the work a stub stands in for."""


def _fuzz(check, strategy: st.SearchStrategy, examples: int) -> tuple[Any, Any]:
    """A default-suite test and its `slow` soak (SOAK x the examples) for `check(case)`."""
    fast = settings(FAST, max_examples=examples)(given(strategy)(check))
    soak = pytest.mark.slow(settings(FAST, max_examples=examples * SOAK)(given(strategy)(check)))
    return fast, soak


# ---------------------------------------------------------------------------------------------------- values

SPECIAL = [0, 1, -1, 2, 3, 7, 16, 64, 2**53 + 1, 10**30, -(10**30), 0.0, -0.0, 0.5, 2.5, 3.0, 16.0, 1e-300, 1e308,
           float("nan"), float("inf"), float("-inf"), True, False, None, "", " ", "3", "2.5", "-1", "nan", "inf",
           "true", "null", "digits", "tiny", "local[2]", "1g", "gp", "fid", "a\nb", [], {}, [0.5, 0.9], [1, 2, 3],
           ["fid"], {"spark.ui.enabled": "false"}, {"a": None}]
SCALARS = st.one_of(st.sampled_from(SPECIAL), st.integers(), st.floats(), st.booleans(), st.none(),
                    st.text(max_size=12), st.integers(-10**6, 10**6).map(str), st.floats().map(repr))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _near(value: Any) -> list[Any]:
    """Values next to the tiny preset's: most of them valid, some just over a bound, some of another type."""
    if isinstance(value, bool):
        return [not value, int(value), str(value).lower()]
    if isinstance(value, int):
        return [value, value + 1, value - 1, value * 2, -value, float(value), str(value), value + 0.5]
    if isinstance(value, float):
        return [value, value * 2, value / 2, -value, 0.0, 1.0, 1, math.nextafter(value, 0.0), str(value)]
    if isinstance(value, str):
        return [value, value + "x", value.upper(), "", str(PLACES), str(PLACES / "conftest.py"), NOWHERE, "~nobody/x",
                "skimage:astronaut", "skimage:nope", "transsrgan", "dcgan", "singan", "cuda", "bfloat16", "2g"]
    if isinstance(value, (list, tuple)):
        items = list(value)
        return [items, items[:1], items + items[:1], [str(i) for i in items], items[::-1]]
    if isinstance(value, dict):
        return [value, {"spark.ui.enabled": False}, {"spark.x": 1.5}, {"": "x"}]
    return [1.0, 10.0, 0, "none"]


def _cases(values: st.SearchStrategy = VALUES) -> st.SearchStrategy:
    """(key, value): every key of the tree with a random value or one near its tiny preset value."""
    return st.sampled_from(KEYS).flatmap(
        lambda k: st.tuples(st.just(k), st.one_of(values, st.sampled_from(_near(_lookup(TINY, k))))))


def _no_none(value: Any) -> bool:
    if isinstance(value, list):
        return all(_no_none(v) for v in value)
    if isinstance(value, dict):
        return all(_no_none(v) for v in value.values())
    return value is not None


def _same(got: Any, given: Any) -> bool:
    """Exactly the value given: same type (an integer may become an equal float), same sign of zero."""
    if isinstance(given, bool) or isinstance(got, bool):
        return type(got) is type(given) and got == given
    if isinstance(given, int) and type(got) is float:
        return got == given                      # exact: 2**53 + 1 != 2.0**53
    if isinstance(given, float):
        return type(got) is float and got == given and math.copysign(1, got) == math.copysign(1, given)
    if isinstance(given, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(given) and all(map(_same, got, given))
    if isinstance(given, dict):
        return isinstance(got, dict) and got.keys() == given.keys() and all(_same(got[k], given[k]) for k in given)
    return type(got) is type(given) and got == given


def _lookup(tree: dict[str, Any], key: str) -> Any:
    section, _, field = key.partition(".")
    return tree[section][field] if field else tree[section]


# ---------------------------------------------------------------------------------------------------- the CLI

def cli(*argv: str) -> tuple[int, str, str]:
    """`transsrgan ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _names(key: str) -> list[str]:
    """How a message may name `key`: as given, quoted, or by its section when the section is unknown."""
    section = key.partition(".")[0]
    return [n for n in (key, repr(key), section, repr(section)) if n.strip()] or [repr(key)]


def refused(code: int, err: str, names: list[str]) -> None:
    """Exit 2 and one stderr line that names one of `names`."""
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("transsrgan "), f"not one line: {err!r}"
    assert any(n in err for n in names), f"none of {names} named in {err!r}"


def _family(key: str) -> list[str]:
    """The train flags that print `key` (the SinGAN family prints only its sections)."""
    return ["--model", "singan"] if key.startswith("singan.") else []


def _dry_run(key: str, given: Any, *args: str, names: list[str]) -> None:
    code, out, err = cli("train", "--dry-run", "--preset", "tiny", *_family(key), *args)
    event("kept" if code == 0 else "refused")
    if code == 0:
        assert err == "", err
        got = _lookup(json.loads(out), key)
        assert _same(got, given), f"{key}: gave {given!r}, the config holds {got!r}"
    else:
        refused(code, err, names)


# ---------------------------------------------------------------------------------------------------- --set

def _from_set(text: str) -> Any:
    """What `--set KEY=TEXT` gives: TEXT read as JSON (NaN and Infinity are not), else TEXT itself."""
    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError:
        return text


RAW = st.one_of(st.text(max_size=10), st.sampled_from(["nan", "NaN", "-Infinity", "1e309", "-0", "3", "3.0", "2.5",
                                                        "true", "True", "None", "null", "[1,2]", "[0.5, 0.9]", "{}",
                                                        "0x10", "1_000", " 3", "+3", "[1, 2", "'a'", "local[2]"]))


def check_set(case: tuple[str, Any]) -> None:
    key, text = case
    _dry_run(key, _from_set(text), f"--set={key}={text}", names=_names(key))


SET_CASES = _cases().flatmap(lambda kv: st.tuples(st.just(kv[0]), st.one_of(st.just(json.dumps(kv[1])), RAW)))
test_set_any_key, test_set_any_key_soak = _fuzz(check_set, SET_CASES, 500)


# ---------------------------------------------------------------------------------------------------- files

def _tree(key: str, value: Any) -> dict[str, Any]:
    section, _, field = key.partition(".")
    return {section: {field: value}} if field else {section: value}


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)                           # nan, inf, -inf, -0.0 and 1e+308 are TOML floats too
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(i) for i in v) + "]"
    return "{" + ", ".join(f"{_toml_string(k)} = {toml_value(i)}" for k, i in v.items()) + "}"


def toml_text(tree: dict[str, Any]) -> str:
    """A TOML document of the tree: top-level keys first, then one table per section."""
    top = [f"{_toml_string(k)} = {toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    tables = [f"[{_toml_string(k)}]\n" + "\n".join(f"{_toml_string(f)} = {toml_value(i)}" for f, i in v.items())
              for k, v in tree.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


@pytest.fixture(scope="module", autouse=True)
def _fast_and_quiet():
    """Prefect logs every refused parameter set at ERROR level; the assertions read the exceptions instead."""
    import flows.train_singan  # noqa: F401  (Prefect sets its loggers up on import)
    import flows.train_transsrgan  # noqa: F401

    logger = logging.getLogger("prefect.flows")
    logger.disabled = True
    # One parser for the module's thousands of in-process runs (building it is most of a dry run's time).
    with mock.patch("flows.cli.build_parser", functools.cache(build_parser)):
        yield
    logger.disabled = False


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Files the cases write (module-scoped: Hypothesis reruns a test body many times within one fixture)."""
    return tmp_path_factory.mktemp("fuzz-config")


def check_json(scratch: Path, case: tuple[str, Any]) -> None:
    key, value = case
    path = scratch / "config.json"
    path.write_text(json.dumps(_tree(key, value)))
    _dry_run(key, value, "--config", str(path), names=[*_names(key), str(path)])


def check_toml(scratch: Path, case: tuple[str, Any]) -> None:
    key, value = case
    path = scratch / "config.toml"
    path.write_text(toml_text(_tree(key, value)), encoding="utf-8")
    _dry_run(key, value, "--config", str(path), names=[*_names(key), str(path)])


test_json_any_key, test_json_any_key_soak = _fuzz(check_json, _cases(), 300)
test_toml_any_key, test_toml_any_key_soak = _fuzz(
    check_toml, _cases(VALUES.filter(_no_none)).filter(lambda kv: _no_none(kv[1])), 300)


# ---------------------------------------------------------------------------------------------------- flow parameters

def _params_for(key: str) -> type:
    return SinGANParams if key.startswith("singan.") else TrainParams


def _flow_for(params: type) -> Any:
    if params is SinGANParams:
        from flows.train_singan import train_singan

        return train_singan
    from flows.train_transsrgan import train_transsrgan

    return train_transsrgan


def _validated(params: type, values: dict[str, Any]) -> tuple[Any, str | None]:
    """(the parameters, None) or (None, the one-line refusal)."""
    try:
        return params.model_validate(values), None
    except ValidationError as exc:
        return None, describe_error(exc, params)


def _flow_validated(params: type, values: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """What the flow's own parameter check (every run, also deployments') makes of `values`."""
    from prefect.exceptions import ParameterTypeError

    try:
        return _flow_for(params).validate_parameters(values), None
    except ParameterTypeError as exc:
        return None, str(exc)


def check_overrides(case: tuple[str, Any]) -> None:
    key, value = case
    params = _params_for(key)
    values = {"preset": "tiny", "overrides": {key: value}}
    ok, why = _validated(params, values)
    if ok is not None:
        got = _lookup(ok.to_config().model_dump(), key)
        assert _same(got, value), f"{key}: gave {value!r}, the config holds {got!r}"
    else:
        assert "\n" not in why and any(n in why for n in _names(key)), why
    flow_ok, flow_why = _flow_validated(params, values)
    assert (flow_ok is None) == (ok is None), f"the flow and {params.__name__} disagree: {why} / {flow_why}"
    if flow_ok is not None:
        assert _same(flow_ok["overrides"], {key: value}), flow_ok["overrides"]
    else:
        assert any(n in flow_why for n in _names(key)), flow_why


test_flow_overrides, test_flow_overrides_soak = _fuzz(check_overrides, _cases(), 200)


def _param_fields() -> list[tuple[type, str]]:
    return [(p, name) for p in (TrainParams, SinGANParams) for name in p.model_fields]


def _param_near(params: type, name: str) -> list[Any]:
    default = params.model_fields[name].default
    near = _near(default) if default is not None else [1, 3, "tiny", "digits", str(PLACES), NOWHERE, ""]
    return near + ["latest", str(PLACES / "conftest.py"), {"train.steps": 3}, "local[1]", "skimage:astronaut"]


PARAM_CASES = st.sampled_from(_param_fields()).flatmap(
    lambda pn: st.tuples(st.just(pn), st.one_of(VALUES, st.sampled_from(_param_near(*pn)))))


def check_parameter(case: tuple[tuple[type, str], Any]) -> None:
    (params, name), value = case
    values = {name: value} if name in ("preset", "resume") else {"preset": "tiny", name: value}
    key = (params.model_fields[name].json_schema_extra or {}).get("config")
    names = [name, flag_of(params, name), *([key] if key else []), repr(value)]
    if isinstance(value, dict):                 # overrides: an error names the override's key
        names += [n for k in value for n in _names(str(k))]
    ok, why = _validated(params, values)
    if ok is not None:
        assert _same(getattr(ok, name), value), f"{name}: gave {value!r}, got {getattr(ok, name)!r}"
        if key and value is not None and getattr(ok, "resume", None) is None:
            got = _lookup(ok.to_config().model_dump(), key)
            negate = (params.model_fields[name].json_schema_extra or {}).get("negate")
            assert negate or _same(got, value) or (key == "model.arch" and got == value), f"{key}: {got!r}"
    else:
        assert "\n" not in why and any(n in why for n in names), why
    flow_ok, flow_why = _flow_validated(params, values)
    assert (flow_ok is None) == (ok is None), f"the flow and {params.__name__} disagree: {why} / {flow_why}"
    if flow_ok is not None:
        assert _same(flow_ok[name], value), f"the flow turned {value!r} into {flow_ok[name]!r}"
    else:
        assert any(n in flow_why for n in names), flow_why


test_flow_parameter, test_flow_parameter_soak = _fuzz(check_parameter, PARAM_CASES, 200)


# ---------------------------------------------------------------------------------------------------- unknown keys

IDENT = st.text(st.characters(codec="ascii"), min_size=0, max_size=8)
UNKNOWN = st.one_of(
    st.tuples(st.sampled_from([k.partition(".")[0] for k in KEYS]), IDENT).map(".".join),
    st.tuples(IDENT, IDENT).map(".".join), IDENT, st.text(max_size=10),
    st.sampled_from(["train.steps.x", ".steps", "train.", ".", "..", "train..steps", "a\nb.c", "preset.x",
                     "TRAIN.steps", "train.Steps", " train.steps"]),
).filter(lambda k: k not in KEYS)


def check_unknown(scratch: Path, case: tuple[str, Any, str]) -> None:
    key, value, channel = case
    names = _names(key)
    if channel == "set":
        if "=" in key:
            return                              # the key ends at the first '='
        code, _, err = cli("train", "--dry-run", "--preset", "tiny", f"--set={key}={json.dumps(value)}")
        refused(code, err, [*names, "--set"])
    elif channel == "json":
        path = scratch / "unknown.json"
        path.write_text(json.dumps(_nested(key, value)))
        code, _, err = cli("train", "--dry-run", "--preset", "tiny", "--config", str(path))
        refused(code, err, [*names, str(path)])
    else:
        ok, why = _validated(TrainParams, {"preset": "tiny", "overrides": {key: value}})
        assert ok is None and "\n" not in why and any(n in why for n in names), why


def _nested(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    tree: Any = value
    for part in reversed(parts):
        tree = {part: tree}
    return tree


UNKNOWN_CASES = st.tuples(UNKNOWN, st.sampled_from([1, "x", 2.5, None, {}]), st.sampled_from(["set", "json", "params"]))
test_unknown_keys, test_unknown_keys_soak = _fuzz(check_unknown, UNKNOWN_CASES, 150)


# ---------------------------------------------------------------------------------------------------- malformed files

def _malformed() -> st.SearchStrategy:
    good = json.dumps({"train": {"steps": 3}, "spark": {"extra_conf": {"a": "b"}}})
    return st.one_of(
        st.binary(max_size=64), st.text(max_size=64).map(str.encode),
        st.integers(0, len(good) - 1).map(lambda n: good[:n].encode()),                     # truncated
        st.sampled_from([b"[]", b"3", b'"x"', b"null", b"{}", b"\xef\xbb\xbf{}", b"\xff\xfe{}",
                         b'{"train": {"steps": 1, "steps": 2}}', b'{"train": {}, "train": {"steps": 2}}',
                         b'{"train": {"steps": NaN}}', b'{"train": {"lr_g": 1e400}}',
                         b'{"train": {"steps": ' + b"1" * 5000 + b"}}",
                         b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                         b"[train]\nsteps = 1\nsteps = 2\n", b"[train]\nsteps = 1979-05-27\n",
                         b"[train]\nsteps = nan\n", b"x = [" * 50_000, b"train = 3\n", b"[[train]]\n"]),
    )


def check_malformed(scratch: Path, case: tuple[bytes, str]) -> None:
    content, suffix = case
    path = scratch / f"malformed{suffix}"
    path.write_bytes(content)
    code, out, err = cli("train", "--dry-run", "--preset", "tiny", "--config", str(path))
    if code != 0:
        refused(code, err, [str(path), "--config", *KEYS, *Config.model_fields])


test_malformed_files, test_malformed_files_soak = _fuzz(
    check_malformed, st.tuples(_malformed(), st.sampled_from([".json", ".toml", ".txt"])), 150)


def test_duplicate_keys_are_refused(scratch):
    path = scratch / "twice.json"
    path.write_text('{"train": {"steps": 1, "steps": 2}}')
    code, _, err = cli("train", "--dry-run", "--preset", "tiny", "--config", str(path))
    refused(code, err, ["steps"])


def test_preset_in_a_file_or_set_is_not_ignored(scratch):
    path = scratch / "preset.json"
    path.write_text('{"preset": "full"}')
    code, _, err = cli("train", "--dry-run", "--preset", "tiny", "--config", str(path))
    refused(code, err, ["preset"])
    code, _, err = cli("train", "--dry-run", "--preset", "tiny", "--set=preset=\"demo\"")
    refused(code, err, ["preset"])
    assert cli("train", "--dry-run", "--preset", "tiny", "--set=preset=\"tiny\"")[0] == 0


# ---------------------------------------------------------------------------------------------------- validate

def check_validate(scratch: Path, case: tuple[str, Any]) -> None:
    """`transsrgan validate --config FILE` refuses a bad file in one line before it scans anything."""
    key, value = case
    folder = scratch / "images"
    folder.mkdir(exist_ok=True)
    path = scratch / "validate.json"
    path.write_text(json.dumps(_tree(key, value)))
    with mock.patch("tasks.data_gate.run_data_gate", side_effect=Reached) as gate:
        try:
            code, _, err = cli("validate", str(folder), "--out", str(scratch / "gate"), "--preset", "tiny",
                               "--config", str(path))
        except Reached:
            data, resolution = gate.call_args.args[2], gate.call_args.args[3]
            if key.startswith("data."):
                assert _same(getattr(data, key.partition(".")[2]), value), (key, value)
            elif key == "model.resolution":
                assert _same(resolution, value)
            return
    refused(code, err, [*_names(key), str(path)])
    gate.assert_not_called()


test_validate_config, test_validate_config_soak = _fuzz(check_validate, _cases(), 100)
