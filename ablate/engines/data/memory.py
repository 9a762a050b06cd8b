"""Datasets that live in memory as uint8 tensors, and their minibatches (batched transforms, no per-image Python)."""
from dataclasses import dataclass

import torch

from .subsets import TrainOrder, eval_order
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
        """Evaluation batches of 256: on 2 CPU cores `tiny` infers 1.4-2.1x more images/s at 256 than at 1000
        (benchmarks/results/speed_options.md)."""
        return 256

    def batches(self, split: str, indices: torch.Tensor, batch_size: int, transform: Transform,
                device: torch.device, train: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
                rollover: bool = False) -> "Batches":
        """Minibatches of `split` ("train" or "test") at `indices`, moved to `device` once, as a whole."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return Batches(x[indices].to(device), y[indices].to(device), batch_size, transform, train, seed, rank, world,
                       rollover)


class Batches:
    """Minibatches from in-memory tensors: normalize, augment, shuffle pixels, all batched.

    Training batches come by step in subsets.TrainOrder's order (`batch(step)`, `stream(start, stop)`);
    evaluation batches (`train=False`) cover every image once, in order (`epoch(0)`).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, transform: Transform, train: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1, rollover: bool = False):
        self.x, self.y, self.batch_size, self.transform, self.train = x, y, batch_size, transform, train
        self.rank, self.world = rank, world
        self.order = TrainOrder(len(x), batch_size, seed, rank, world, rollover) if train else None
        self.generator = augment_generator(seed, rank)

    def __len__(self) -> int:
        """Batches per epoch: full global batches when training, every image once when evaluating."""
        return len(self.order) if self.train else -(-len(eval_order(len(self.x), self.rank, self.world))
                                                    // self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.indices(step).to(self.x.device)
        return self.transform(self.x[idx], self.generator), self.y[idx]

    def stream(self, start: int, stop: int):
        """Training batches of steps start, ..., stop - 1 (augmented in step order, so a resumed run draws the same)."""
        return (self.batch(step) for step in range(start, stop))

    def epoch(self, epoch: int):
        if self.train:
            yield from self.stream(epoch * len(self), (epoch + 1) * len(self))
            return
        order = eval_order(len(self.x), self.rank, self.world).to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.transform(self.x[idx]), self.y[idx]
