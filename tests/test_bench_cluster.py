"""`bench cluster`: the exchange cost model per mode, the root check, and one real emulated cluster (slow, root)."""

import os
import subprocess

import pytest

from benchmarks.cost_model import (
    ExchangeFit,
    IterationModel,
    NetSizes,
    fit_exchange,
    link_bytes,
    message_steps,
)

SIZES = NetSizes(g_params=1_000_000, d_params=250_000, n_critic=2)


def test_the_driver_carries_star_traffic_and_a_ring_keeps_each_link_flat():
    per = SIZES.reduced_bytes
    assert [link_bytes("star", n, SIZES) / per for n in (2, 8, 32)] == [2, 8, 32]
    ring = [link_bytes("allreduce", n, SIZES) / per for n in (2, 8, 32)]
    assert ring == [1.0, 1.75, 1.9375] and all(r < 2 for r in ring)
    assert (message_steps("star", 8), message_steps("allreduce", 8), message_steps("allreduce", 1)) == (2, 14, 0)


def test_exchange_fit_recovers_known_coefficients():
    truth = {"star": (0.002, 0.0, 1.3), "allreduce": (0.001, 0.0003, 1.1)}
    for mode, (r0, s, k) in truth.items():
        runs = []
        for n in (2, 4, 8):
            for gbit in (1, 10):
                bw = gbit * 1e9 / 8
                x = SIZES.reductions * (r0 + message_steps(mode, n) * s) + k * link_bytes(mode, n, SIZES) / bw
                runs.append({"workers": n, "gbit": gbit, "exchange_s_per_iter": x})
        fit = fit_exchange(mode, runs, SIZES)
        for r in runs:
            assert fit.exchange_s(r["workers"], r["gbit"], SIZES) == pytest.approx(r["exchange_s_per_iter"], rel=1e-6)


def test_weak_scaling_of_a_ring_beats_the_star_at_scale():
    fits = {"star": ExchangeFit("star", 0.002, 0.0, 1.2), "allreduce": ExchangeFit("allreduce", 0.002, 0.0002, 1.2)}
    grid = IterationModel(SIZES, c_img=0.02, overhead_s=0.01, fits=fits).grid(32)
    for g in ("1", "10", "25"):
        assert grid["allreduce"]["weak"]["128"][g]["efficiency"] > grid["star"]["weak"]["128"][g]["efficiency"]
    assert set(grid["star"]["strong"]) == {"8", "32", "128"}


def test_without_root_the_command_exits_2_with_one_line(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["bench", "cluster", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]


@pytest.mark.slow
def test_two_workers_tiny_counts_bytes_and_leaves_nothing_behind():
    if os.geteuid() != 0:
        pytest.skip("bench cluster needs root (network namespaces, veth links, tc)")
    from benchmarks.cluster import run_matrix

    runs = run_matrix("tiny", (2,), (1,), ("star", "allreduce"), warmup=1, steps=2, print_fn=None)
    by_mode = {r["mode"]: r for r in runs}
    assert set(by_mode) == {"star", "allreduce"}
    for r in runs:
        assert r["worker_bytes_per_iter"] > 0 and r["exchange_s_per_iter"] > 0
    # star: every gradient passes the driver; all-reduce: only small reports do
    assert by_mode["allreduce"]["driver_bytes_per_iter"] < by_mode["star"]["driver_bytes_per_iter"] / 10
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "tsg" not in left and "tsg" not in links
