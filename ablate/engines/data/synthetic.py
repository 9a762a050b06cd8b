"""Learnable fake data for tests."""
import torch

from .memory import Dataset


def synthetic(n_train: int = 2000, n_test: int = 500, shape=(1, 28, 28), num_classes: int = 10) -> Dataset:
    """Each class is a fixed random template plus noise."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(num_classes, *shape, generator=g)

    def draw(n):
        y = torch.arange(n) % num_classes
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, *shape, generator=g)
        return (x * 255).to(torch.uint8), y

    (train_x, train_y), (test_x, test_y) = draw(n_train), draw(n_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes)
