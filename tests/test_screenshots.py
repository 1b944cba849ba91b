"""`python -m tools.screenshots`: page checks on rendered text, bad usage, and the whole run in Chromium (slow)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools.screenshots import Page, main, problems, visible_text

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"mlflow-run.png", "mlflow-run-samples.png", "mlflow-model.png", "prefect-flow-run.png", "gx-data-docs.png",
         "gate-summary.png"}


def test_visible_text_skips_scripts_and_styles():
    dom = ("<html><head><style>.error{}</style><script>throw new Error('x')</script></head>"
           "<body><h1>Runs</h1><p>fragrant-numbat <b>Completed</b></p><noscript>404</noscript></body></html>")
    assert visible_text(dom) == "Runs fragrant-numbat Completed"


@pytest.mark.parametrize("text", ["Can't connect to Server API at http://127.0.0.1:4200/api", "Page not found",
                                  "Request error INTERNAL_ERROR", "404 Not Found", "Failed to load chart data",
                                  "Something went wrong", "Error: Network request failed"])
def test_a_page_that_shows_an_error_fails(text):
    found = problems(f"Runs fragrant-numbat {text} Completed", Page("p", "p.png", "u", ["fragrant-numbat"]))
    assert found and all(f.startswith("shows ") for f in found)


def test_data_and_numbers_are_not_errors_but_missing_text_is():
    page = Page("summary", "s.png", "u", ["Quarantine by reason", "notes.png"], allow=(r"\bError\b(?!\w)",))
    text = ("Quarantine by reason decode-error notes.png decode-error: UnidentifiedImageError fd 0.404 "
            "run 1404ab Error")
    assert problems(text, page) == []
    assert problems("Quarantine by reason", page) == ["lacks 'notes.png'"]


def test_logged_image_steps_reads_mlflows_image_file_names():
    from types import SimpleNamespace

    from tools.screenshots import logged_image_steps

    names = ["samples+step+10+timestamp+1+u1.png", "samples+step+10+timestamp+1+u1+compressed.webp",
             "samples+step+2+timestamp+0+u0.png", "real_vs_fake+step+10+timestamp+2+u2.png", "notes.txt"]
    client = SimpleNamespace(list_artifacts=lambda run_id, path: [SimpleNamespace(path=f"{path}/{n}") for n in names])
    assert logged_image_steps(client, "r1", "samples") == [2, 10]
    assert logged_image_steps(client, "r1", "fake") == []


def test_bad_usage_exits_2_before_any_server_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))                      # no chromium on PATH
    assert main(["--out", str(tmp_path / "shots")]) == 2
    assert "chromium not found" in capsys.readouterr().err
    monkeypatch.setenv("CHROMIUM", sys.executable)                 # any executable will do for the checks below
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mlflow-run.png").write_bytes(b"the user's own picture")
    assert main(["--out", str(mine)]) == 2
    assert "mlflow-run.png was not written by transsrgan" in capsys.readouterr().err
    assert (mine / "mlflow-run.png").read_bytes() == b"the user's own picture"


@pytest.mark.slow
def test_screenshots_of_every_page_in_chromium(tmp_path):
    if not shutil.which("chromium"):
        pytest.skip("chromium is not installed (make chromium)")
    out = tmp_path / "shots"
    run = subprocess.run([sys.executable, "-m", "tools.screenshots", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    pages = json.loads((out / "pages.json").read_text())
    assert PAGES <= {p["file"] for p in pages}
    for p in pages:
        with Image.open(out / p["file"]) as img:
            assert img.size == (1440, 1000), p
            lo, hi = img.convert("L").getextrema()
            assert hi - lo > 64, f"{p['file']} is blank"
    summary = next(p for p in pages if p["file"] == "gate-summary.png")
    assert "notes.png" in summary["expected_text"]               # the quarantined file, checked in the DOM
