"""Which examples a run sees: nested stratified subsets, and each epoch's seeded order."""
import numpy as np
import torch

from ...foundations import distributed
from ...foundations.errors import DataError


def nested_subset(labels: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """Indices of a stratified subset of `size` examples; for one seed, smaller subsets nest inside larger ones.

    Each class is shuffled; every example gets the key (rank in its class) / (class count), and the first
    `size` examples by that key are taken, so any prefix holds the classes in their proportions.
    """
    n = len(labels)
    if size is None or size == n:
        return torch.arange(n)
    if not 0 < size <= n:
        raise DataError(f"--train-size {size} is outside 1..{n}, the size of the training set")
    g = torch.Generator().manual_seed(seed)
    keys = torch.empty(n, dtype=torch.float64)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        keys[idx] = (torch.arange(len(idx), dtype=torch.float64) + 0.5) / len(idx)
    order = torch.argsort(keys, stable=True)
    return order[:size].sort().values


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's order of n images. Below epoch 1000, torch's generator seeded with seed * 1000 + epoch, as every
    earlier run drew; that seed would repeat another seed's order past it (seed 0's epoch 1000 is seed 1's epoch 0),
    which step budgets on small subsets reach, so from there numpy's generator keyed on the pair (seed, epoch)."""
    if epoch < 1000:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return torch.from_numpy(np.random.default_rng((seed, epoch)).permutation(n))


def eval_order(n: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of an evaluation: every image once over all ranks (distributed.shard)."""
    return distributed.shard(torch.arange(n), rank, world)


VAL_SEED = 0  # the validation split is a property of the dataset, like its test split: the same for every seed


def split(labels: torch.Tensor, val_size: int, train_size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the training set. The validation split is a stratified hold-out of
    `val_size` images, the same for every seed; the training subset is a nested stratified subset of the rest,
    so subsets of one seed nest inside each other whatever the validation split."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise DataError(f"--val-size {val_size} must leave training images: the training set has {n}")
    if not val_size:
        return nested_subset(labels, train_size, seed), torch.arange(0)
    val = nested_subset(labels, val_size, VAL_SEED)
    rest = torch.ones(n, dtype=torch.bool).index_fill_(0, val, False).nonzero().squeeze(1)
    if train_size is not None and train_size > len(rest):
        raise DataError(f"--train-size {train_size} is more than the {len(rest)} training images left beside the "
                        f"{val_size}-image validation split; lower --train-size or --val-size")
    return rest[nested_subset(labels[rest], train_size, seed)], val


class TrainOrder:
    """Which examples each training step takes, by random access: step -> this rank's indices into the subset.

    Epoch e is a permutation drawn from (seed, e), so a resumed run sees the same order. Without `rollover`,
    every epoch drops its last partial batch (len(self) full batches per epoch); with it, the permutations are
    concatenated and every step takes the next global batch, crossing epochs without losing any image (a budget
    in steps). Rank r of a distributed job takes every world-th image of the global batch from position r, so the
    ranks together take exactly the global batch of a single process.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, rollover: bool = False):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.rollover, self.cached = rollover, (None, None)

    def __len__(self) -> int:
        """Full global batches in one epoch."""
        return self.n // (self.batch_size * self.world)

    def permutation(self, epoch: int) -> torch.Tensor:
        if self.cached[0] != epoch:
            self.cached = epoch, epoch_order(self.n, self.seed, epoch)
        return self.cached[1]

    def indices(self, step: int) -> torch.Tensor:
        width = self.batch_size * self.world
        if self.rollover:
            start = step * width
        else:
            epoch, i = divmod(step, len(self))
            start = epoch * self.n + i * width
        positions = start + self.rank + self.world * torch.arange(self.batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.cat([self.permutation(int(e))[offsets[epochs == e]] for e in epochs.unique()])
