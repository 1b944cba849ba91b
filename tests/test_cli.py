"""The console script: --help, --dry-run, one-line errors naming the argument, exit codes."""

import json
import subprocess
import sys

import pytest

from flows.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0 and "demo-data" in r.stdout and "train" in r.stdout


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--preset", "tiny", "--steps", "7", "--workers", "1", "--dry-run",
                 "--set", "train.lr_g=0.001"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "tiny" and cfg["train"]["steps"] == 7 and cfg["spark"]["workers"] == 1
    assert cfg["train"]["lr_g"] == 0.001


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "huge"], "--preset"),
    (["train", "--steps", "x"], "--steps"),
    (["train", "--steps", "-3", "--dry-run"], "train.steps"),
    (["train", "--set", "train.nope=1", "--dry-run"], "train.nope"),
    (["train", "--workers", "3", "--dry-run"], "train.batch_size"),
    (["demo-data"], "OUT_DIR"),
])
def test_bad_arguments_exit_2_and_name_the_argument(args, needle):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
