"""Partitioned, stateless data order: which images partition p contributes to D update t (t = step*n_critic + k).

The dataset is split into P contiguous partitions (like an RDD). Each partition walks its own stream of
per-epoch permutations, seeded by (seed, partition, epoch), and gives b = B/P images per update. The global
batch is the concatenation over partitions, so 1 process or N Spark workers see the same batch; and the
position in the data order is a pure function of the update counter, so resuming needs only the step.
"""

import numpy as np


def partition_bounds(n_items: int, partitions: int) -> list[tuple[int, int]]:
    """[start, stop) of each contiguous partition; sizes differ by at most one."""
    if partitions < 1:
        raise ValueError(f"data.partitions: expected >= 1, got {partitions}")
    if n_items < partitions:
        raise ValueError(f"data: {n_items} images cannot fill {partitions} partitions; expected >= {partitions}")
    edges = np.linspace(0, n_items, partitions + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class PartitionedSampler:
    def __init__(self, n_items: int, partitions: int, batch_size: int, seed: int):
        if batch_size % partitions:
            raise ValueError(f"train.batch_size: expected a multiple of data.partitions ({partitions}), got {batch_size}")
        self.bounds = partition_bounds(n_items, partitions)
        self.partitions = partitions
        self.per_partition = batch_size // partitions
        self.seed = seed
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, partition: int, epoch: int) -> np.ndarray:
        key = (partition, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 64:
                self._perm_cache.clear()
            start, stop = self.bounds[partition]
            rng = np.random.default_rng([self.seed, partition, epoch])
            self._perm_cache[key] = rng.permutation(stop - start)
        return self._perm_cache[key]

    def local_indices(self, update: int, partition: int) -> np.ndarray:
        """Indices into the partition (0-based within it) for this update."""
        start, stop = self.bounds[partition]
        n = stop - start
        b = self.per_partition
        pos = update * b
        out = np.empty(b, dtype=np.int64)
        filled = 0
        while filled < b:
            epoch, offset = divmod(pos + filled, n)
            take = min(b - filled, n - offset)
            out[filled:filled + take] = self._perm(partition, epoch)[offset:offset + take]
            filled += take
        return out

    def global_indices(self, update: int, partition: int) -> np.ndarray:
        return self.local_indices(update, partition) + self.bounds[partition][0]

    def batch_indices(self, update: int) -> np.ndarray:
        """The whole global batch, partition slices in order."""
        return np.concatenate([self.global_indices(update, p) for p in range(self.partitions)])
