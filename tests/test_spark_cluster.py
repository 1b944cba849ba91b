"""DFAGD on local-cluster[2,1,1024] (separate executor JVMs) and the speed-up benchmark's JSON contract."""

import json

import pytest
import torch

from models.config import resolve_config
from models.data import load_dataset
from models.step import build_state, get_flat
from models.trainer import LocalGradSource, train


@pytest.mark.slow
def test_local_cluster_run_matches_reference():
    from spark_training.dfagd import DFAGDStats, train_dfagd

    c = resolve_config("tiny", {"train.log_every": 0, "train.sample_every": 0, "train.checkpoint_every": 0,
                                "train.steps": 2, "spark.workers": 2, "spark.master": "local-cluster[2,1,1024]",
                                "spark.executor_memory": "900m"})
    data = load_dataset("digits", 16, 1, limit=256)
    stats = DFAGDStats()
    state = train_dfagd(c, data=data, print_fn=None, stats_out=stats)
    ref = train(build_state(c), LocalGradSource(data, c), print_fn=None)
    assert stats.iterations == 2
    assert torch.allclose(get_flat(state.G), get_flat(ref.G), atol=1e-5)
    assert torch.allclose(get_flat(state.D), get_flat(ref.D), atol=1e-5)


@pytest.mark.slow
def test_bench_speedup_cli_writes_the_contract(tmp_path):
    from flows.cli import main

    out, md = tmp_path / "speedup.json", tmp_path / "speedup.md"
    rc = main(["bench", "speedup", "--preset", "tiny", "--steps", "2", "--warmup", "1",
               "--json", str(out), "--markdown", str(md)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert {"preset", "global_batch", "steps", "runs", "speedup", "efficiency", "vs_torch", "vs_ddp",
            "model_prediction", "vs_previous_defaults", "vs_torch_compiled", "fraction_of_peak"} <= set(r)
    # the CLI times both reductions by default: star's runs are "dfagd", all-reduce's follow under their own mode
    assert [(x["mode"], x["workers"]) for x in r["runs"]] == [
        ("torch", 1), ("torch_compiled", 1), ("dfagd", 1), ("dfagd", 2), ("dfagd_allreduce", 1),
        ("dfagd_allreduce", 2), ("ddp", 2)]
    assert r["primary_reduction"] == "star" and set(r["reductions"]) == {"star", "allreduce"}
    assert set(r["reductions"]["allreduce"]["speedup"]) == {"2"}
    assert r["runs"][0]["threads"] == 2
    assert set(r["runs"][2]["breakdown"]) == {"compute_s", "exchange_s", "scheduling_s"}
    assert all(x["images_per_s"] > 0 and x["s_per_iter"] > 0 for x in r["runs"])
    assert set(r["speedup"]) == set(r["efficiency"]) == set(r["vs_torch"]) == set(r["vs_ddp"]) == {"2"}
    assert r["efficiency"]["2"] == pytest.approx(r["speedup"]["2"] / 2, abs=2e-3)
    assert {(p["executors"], p["network_gbit"]) for p in r["model_prediction"]} == {
        (n, g) for n in (8, 32, 128) for g in (1, 10)}
    assert "| dfagd | 2 |" in md.read_text()
