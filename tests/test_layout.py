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

DEV_PACKAGES = {"benchmarks", "chaos"}      # development only: not in the wheel, not shipped to Spark
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


def test_spark_training_modules_import_each_other_without_cycles():
    """E.g. the speed-up probe builds on DFAGD, so DFAGD must not reach back for the probe (not even lazily)."""
    pkg = ROOT / "spark_training"
    graph: dict[str, set[str]] = {}
    for path in pkg.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("spark_training."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("spark_training."))
        graph[path.stem] = deps

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"spark_training import cycles through {cycles}"
    assert "dfagd" in graph["speedup_probe"]          # the check reads real imports


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
