import torch
import torch.nn.functional as F

from ..checks import ODD_SIZE
from .base import SpatialMixer


class Pooling(SpatialMixer):
    """PoolFormer: avgpool(x) - x (the block adds x back through the residual)."""

    uncounted_ops = frozenset({"aten::avg_pool2d"})  # a window of adds, no multiply-accumulates (PoolFormer's count)
    option_ranges = {"pool_size": ODD_SIZE}

    def __init__(self, dim: int, grid: tuple[int, int], pool_size: int = 3):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 3, 1, 2)
        y = F.avg_pool2d(y, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False)
        return y.permute(0, 2, 3, 1) - x
