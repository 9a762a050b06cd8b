import torch
from torch import nn

from .base import SpatialMixer
from .mlp import check_grid, split_prefix


class RandomMixing(SpatialMixer):
    """RandFormer: a frozen, row-softmaxed random N x N token-mixing matrix."""

    grid_tied = "random mixing matrix"
    reaches_prefix = True

    def __init__(self, dim: int, grid: tuple[int, int], prefix_tokens: int = 0):
        super().__init__()
        self.grid = tuple(grid)
        tokens = grid[0] * grid[1] + prefix_tokens
        matrix = torch.softmax(torch.rand(tokens, tokens), dim=-1)
        self.random_matrix = nn.Parameter(matrix, requires_grad=False)  # frozen: counted as params_frozen

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None):
        B, H, W, C = x.shape
        check_grid("random token mixing", self.grid, (H, W))
        tokens = x.reshape(B, H * W, C) if prefix is None else torch.cat([prefix, x.reshape(B, H * W, C)], dim=1)
        return split_prefix(torch.matmul(self.random_matrix, tokens), prefix, (H, W))
