"""Which examples a run sees: nested stratified subsets, and each epoch's seeded order."""
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


def epoch_order(n: int, epoch: int, seed: int, train: bool, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's positions for one epoch: a permutation drawn from (seed, epoch) when training, so a resumed
    run sees the same order, sharded over the ranks of a distributed job (distributed.shard)."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)) if train
             else torch.arange(n))
    return distributed.shard(order, rank, world, even=train)
