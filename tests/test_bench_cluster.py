"""`bench cluster`: the exchange cost model per mode, the root check, and one real emulated cluster (slow, root)."""

import os

import numpy as np
import pytest

from benchmarks.cost_model import (
    DedicatedHosts,
    ExchangeFit,
    IterationModel,
    NetSizes,
    contention,
    fit_exchange,
    link_bytes,
    message_steps,
    probed_link,
)

SIZES = NetSizes(g_params=1_000_000, d_params=250_000, n_critic=2)
CORES = 2


def _probe(n: int, gbit: float, hop: float = 100e-6, op: float = 300e-6, eff: float = 0.9) -> dict:
    """A link probe as bench cluster records it: an idle ring and point to point at eff x the rate."""
    bw = gbit * 1e9 / 8 * eff
    return {"workers": n, "gbit": gbit,
            "ring": {"tiny_s": op + 2 * (n - 1) * hop, "bandwidth_Bps": bw * 0.8},
            "p2p": {"latency_s": hop, "bandwidth_Bps": bw}}


def _synthetic_runs(mode: str, r0: float, g: float, k: float, c: float) -> list[dict]:
    """Runs at N = 2, 4, 8 and 1 / 10 Gbit whose exchange the model with these coefficients gives exactly."""
    truth = ExchangeFit(mode, r0, g, k, c)
    runs = []
    for n in (2, 4, 8):
        for gbit in (1, 10):
            link = probed_link(mode, _probe(n, gbit, hop=50e-6 * n), n + 2, CORES)   # the probe itself contended
            runs.append({"workers": n, "gbit": gbit, "link": link.__dict__,
                         "exchange_s_per_iter": truth.exchange_s(n, SIZES, link)})
    return runs


def test_the_driver_carries_star_traffic_and_a_ring_keeps_each_link_flat():
    per = SIZES.reduced_bytes
    assert [link_bytes("star", n, SIZES) / per for n in (2, 8, 32)] == [2, 8, 32]
    ring = [link_bytes("allreduce", n, SIZES) / per for n in (2, 8, 32)]
    assert ring == [1.0, 1.75, 1.9375] and all(r < 2 for r in ring)
    assert (message_steps("star", 8), message_steps("allreduce", 8), message_steps("allreduce", 1)) == (2, 14, 0)


def test_contention_counts_processes_beyond_the_cores_per_core():
    assert [contention(p, 2) for p in (1, 2, 4, 10)] == [0.0, 0.0, 1.0, 4.0]
    assert contention(130, 128) == pytest.approx(2 / 128)


def test_the_probe_splits_a_ring_reduction_into_hops_and_a_fixed_part():
    link = probed_link("allreduce", _probe(4, 1, hop=100e-6, op=300e-6), processes=6, cores=2)
    assert (link.message_s, link.reduction_s, link.contention) == (100e-6, pytest.approx(300e-6), 2.0)
    star = probed_link("star", _probe(4, 1), processes=6, cores=2)
    assert star.reduction_s == 0.0 and star.bandwidth_Bps == pytest.approx(1e9 / 8 * 0.9)
    solo = {**_probe(1, 1), "ring": None}                            # one worker: no ring, the point to point
    assert probed_link("allreduce", solo, 3, 2).bandwidth_Bps == solo["p2p"]["bandwidth_Bps"]


@pytest.mark.parametrize("mode,coef", [("star", (0.002, 0.0, 1.3, 1e-9)),
                                       ("allreduce", (0.001, 0.0003, 1.1, 0.5e-9))])
def test_exchange_fit_recovers_known_coefficients(mode, coef):
    fit = fit_exchange(mode, _synthetic_runs(mode, *coef), SIZES)
    got = (fit.per_reduction_s, fit.contention_s, fit.bandwidth_factor, fit.cpu_s_per_byte)
    assert got == pytest.approx(coef, rel=1e-4, abs=1e-12)
    assert fit.residual_rel_rms < 1e-6 and fit.residual_rel_max < 1e-6 and fit.fitted_runs == 6


def test_exchange_fit_clamps_at_zero_and_reports_its_residual():
    runs = _synthetic_runs("allreduce", 0.001, 0.0, 1.0, 0.0)
    for r in runs:                                # exchange that shrinks with contention: g would be negative
        r["exchange_s_per_iter"] *= 1 - 0.02 * r["link"]["contention"]
    fit = fit_exchange("allreduce", runs, SIZES)
    assert min(fit.per_reduction_s, fit.contention_s, fit.bandwidth_factor, fit.cpu_s_per_byte) >= 0
    assert fit.contention_s == 0 and 0 < fit.residual_rel_rms <= fit.residual_rel_max < 0.2


def test_dedicated_hosts_take_the_fewest_workers_probe_and_the_lowest_rate_efficiency():
    probes = [_probe(2, 1, hop=80e-6, op=200e-6, eff=0.95), _probe(2, 10, hop=120e-6, op=400e-6, eff=0.3),
              _probe(8, 1, hop=900e-6, op=9e-3), _probe(8, 10, hop=900e-6, op=9e-3)]
    hosts = DedicatedHosts.from_probes(probes)
    # hop: the least loaded point to point (80 us); op: the 2-worker ring minus its 2 hops, median over rates
    assert hosts.message_s == pytest.approx(80e-6)
    assert hosts.reduction_s["allreduce"] == pytest.approx(np.median([200e-6 + 2 * 0e-6, 400e-6 + 2 * 40e-6]))
    assert hosts.reduction_s["star"] == 0 and hosts.link_efficiency == pytest.approx(0.95)
    link = hosts.link("allreduce", 25)
    assert link.contention == 0 and link.bandwidth_Bps == pytest.approx(25e9 / 8 * 0.95)


def test_the_grid_ignores_contention_and_uses_the_probed_hop():
    fits = {m: fit_exchange(m, _synthetic_runs(m, 0.002, 0.003 * (m == "allreduce"), 1.2, 1e-9), SIZES)
            for m in ("star", "allreduce")}
    hosts = DedicatedHosts(50e-6, {"star": 0.0, "allreduce": 200e-6}, 0.9)
    grid = IterationModel(SIZES, c_img=0.02, overhead_s=0.01, fits=fits, hosts=hosts).grid(32)
    busy = {m: ExchangeFit(**{**f.__dict__, "contention_s": 1.0}) for m, f in fits.items()}
    assert IterationModel(SIZES, 0.02, 0.01, busy, hosts).grid(32) == grid     # g only acts through contention
    slower = DedicatedHosts(500e-6, hosts.reduction_s, 0.9)
    worse = IterationModel(SIZES, 0.02, 0.01, fits, slower).grid(32)
    assert worse["allreduce"]["weak"]["128"]["10"]["efficiency"] < grid["allreduce"]["weak"]["128"]["10"]["efficiency"]
    # by hand: allreduce, 128 executors, 10 Gbit, weak (16 images each)
    f, link = fits["allreduce"], hosts.link("allreduce", 10)
    x = SIZES.reductions * (f.per_reduction_s + 200e-6 + 254 * 50e-6) + (
        f.bandwidth_factor / link.bandwidth_Bps + f.cpu_s_per_byte) * link_bytes("allreduce", 128, SIZES)
    t1 = 0.02 * 16 + 0.01
    assert grid["allreduce"]["weak"]["128"]["10"]["efficiency"] == pytest.approx(t1 / (t1 + x), abs=1e-3)


def test_weak_scaling_of_a_ring_beats_the_star_at_scale():
    fits = {"star": ExchangeFit("star", 0.002, 0.0, 1.2), "allreduce": ExchangeFit("allreduce", 0.002, 0.0, 1.2)}
    hosts = DedicatedHosts(50e-6, {"star": 0.0, "allreduce": 200e-6}, 0.9)
    grid = IterationModel(SIZES, c_img=0.02, overhead_s=0.01, fits=fits, hosts=hosts).grid(32)
    for g in ("1", "10", "25"):
        assert grid["allreduce"]["weak"]["128"][g]["efficiency"] > grid["star"]["weak"]["128"][g]["efficiency"]
    assert set(grid["star"]["strong"]) == {"8", "32", "128"}
    assert set(grid["star"]["strong"]["8"]) == {"1", "10", "25"}
    assert set(grid["allreduce"]["weak"]["32"]["10"]) == {"efficiency", "speedup"}


def test_ip_and_tc_are_found_in_sbin_when_path_lacks_it(monkeypatch):
    """A root shell started with a bare PATH (env -i, cron) has no /usr/sbin: the bench still finds ip and tc."""
    from benchmarks.cluster import SBIN, missing_tools, tool_env

    env = tool_env({"PATH": "/usr/bin:/bin"})
    assert env["PATH"].split(":") == ["/usr/bin", "/bin", *SBIN]
    assert tool_env({"PATH": "/sbin:/usr/bin"})["PATH"].split(":") == ["/sbin", "/usr/bin", "/usr/local/sbin", "/usr/sbin"]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert missing_tools() == [t for t in ("ip", "tc") if not any(os.path.exists(f"{d}/{t}") for d in SBIN)]


def test_without_root_the_command_exits_2_with_one_line(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["bench", "cluster", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]


@pytest.mark.slow
def test_two_workers_tiny_counts_bytes_and_leaves_nothing_behind():
    from benchmarks.cluster import _sh, missing_tools, report, run_matrix

    if os.geteuid() != 0:
        pytest.skip("bench cluster needs root (network namespaces, veth links, tc)")
    if missing_tools():
        pytest.skip(f"bench cluster needs iproute2 ({', '.join(missing_tools())} not found)")

    runs, probes = run_matrix("tiny", (2,), (1,), ("star", "allreduce"), warmup=1, steps=2, print_fn=None)
    by_mode = {r["mode"]: r for r in runs}
    assert set(by_mode) == {"star", "allreduce"}
    for r in runs:
        assert r["worker_bytes_per_iter"] > 0 and r["exchange_s_per_iter"] > 0
    # star: every gradient passes the driver; all-reduce: only small reports do
    assert by_mode["allreduce"]["driver_bytes_per_iter"] < by_mode["star"]["driver_bytes_per_iter"] / 10
    # the idle link probe ran once for (N, rate) and fed every run's link
    (probe,) = probes
    assert (probe["workers"], probe["gbit"]) == (2, 1)
    assert probe["ring"]["tiny_s"] > 0 and probe["ring"]["bandwidth_Bps"] > 0
    assert probe["p2p"]["latency_s"] > 0 and probe["p2p"]["bandwidth_Bps"] > 0
    assert all(r["link"]["message_s"] == probe["p2p"]["latency_s"] and r["cores"] >= 1 for r in runs)
    result = report(runs, "tiny", probes)
    assert result["link_probe"]["2"]["1"] is probe
    assert all(r["predicted_exchange_s_per_iter"] > 0 for r in result["runs"])
    assert set(result["cost_model"]["allreduce"]["weak"]["128"]) == {"1", "10", "25"}
    left, links = _sh("ip", "netns", "list").stdout, _sh("ip", "-o", "link").stdout   # ip found as the bench finds it
    assert "tsg" not in left and "tsg" not in links
