"""Repository layout: `mlflow/` never shadows the library, imports respect the layering, and the product never
imports the development packages (benchmarks/, chaos/) except lazily from the commands that run them."""

import ast
import fnmatch
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("models", "spark_training", "tasks", "flows")

DEV_PACKAGES = {"benchmarks", "chaos", "tools"}   # development only: not in the wheel, not shipped to Spark
# package -> top-level imports it must never use
FORBIDDEN = {
    "models": {"prefect", "mlflow", "pyspark", "great_expectations", "spark_training", "tasks", "flows"} | DEV_PACKAGES,
    "spark_training": {"prefect", "mlflow", "great_expectations", "tasks", "flows"} | DEV_PACKAGES,
    "tasks": {"flows"} | DEV_PACKAGES,
    "flows": DEV_PACKAGES,
    "benchmarks": {"prefect", "mlflow", "great_expectations", "tasks", "flows", "chaos"},
}
# The only product files that may import a development package, and only inside a function (the CLI handlers
# of `transsrgan bench` and `transsrgan chaos`), so that importing the product never loads one.
LAZY_DEV_IMPORTS = ("flows/commands/bench*.py", "flows/commands/chaos.py")


def test_import_mlflow_from_repo_root_is_the_installed_library():
    out = subprocess.run([sys.executable, "-c", "import mlflow; print(mlflow.__file__); print(mlflow.__version__)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    path, version = out.stdout.strip().splitlines()[-2:]
    assert "site-packages" in path and not Path(path).is_relative_to(ROOT / "mlflow"), path
    assert version[0].isdigit()


def test_mlflow_folder_holds_no_python():
    assert (ROOT / "mlflow" / "start-server.sh").is_file() and (ROOT / "mlflow" / "server.env").is_file()
    assert not [p for p in (ROOT / "mlflow").rglob("*") if p.suffix in (".py", ".pyc") or p.name == "__init__.py"]


def _imports(path: Path) -> set[tuple[str, bool]]:
    """(top-level package, at module level?) for every absolute import in the file, function bodies included."""
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, module_level: bool) -> None:
        if isinstance(node, ast.Import):
            found.update((a.name.split(".")[0], module_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], module_level))
        inner = module_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def _lazy_dev_import_allowed(rel: str, name: str, module_level: bool) -> bool:
    return name in DEV_PACKAGES and not module_level and any(fnmatch.fnmatch(rel, p) for p in LAZY_DEV_IMPORTS)


def test_imports_follow_the_layering():
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad = sorted({name for name, top in _imports(path)
                          if name in forbidden and not _lazy_dev_import_allowed(rel, name, top)})
            if bad:
                violations.append(f"{rel} imports {bad}")
    assert not violations, ("layering: " + "; ".join(violations) + f" (development packages {sorted(DEV_PACKAGES)} "
                            f"may be imported only inside functions of {', '.join(LAZY_DEV_IMPORTS)})")


def _module_graph() -> dict[str, set[str]]:
    """module -> the product modules it imports (function-level imports too), e.g. 'tasks.train' -> {...}."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
        graph[mod] = {t for t in map(resolve, (t for t in targets if t.split(".")[0] in PRODUCT)) if t} - {mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_product_modules_import_each_other_without_cycles():
    """No cycle, not even through a function-level import (e.g. the speed-up probe builds on DFAGD, so DFAGD must
    not reach back for it)."""
    graph = _module_graph()
    assert "spark_training.dfagd" in graph["spark_training.speedup_probe"]     # the graph reads real imports
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_dev_packages_are_imported_inside_their_commands_handlers_only():
    """`transsrgan bench` and `transsrgan chaos` reach benchmarks/ and chaos/ from their handlers, never on import."""
    for rel, package in (("flows/commands/bench.py", "benchmarks"), ("flows/commands/bench_quality.py", "benchmarks"),
                         ("flows/commands/chaos.py", "chaos")):
        found = _imports(ROOT / rel)
        assert (package, False) in found and (package, True) not in found, (rel, sorted(found))


def test_importing_the_product_loads_no_dev_package():
    code = ("import json, sys\n"
            "import models, spark_training, tasks, flows, flows.cli\n"
            "import spark_training.speedup_probe\n"
            "flows.cli.build_parser()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'chaos'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_dev_commands_find_their_package_in_the_checkout_only():
    from flows.cli import require_checkout
    from flows.errors import UsageError

    require_checkout("benchmarks")                  # this checkout has it: importable from here on
    assert str(ROOT) in sys.path
    with pytest.raises(UsageError, match="no_such_package/ package, which comes with a source checkout"):
        require_checkout("no_such_package")


def test_code_shipped_to_executors_is_the_product_only():
    from spark_training.session import _code_zip

    path = Path(_code_zip())
    try:
        with zipfile.ZipFile(path) as zf:
            tops = {name.split("/")[0] for name in zf.namelist()}
    finally:
        path.unlink()
    assert tops == {"models", "spark_training"}
