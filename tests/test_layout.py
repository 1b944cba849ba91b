"""Repository layout: `mlflow/` never shadows the library, and imports respect the layering."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level imports it must never use
FORBIDDEN = {
    "models": {"prefect", "mlflow", "pyspark", "great_expectations", "spark_training", "tasks", "flows"},
    "spark_training": {"prefect", "mlflow", "great_expectations", "tasks", "flows"},
    "tasks": {"flows"},
}


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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_follow_the_layering():
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "layering: " + "; ".join(violations)


def test_layering_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import mlflow.pyfunc\n    from prefect import flow\n")
    assert _imports(f) == {"mlflow", "prefect"}
