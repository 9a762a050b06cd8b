import torch

from .base import SpatialMixer


class IdentityMixer(SpatialMixer):
    """No token mixing at all (PoolFormer's lower bound)."""

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
