"""The benchmark's peer on Spark: data-parallel PyTorch with gloo, launched by pyspark's TorchDistributor.

Each of N ranks holds a full replica (model + optimizer, as DistributedDataParallel does), computes the
mean gradient of its 1/N slice of the global batch (the same partitions and noise slices as DFAGD), and
all-reduces it with torch.distributed (gloo) before every update. The all-reduce is done on the flat
gradient by hand instead of through the DistributedDataParallel wrapper, because DDP's hooks cannot follow
the gradient penalty's double backward through three D forwards; the communication is the same (one
all-reduce of all gradients per update, DDP would bucket it).
"""

import sys
import time
from typing import Any

import torch


def ddp_rank_main(config: dict[str, Any], warmup: int, steps: int, threads: int) -> dict[str, float]:
    """One rank (run under torchrun by TorchDistributor); every rank returns the same timing dict."""
    # Imports live here: this function travels by value (run_ddp), and names that only the nested class body
    # reads (its annotations) would not travel with it as module globals.
    import torch.distributed as dist

    from models.config import config_from_dict
    from models.data import ImageSet, load_dataset, partition_bounds
    from models.step import G_PHASE, GANState, build_state
    from models.trainer import train
    from spark_training.worker import PartitionWorker, owned_partitions

    torch.set_num_threads(threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = config_from_dict(config).updated({"spark.workers": world})
    data = load_dataset(cfg.data.source, cfg.model.resolution, cfg.model.channels, cfg.data.limit)
    bounds = partition_bounds(len(data), cfg.partitions)
    blocks = {p: ImageSet(data.images[a:b], data.labels[a:b] if data.labels is not None else None, "rank")
              for p, (a, b) in enumerate(bounds) if p in owned_partitions(rank, world, cfg.partitions)}
    state = build_state(cfg)                       # same seed => identical replicas on every rank
    pw = PartitionWorker(cfg.to_dict(), len(data), blocks, "cpu")
    pw.G, pw.D = state.G, state.D                  # compute on the replica the optimizer updates

    class AllReduceSource:
        comm_s = 0.0

        def _reduce(self, grad: torch.Tensor, stats: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
            t = time.perf_counter()
            dist.all_reduce(grad)
            AllReduceSource.comm_s += time.perf_counter() - t
            return grad.div_(world), stats

        def d_grad(self, state: GANState, step: int, k: int):
            return self._reduce(*pw.gradient(step, k))

        def g_grad(self, state: GANState, step: int):
            return self._reduce(*pw.gradient(step, G_PHASE))

    source = AllReduceSource()
    train(state, source, steps=warmup, print_fn=None)
    dist.barrier()
    AllReduceSource.comm_s = 0.0
    t0 = time.perf_counter()
    train(state, source, steps=warmup + steps, print_fn=None)
    dist.barrier()
    out = torch.tensor([time.perf_counter() - t0, AllReduceSource.comm_s], dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)     # the same answer from every rank
    dist.destroy_process_group()
    return {"wall_s": float(out[0]), "allreduce_s": float(out[1])}


def run_ddp(config: dict[str, Any], workers: int, warmup: int, steps: int, threads: int) -> dict[str, float]:
    """TorchDistributor(local_mode=True, use_gpu=False) with `workers` processes; needs an active SparkSession."""
    from pyspark import cloudpickle
    from pyspark.ml.torch.distributor import TorchDistributor

    # The ranks unpickle ddp_rank_main in fresh torchrun processes, where benchmarks/ (not installed, never
    # shipped to Spark) may not be importable: send this module's code by value; models/ and spark_training/
    # are imported there as usual.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        dist = TorchDistributor(num_processes=workers, local_mode=True, use_gpu=False)
        return dist.run(ddp_rank_main, config, warmup, steps, threads)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
