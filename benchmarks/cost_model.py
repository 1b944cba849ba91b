"""A cost model of one DFAGD iteration, fitted to measured runs, that predicts speed-up on bigger clusters.

    T(N, bw) = compute(N) + exchange(N, bytes, bw) + scheduling(N)                       seconds / iteration
    compute(N)    = c0 + c_img * b(N)              b(N) = max(B / N, 1) images per worker (strong scaling
                                                   of the global batch B while it divides; >= 1 image each)
    exchange(N)   = x0 + x1 * N                    serialization + loopback transfer, fitted
                  + N * bytes_per_worker / bw      the driver's NIC carries every worker's traffic (star)
                  + reductions * rtt               one round trip per synchronous reduction
    scheduling(N) = s0 + s1 * log2(N)              waiting for the slowest of N workers (straggler ~ log N)
    throughput(N) = N * b(N) / T(N);   speedup(N) = throughput(N) / throughput(1);   efficiency = speedup / N

Every coefficient is >= 0 (a negative intercept or slope is noise, not a cost), and the fit reports its RMS
residual on the runs it was fitted to, so a prediction carries how well the model explained the measurements.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Measurement:
    workers: int
    compute_s: float          # per iteration (slowest worker, summed over the iteration's reductions)
    exchange_s: float
    scheduling_s: float
    compute_cpu_s: float | None = None   # CPU time of that compute; fitted instead when given (shared machines)


@dataclass
class CostModel:
    global_batch: int
    reductions: int           # per iteration: n_critic + 1
    bytes_per_worker: float   # per iteration, both directions, one worker
    c0: float
    c_img: float
    x0: float
    x1: float
    s0: float
    s1: float
    rtt_s: float = 200e-6     # assumed LAN round trip per reduction
    residual_s: float = 0.0   # RMS of (fitted - measured) s/iter over the runs fitted, network terms excluded
    fitted_runs: int = 0      # runs the fit saw; with 2 every line fits exactly unless clamped

    def images_per_worker(self, n: int) -> float:
        return max(self.global_batch / n, 1.0)

    def iteration_s(self, n: int, network_gbit: float) -> float:
        bw = network_gbit * 1e9 / 8                                     # bytes / s
        compute = self.c0 + self.c_img * self.images_per_worker(n)
        exchange = self.x0 + self.x1 * n + n * self.bytes_per_worker / bw + self.reductions * self.rtt_s
        scheduling = self.s0 + self.s1 * math.log2(n)
        return compute + max(exchange, 0.0) + max(scheduling, 0.0)

    def measured_machine_s(self, n: int) -> float:
        """The fitted s/iter on the measured machine: the fitted terms only (no bandwidth or round-trip terms)."""
        return (self.c0 + self.c_img * self.images_per_worker(n) + self.x0 + self.x1 * n
                + self.s0 + self.s1 * math.log2(n))

    def throughput(self, n: int, network_gbit: float) -> float:
        return n * self.images_per_worker(n) / self.iteration_s(n, network_gbit)

    def predict(self, n: int, network_gbit: float) -> dict[str, float]:
        speedup = self.throughput(n, network_gbit) / self.throughput(1, network_gbit)
        return {"executors": n, "network_gbit": network_gbit, "speedup": round(speedup, 3),
                "efficiency": round(speedup / n, 3), "s_per_iter": round(self.iteration_s(n, network_gbit), 4)}

    def assumptions(self) -> list[str]:
        mb = self.bytes_per_worker / 1e6
        return [
            "each executor runs one DFAGD worker like the measured ones, on dedicated cores: compute is fitted to the "
            "workers' CPU time (on a shared machine their wall time also contains other tenants' work)",
            f"global batch {self.global_batch} split evenly; beyond {self.global_batch} executors each gets 1 image "
            "(the global batch grows), so speed-up is a throughput (images/s) ratio",
            f"every iteration moves {mb:.1f} MB per worker through the driver (weights out, gradients back, "
            "star topology, no compression); the driver's link is the bottleneck",
            f"{self.reductions} synchronous reductions per iteration, {self.rtt_s * 1e6:.0f} us round trip each",
            "straggler wait grows with log2(executors), fitted from the measured scheduling time",
            "fitted (all >= 0): " + ", ".join(f"{k}={v:.4g}" for k, v in asdict(self).items()
                                              if k in ("c0", "c_img", "x0", "x1", "s0", "s1")),
            f"fit residual: {self.residual_s:.4g} s/iter RMS on the {self.fitted_runs} measured runs"
            + (" (each fitted line passes through 2 points unless a coefficient was clamped: this says little "
               "about the model)" if self.fitted_runs <= 2 else ""),
        ]


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x with a, b >= 0 (y >= 0 is a duration); one distinct x gives b = 0.

    A negative coefficient is fixed at 0 and the other one refitted: b < 0 gives the mean (a flat line),
    a < 0 the line through the origin.
    """
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(set(xs)) < 2:
        return max(float(y.mean()), 0.0), 0.0
    A = np.stack([np.ones(len(x)), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    if b < 0:
        return max(float(y.mean()), 0.0), 0.0
    if a < 0:
        return 0.0, max(float(x @ y / (x @ x)), 0.0)
    return float(a), float(b)


def fit(measurements: list[Measurement], global_batch: int, reductions: int, bytes_per_worker: float) -> CostModel:
    """Fit c0/c_img, x0/x1, s0/s1 to DFAGD runs with different worker counts (at least one)."""
    if not measurements:
        raise ValueError("cost model: need at least one DFAGD measurement")
    ns = [m.workers for m in measurements]
    compute = [m.compute_cpu_s if m.compute_cpu_s is not None else m.compute_s for m in measurements]
    c0, c_img = _fit_line([global_batch / n for n in ns], compute)
    if c_img == 0:                      # compute did not shrink with N (noise): attribute all of it to the images
        c0, c_img = 0.0, float(np.mean([c * m.workers / global_batch for c, m in zip(compute, measurements)]))
    x0, x1 = _fit_line([float(n) for n in ns], [m.exchange_s for m in measurements])
    s0, s1 = _fit_line([math.log2(n) for n in ns], [m.scheduling_s for m in measurements])
    model = CostModel(global_batch, reductions, bytes_per_worker, c0, c_img, x0, x1, s0, s1,
                      fitted_runs=len(measurements))
    errors = [model.measured_machine_s(m.workers) - (c + m.exchange_s + m.scheduling_s)
              for c, m in zip(compute, measurements)]
    model.residual_s = float(np.sqrt(np.mean(np.square(errors))))
    return model


def bytes_per_worker(g_params: int, d_params: int, n_critic: int, exchange_dtype: str = "float32") -> float:
    """Per iteration: G weights once + D weights n_critic times out (float32); the same gradients back."""
    grad_bytes = 4 if exchange_dtype == "float32" else 2
    return (g_params + n_critic * d_params) * (4 + grad_bytes)


def predict_grid(model: CostModel, executors: tuple[int, ...] = (8, 32, 128),
                 networks_gbit: tuple[float, ...] = (1, 10)) -> list[dict[str, float]]:
    return [model.predict(n, g) for n in executors for g in networks_gbit]


# -- exchange per reduction mode over a network of hosts, fitted to the emulated cluster (`bench cluster`) --------------
#
#   exchange(mode, N, link) = R * (r0 + op + steps(mode, N) * (hop + g * contention))
#                           + (k / bw + c) * link_bytes(mode, N)                                  seconds / iteration
#   R = n_critic + 1 reductions; steps = sequential messages of one reduction (star: request + reply = 2; ring
#   all-reduce: 2 (N - 1)); link_bytes = what the busiest link carries in one direction per iteration (star: the
#   driver's, N x every reduction's bytes; ring: each worker's, 2 (N - 1) / N x every reduction's bytes).
#   Measured, not fitted (a `Link`, from bench cluster's idle link probe): hop = one small message's one-way time
#   (half a gloo point-to-point round trip), op = what an idle all-reduce of a tiny tensor takes beyond its
#   2 (N - 1) hops (issuing the collective: gloo's work thread, Python; 0 for star, whose path is Spark's), bw = the
#   bandwidth a reduction-sized transfer gets; contention = max(0, processes - cores) / cores of the machine the run
#   shares (0 on dedicated hosts). Fitted per mode, all >= 0: r0 (per reduction: flattening, Spark's task round
#   trip for star), g (the extra wait per message per unit of contention: a hop waits for its receiver to get a
#   core), k (1 / the share of the probed bandwidth a training transfer gets) and c (CPU seconds per byte: copies,
#   (de)serialization, sums).
MODES = ("star", "allreduce")


@dataclass
class NetSizes:
    """What one iteration moves: the networks' float32 gradients, one reduction per D update and one for G."""

    g_params: int
    d_params: int
    n_critic: int

    @property
    def reductions(self) -> int:
        return self.n_critic + 1

    @property
    def reduced_bytes(self) -> float:               # every reduction of one iteration, one copy
        return 4.0 * (self.g_params + self.n_critic * self.d_params)


def link_bytes(mode: str, n: int, sizes: NetSizes) -> float:
    """Bytes per iteration on the busiest link, busier direction (full duplex)."""
    if n <= 1:
        return 0.0
    return n * sizes.reduced_bytes if mode == "star" else 2.0 * (n - 1) / n * sizes.reduced_bytes


def message_steps(mode: str, n: int) -> int:
    return 0 if n <= 1 else (2 if mode == "star" else 2 * (n - 1))


def contention(processes: int, cores: int) -> float:
    """Processes beyond the cores, per core: how many others a message's receiver may wait behind for a core."""
    return max(0, processes - cores) / max(cores, 1)


@dataclass
class Link:
    """What a host's link costs, measured idle: one message's hop, a reduction's fixed part and the bandwidth;
    plus the CPU contention of the run on it."""

    message_s: float
    bandwidth_Bps: float
    contention: float = 0.0
    reduction_s: float = 0.0


def probed_link(mode: str, probe: dict, processes: int, cores: int) -> Link:
    """The link an emulated run had: the idle probe at its N and rate (ring for allreduce, point to point for star;
    one worker has no ring) and the contention of its processes on this machine's cores."""
    hop, ring = probe["p2p"]["latency_s"], probe.get("ring")
    if mode == "allreduce" and ring:
        op = max(ring["tiny_s"] - message_steps(mode, probe["workers"]) * hop, 0.0)
        return Link(hop, ring["bandwidth_Bps"], contention(processes, cores), op)
    return Link(hop, probe["p2p"]["bandwidth_Bps"], contention(processes, cores))


@dataclass
class DedicatedHosts:
    """A real cluster: one host per executor with its own cores (contention 0), the idle probe's hop and per-
    reduction cost, and its link efficiency (effective / nominal bandwidth) applied to the nominal rate."""

    message_s: float                     # one hop
    reduction_s: dict[str, float]        # per mode: the idle fixed part of one reduction
    link_efficiency: float
    wire_delay_s: float = 0.0            # added per message (a switch and cables the veth does not have)

    def link(self, mode: str, gbit: float) -> Link:
        return Link(self.message_s + self.wire_delay_s, gbit * 1e9 / 8 * self.link_efficiency, 0.0,
                    self.reduction_s.get(mode, 0.0))

    @classmethod
    def from_probes(cls, probes: list[dict]) -> "DedicatedHosts":
        """The hop: the smallest point-to-point one-way time over all probes (always the same two processes; other
        load only adds time). The fixed part of an all-reduce: from the probes with the fewest workers (the fewest
        processes per core, closest to a host of its own), the median over their rates. Link efficiency: the
        point-to-point probe at the lowest rate (where the link, not this machine's CPU, limits), at most 1."""
        hop = min(p["p2p"]["latency_s"] for p in probes)
        fewest = min(p["workers"] for p in probes)
        ops = [max(p["ring"]["tiny_s"] - message_steps("allreduce", fewest) * hop, 0.0)
               for p in probes if p["workers"] == fewest and p.get("ring")]
        lowest = min(probes, key=lambda p: (p["gbit"], p["workers"]))
        eff = min(lowest["p2p"]["bandwidth_Bps"] / (lowest["gbit"] * 1e9 / 8), 1.0)
        return cls(hop, {"star": 0.0, "allreduce": float(np.median(ops)) if ops else 0.0}, eff)


@dataclass
class ExchangeFit:
    mode: str
    per_reduction_s: float
    contention_s: float          # g: extra seconds per message per unit of contention
    bandwidth_factor: float      # k
    cpu_s_per_byte: float = 0.0  # c
    fitted_runs: int = 0
    residual_rel_rms: float = 0.0    # RMS of predicted / measured - 1 over the fitted runs
    residual_rel_max: float = 0.0    # the largest |predicted / measured - 1|

    def exchange_s(self, n: int, sizes: NetSizes, link: Link) -> float:
        if n <= 1:
            return 0.0
        per_message = link.message_s + self.contention_s * link.contention
        per_reduction = self.per_reduction_s + link.reduction_s + message_steps(self.mode, n) * per_message
        return (sizes.reductions * per_reduction
                + (self.bandwidth_factor / link.bandwidth_Bps + self.cpu_s_per_byte) * link_bytes(self.mode, n, sizes))


def fit_exchange(mode: str, runs: list[dict], sizes: NetSizes) -> ExchangeFit:
    """Non-negative least squares of the exchange model to runs {workers, exchange_s_per_iter, link: Link fields} of
    one mode, weighted by 1/measured so that small and large exchanges count alike (the target is a relative error).
    The probed hop and per-reduction latencies are known terms (subtracted), not coefficients."""
    from scipy.optimize import nnls

    rows, ys = [], []
    for r in runs:
        n, link, measured = r["workers"], Link(**r["link"]), r["exchange_s_per_iter"]
        w = 1.0 / max(measured, 1e-6)
        steps, moved = message_steps(mode, n), link_bytes(mode, n, sizes)
        known = sizes.reductions * (link.reduction_s + steps * link.message_s)
        # star: contention (N + 2 - cores) / cores grows like the driver's bytes (N x a reduction), so the two
        # cannot be told apart here; star's two messages per reduction ride Spark's task path (r0), and the
        # bytes keep it (conservative: c stays on dedicated hosts, g would not)
        crowd = 0.0 if mode == "star" else sizes.reductions * steps * link.contention
        rows.append([w * f for f in (sizes.reductions, crowd, moved / link.bandwidth_Bps, moved)])
        ys.append(w * (measured - known))
    coef, _ = nnls(np.asarray(rows), np.asarray(ys))
    fit = ExchangeFit(mode, *(float(c) for c in coef), fitted_runs=len(runs))
    errors = [fit.exchange_s(r["workers"], sizes, Link(**r["link"])) / max(r["exchange_s_per_iter"], 1e-9) - 1
              for r in runs]
    fit.residual_rel_rms = float(np.sqrt(np.mean(np.square(errors)))) if errors else 0.0
    fit.residual_rel_max = float(np.max(np.abs(errors))) if errors else 0.0
    return fit


@dataclass
class IterationModel:
    """s/iter = compute + exchange(mode) + overhead; compute = c_img x images per worker (measured or stated); the
    exchange on dedicated hosts (no contention, the probe's latency and link efficiency)."""

    sizes: NetSizes
    c_img: float                 # compute seconds per image of a worker's slice, per iteration
    overhead_s: float            # per iteration outside compute and exchange (optimizer step, scheduling)
    fits: dict[str, ExchangeFit]
    hosts: DedicatedHosts

    def iteration_s(self, mode: str, n: int, gbit: float, images_per_worker: float) -> float:
        exchange = self.fits[mode].exchange_s(n, self.sizes, self.hosts.link(mode, gbit))
        return self.c_img * images_per_worker + exchange + self.overhead_s

    def scaling(self, mode: str, kind: str, n: int, gbit: float, global_batch: int) -> dict[str, float]:
        """strong: the global batch split over n (>= 1 image each); weak: each worker keeps global_batch / 2
        images (the N = 2 slice). Against one exchange-free worker on the same work per image."""
        per = max(global_batch / n, 1.0) if kind == "strong" else global_batch / 2
        t_n = self.iteration_s(mode, n, gbit, per)
        t_1 = self.c_img * per * (n if kind == "strong" else 1) + self.overhead_s
        if kind == "strong":
            speedup = (n * per / t_n) / (n * per / t_1)          # throughput ratio (images / s)
        else:
            speedup = n * t_1 / t_n
        return {"efficiency": round(speedup / n, 3), "speedup": round(speedup, 3)}

    def grid(self, global_batch: int, executors=(8, 32, 128), gbits=(1, 10, 25)) -> dict:
        return {mode: {kind: {str(n): {f"{g:g}": self.scaling(mode, kind, n, g, global_batch) for g in gbits}
                              for n in executors} for kind in ("strong", "weak")} for mode in self.fits}
