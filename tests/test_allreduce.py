"""DFAGD with spark.reduction=allreduce: equal to star and the reference, repeatable, replica checks, faults, resume."""

import sys
import threading

import pytest
import torch

from models.config import ConfigError, resolve_config
from models.data import ImageSet, load_dataset
from models.step import G_PHASE, build_state, get_flat
from models.trainer import LocalGradSource, train
from spark_training.allreduce import (
    BucketedSum,
    Collective,
    fingerprint,
    host_groups,
    pack_state,
    unpack_state,
)
from spark_training.dfagd import DFAGDError, DFAGDHooks, DFAGDStats, shard, train_dfagd, validate_dfagd
from spark_training.worker import PartitionWorker

STEPS = 3


def cfg(workers: int, reduction: str = "allreduce", **over):
    base = {"train.log_every": 1, "train.sample_every": 0, "train.checkpoint_every": 0, "train.steps": STEPS,
            "data.partitions": 4, "spark.workers": workers, "spark.master": f"local[{workers}]",
            "spark.reduction": reduction}
    return resolve_config("tiny", {**base, **over})


def _flat(state) -> torch.Tensor:
    return torch.cat([get_flat(state.G), get_flat(state.D), get_flat(state.G_ema)])


def _assert_close(a, b, atol=1e-5):
    x, y = _flat(a), _flat(b)
    assert torch.allclose(x, y, atol=atol, rtol=0), f"max diff {(x - y).abs().max():.3g}"


# -- pure pieces, no Spark ----------------------------------------------------------------------------------------------
def test_host_groups_keep_rank_order():
    assert host_groups(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    assert host_groups(["h"] * 3) == [[0, 1, 2]]


def test_pack_and_unpack_round_trip_the_whole_training_state(digits16):
    c = cfg(1, **{"train.steps": 2})
    trained = train(build_state(c), LocalGradSource(digits16, c), print_fn=None)
    meta, arrays = pack_state(trained)
    fresh = build_state(c)
    unpack_state(fresh, meta, arrays)
    assert fresh.step == trained.step == 2
    assert torch.equal(_flat(fresh), _flat(trained))
    for name in ("opt_g", "opt_d"):
        a, b = getattr(fresh, name).state_dict()["state"], getattr(trained, name).state_dict()["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
    # one more step from each gives the same weights: nothing the optimizer needs was lost
    train(fresh, LocalGradSource(digits16, c), steps=3, print_fn=None)
    train(trained, LocalGradSource(digits16, c), steps=3, print_fn=None)
    assert torch.equal(_flat(fresh), _flat(trained))


def test_fingerprint_sees_one_flipped_bit():
    m = torch.nn.Linear(4, 3)
    before = fingerprint([m])
    with torch.no_grad():
        w = m.weight.view(-1)
        w[5] = torch.nextafter(w[5], torch.tensor(float("inf")))
    assert not torch.equal(before, fingerprint([m]))


def _threads(hosts: list[str], body):
    """Run body(collective) in one thread per rank over a real TCPStore and gloo groups on 127.0.0.1."""
    import datetime

    import torch.distributed as dist

    master = dist.TCPStore("127.0.0.1", 0, len(hosts), is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=60))
    out, errors = {}, []

    def run(rank):
        try:
            store = master if rank == 0 else dist.TCPStore("127.0.0.1", master.port, len(hosts), is_master=False,
                                                            timeout=datetime.timedelta(seconds=60))
            out[rank] = body(Collective(store, rank, hosts, "gloo", "127.0.0.1"))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return out


@pytest.mark.parametrize("hosts", [["h"] * 4, ["a", "a", "b", "b"], ["a", "b", "a", "c"], ["a", "b", "c", "d"]])
def test_per_host_all_reduce_sums_like_the_flat_one(hosts):
    values = [torch.randn(1000, generator=torch.Generator().manual_seed(r)) for r in range(len(hosts))]

    def body(col):
        t = values[col.rank].clone()
        col.allreduce_sum(t)
        return col.hierarchical, t

    out = _threads(hosts, body)
    expect = torch.stack(values).sum(0)
    assert out[0][0] == (len(set(hosts)) not in (1, len(hosts)))   # per host only when it can save traffic
    for r in out:
        assert torch.allclose(out[r][1], expect, atol=1e-5)
        assert torch.equal(out[r][1], out[0][1])                        # every replica gets the same bits


@pytest.mark.parametrize("wire", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hosts", [["h"] * 3, ["a", "a", "b"]])
def test_buckets_sum_like_one_all_reduce_whatever_order_the_slices_become_final(hosts, wire):
    sizes = [5, 0, 300, 7, 1000, 2]                       # a 64-byte bucket holds 16 float32 or 32 bf16 elements
    values = [torch.randn(sum(sizes), generator=torch.Generator().manual_seed(r)) for r in range(len(hosts))]

    def body(col):
        s = BucketedSum(sizes, col, wire, 64, torch.device("cpu"))
        assert len(s.buckets) == -(-sum(sizes) // (64 // s.wire.element_size()))
        out = []
        for update in range(2):                            # buffers are reused: a second update sums afresh
            s.begin()
            order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(10 * col.rank + update))
            mine = values[col.rank] * (update + 1)
            for j in order.tolist():                       # each rank finishes its slices in its own order
                s.final(j, mine[s.offsets[j]:s.offsets[j] + sizes[j]])
            tail = torch.tensor([float(col.rank)])
            out.append((s.finish(tail).clone(), tail.item()))
        return out

    out = _threads(hosts, body)
    for update in range(2):
        addends = [(v * (update + 1)).to(wire) for v in values]
        expect = torch.stack(addends).float().sum(0) / len(hosts)
        for r in out:
            mean, tail = out[r][update]
            assert tail == sum(range(len(hosts)))
            assert torch.allclose(mean, expect, atol=1e-5 if wire == torch.float32 else 0.05)
            assert torch.equal(mean, out[0][update][0])     # every replica gets the same bits


@pytest.mark.parametrize("phase", [0, G_PHASE])
@pytest.mark.parametrize("partitions", [1, 2])
def test_gradient_finished_inside_the_backward_pass_has_the_same_bits(digits16, partitions, phase):
    c = cfg(1, **{"data.partitions": partitions})
    blocks = {p: ImageSet(*arrays, f"partition {p}") for p, arrays in shard(digits16, c)[0][1].items()}
    pw = PartitionWorker(c.to_dict(), len(digits16), blocks)
    plain, stats = pw.gradient(3, phase)
    plain = plain.clone()
    reported: dict[int, torch.Tensor] = {}
    hooked, hooked_stats = pw.gradient(3, phase, on_final=lambda j, v: reported.setdefault(j, v.clone()))
    params = list((pw.G if phase == G_PHASE else pw.D).parameters())
    assert sorted(reported) == list(range(len(params)))   # every parameter reported once
    assert torch.equal(hooked, plain) and hooked_stats == stats
    assert torch.equal(torch.cat([reported[j] for j in range(len(params))]), plain)


def test_cuda_allreduce_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"^train\.device: 'cuda' with spark.reduction 'allreduce'"):
        validate_dfagd(cfg(2, **{"train.device": "cuda"}))


def test_reduction_is_a_strict_choice():
    with pytest.raises(ConfigError, match=r"^spark\.reduction: expected 'star' or 'allreduce'"):
        cfg(2, reduction="ring")


def test_batch_per_worker_sets_the_global_batch_and_excludes_an_explicit_one():
    c = resolve_config("demo", {"train.batch_per_worker": 8, "spark.workers": 4})
    assert (c.train.batch_size, c.partitions) == (32, 4)
    assert c.updated({"spark.workers": 8}).train.batch_size == 64            # weak scaling follows the workers
    assert resolve_config("demo").train.batch_size == 32                     # the preset's value otherwise
    for bad in ({"train.batch_per_worker": 8, "train.batch_size": 32}, {"train.batch_size": 32}):
        with pytest.raises(ConfigError, match=r"^train\.batch_per_worker: cannot be combined with an explicit "
                                              r"train\.batch_size"):
            if "train.batch_per_worker" in bad:
                resolve_config("demo", bad)
            else:
                c.updated(bad)
    with pytest.raises(ConfigError, match=r"^train\.batch_per_worker: expected >= 1, got 0$"):
        resolve_config("demo", {"train.batch_per_worker": 0})


# -- on a real local Spark ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", 16, 1, limit=256)


@pytest.mark.slow
def test_four_executors_on_local_cluster_match_star_and_the_reference(digits16, reference):
    from pyspark import SparkContext

    from spark_training.session import spark_session

    # before the module's local[2] session exists: getOrCreate would hand that one back
    assert SparkContext._active_spark_context is None, "run this test before the local[2] ones"
    master = {"spark.master": "local-cluster[4,1,1024]"}
    with spark_session(cfg(4, **master).spark, "transsrgan-allreduce-cluster") as session:
        a = train_dfagd(cfg(4, **master), spark=session, data=digits16, print_fn=None)
        b = train_dfagd(cfg(4, **master), spark=session, data=digits16, print_fn=None)
        star = train_dfagd(cfg(4, "star", **master), spark=session, data=digits16, print_fn=None)
    _assert_close(a, reference)
    _assert_close(a, star)
    assert torch.equal(_flat(a), _flat(b))


@pytest.fixture(scope="module")
def spark():
    from spark_training.session import spark_session

    with spark_session(cfg(2).spark, "transsrgan-allreduce-tests") as session:
        yield session


@pytest.fixture(scope="module")
def reference(digits16):
    return train(build_state(cfg(1)), LocalGradSource(digits16, cfg(1)), print_fn=None)


def test_allreduce_equals_star_and_the_reference_and_repeats_bitwise(spark, digits16, reference):
    lines: list[str] = []
    stats = DFAGDStats()
    a = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=lines.append, stats_out=stats)
    b = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None)
    star = train_dfagd(cfg(2, "star"), spark=spark, data=digits16, print_fn=None)
    assert a.step == STEPS and stats.iterations == STEPS and stats.reductions == STEPS * 2
    assert [h["step"] for h in a.history] == [1.0, 2.0, 3.0]
    assert sum(ln.startswith("step ") for ln in lines) == STEPS          # rank 0's progress lines, relayed once
    assert any("gloo all-reduce" in ln for ln in lines)
    _assert_close(a, reference)
    _assert_close(a, star)
    assert torch.equal(_flat(a), _flat(b))                                # the same mode repeats bitwise


@pytest.fixture(scope="module")
def one_buffer(spark, digits16):
    """The all-reduce of one buffer per network after the backward pass (the tiny preset's gradients < 1 MiB)."""
    return train_dfagd(cfg(2, **{"spark.overlap": False}), spark=spark, data=digits16, print_fn=None)


@pytest.mark.parametrize("over", [{"spark.bucket_mb": 0.01, "spark.overlap": False},     # 39 + 17 buckets
                                  {"spark.bucket_mb": 0.01, "spark.overlap": True},
                                  {"spark.bucket_mb": 25.0, "spark.overlap": True}])
def test_buckets_and_overlap_match_the_reference_and_the_one_buffer_bitwise(spark, digits16, reference, one_buffer,
                                                                            over):
    # train.log_every=1: every step all-gathers the replicas' fingerprints, so they stayed bitwise equal
    state = train_dfagd(cfg(2, **over), spark=spark, data=digits16, print_fn=None)
    _assert_close(state, reference)
    assert torch.equal(_flat(state), _flat(one_buffer))    # at N = 2 a sum is one addition, in any slicing


def test_bfloat16_on_the_wire_stays_near_float32_and_repeats_bitwise(spark, digits16, reference):
    c = cfg(2, **{"spark.exchange_dtype": "bfloat16", "spark.bucket_mb": 0.01, "spark.overlap": True})
    a = train_dfagd(c, spark=spark, data=digits16, print_fn=None)
    b = train_dfagd(c, spark=spark, data=digits16, print_fn=None)
    assert torch.equal(_flat(a), _flat(b))
    _assert_close(a, reference, atol=2e-3)                 # 8 bits of mantissa, 3 Adam steps of lr 2e-4
    assert not torch.equal(_flat(a), _flat(reference))


class CorruptReplica:
    """wrap_source: rank 1 adds 1e-3 to one D weight of its replica before step `step`'s first D update."""

    def __init__(self, source, step: int = 1):
        self.source, self.step = source, step

    def d_grad(self, state, step, k):
        if self.source.rank == 1 and step == self.step and k == 0:
            with torch.no_grad():
                next(state.D.parameters()).view(-1)[0] += 1e-3
        return self.source.d_grad(state, step, k)

    def g_grad(self, state, step):
        return self.source.g_grad(state, step)


@pytest.fixture(autouse=True, scope="module")
def _wrappers_by_value():
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # executors need not import tests/


def test_a_corrupted_replica_stops_the_run(spark, digits16):
    with pytest.raises(DFAGDError, match=r"replicas of rank\(s\) \[1\] differ from rank 0's at step 1"):
        train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None, hooks=DFAGDHooks(wrap_source=CorruptReplica))


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_weights_equal_a_clean_run(spark, digits16):
    from chaos.faults import KillReplica  # the chaos scenario's fault: rank 1 SIGKILLs itself in step 1

    clean = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None)
    stats = DFAGDStats()
    state = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None, stats_out=stats,
                        hooks=DFAGDHooks(wrap_source=KillReplica.at(rank=1, step=1)))
    assert stats.reconnects >= 1, "the stage was not retried"
    assert [h["step"] for h in state.history] == [1.0, 2.0, 3.0]          # no step logged twice
    assert torch.equal(_flat(state), _flat(clean))


def test_resume_from_a_checkpoint_of_either_mode_reaches_the_uninterrupted_weights(spark, digits16, tmp_path):
    from models.checkpoint import load_checkpoint, save_checkpoint

    clean = train_dfagd(cfg(2), spark=spark, data=digits16, print_fn=None)
    saved: list[int] = []

    def on_checkpoint(state, _metrics):
        saved.append(state.step)
        save_checkpoint(state, tmp_path / f"{state.config.spark.reduction}.pt")

    for mode in ("allreduce", "star"):                      # one checkpoint format: interrupted after step 2
        train_dfagd(cfg(2, mode, **{"train.steps": 2, "train.checkpoint_every": 2}), spark=spark, data=digits16,
                    print_fn=None, on_checkpoint=on_checkpoint)
    assert saved == [2, 2]
    for mode in ("allreduce", "star"):
        state = load_checkpoint(tmp_path / f"{mode}.pt", cfg(2))
        resumed = train_dfagd(cfg(2), state=state, spark=spark, data=digits16, print_fn=None)
        assert resumed.step == STEPS and [h["step"] for h in resumed.history] == [1.0, 2.0, 3.0]
        _assert_close(resumed, clean)
    assert torch.equal(_flat(train_dfagd(cfg(2), state=load_checkpoint(tmp_path / "allreduce.pt", cfg(2)),
                                         spark=spark, data=digits16, print_fn=None)), _flat(clean))
