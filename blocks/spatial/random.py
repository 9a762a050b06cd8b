import torch
from torch import nn

from .base import TokenMixer
from .mlp import check_grid


class RandomMixing(TokenMixer):
    """RandFormer: a frozen, row-softmaxed random N x N token-mixing matrix."""

    grid_tied = "random mixing matrix"

    def __init__(self, dim: int, grid: tuple[int, int], prefix_tokens: int = 0):
        super().__init__()
        self.grid = tuple(grid)
        tokens = grid[0] * grid[1] + prefix_tokens
        matrix = torch.softmax(torch.rand(tokens, tokens), dim=-1)
        self.random_matrix = nn.Parameter(matrix, requires_grad=False)  # frozen: counted as params_frozen

    def mix(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        check_grid("random token mixing", self.grid, grid)
        return torch.matmul(self.random_matrix, tokens)
