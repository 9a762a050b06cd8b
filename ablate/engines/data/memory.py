"""Datasets that live in memory as uint8 tensors, and their minibatches (batched transforms, no per-image Python)."""
from dataclasses import dataclass

import torch

from ...foundations import distributed
from .subsets import epoch_order
from .transforms import Transform, augment_generator


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units, shaped (1, C, 1, 1)."""
        x = self.train_x.float().div_(255)
        return x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).view(1, -1, 1, 1)

    def eval_batch_size(self, train_batch_size: int) -> int:
        """Evaluation batches: large, since the images are already in memory."""
        return 1000

    def batches(self, split: str, indices: torch.Tensor, batch_size: int, transform: Transform,
                device: torch.device, train: bool = False, seed: int = 0, rank: int = 0, world: int = 1) -> "Batches":
        """Minibatches of `split` ("train" or "test") at `indices`, moved to `device` once, as a whole."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return Batches(x[indices].to(device), y[indices].to(device), batch_size, transform, train, seed, rank, world)


class Batches:
    """Minibatches from in-memory tensors: normalize, augment, shuffle pixels, all batched.

    The order of epoch e is a permutation drawn from (seed, e), so a resumed run sees the same order.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, transform: Transform, train: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.x, self.y, self.batch_size, self.transform = x, y, batch_size, transform
        self.train, self.seed, self.rank, self.world = train, seed, rank, world
        self.generator = augment_generator(seed, rank)

    def __len__(self) -> int:
        n = distributed.shard_size(len(self.x), self.rank, self.world, even=self.train)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int):
        order = epoch_order(len(self.x), epoch, self.seed, self.train, self.rank, self.world)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.transform(self.x[idx], self.generator if self.train else None), self.y[idx]
