"""`transsrgan chaos` end to end: every fault scenario runs for real and holds (slow: about 5 minutes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.harness import load_scenarios

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_chaos_scenario_holds(tmp_path):
    out = tmp_path / "chaos.json"
    res = subprocess.run([sys.executable, "-m", "flows.cli", "chaos", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["scenarios"]}
    not_held = {n: r["observed"] for n, r in rows.items() if not r["held"]}
    assert res.returncode == 0 and not not_held, (not_held, res.stdout[-3000:], res.stderr[-3000:])
    assert set(rows) == set(load_scenarios()), "every registered scenario ran, and only those"
    for r in rows.values():
        assert set(r) >= {"name", "expected", "observed", "steps_lost", "data_lost", "held"}
        assert r["data_lost"] is False and r["steps_lost"] <= 5
    assert "| scenario | expected | observed | steps lost | data lost | held |" in res.stdout
