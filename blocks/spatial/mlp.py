import torch
from torch import nn

from ..errors import ConfigError
from .base import SpatialMixer


class TokenMLP(SpatialMixer):
    """MLP-Mixer token mixing: one MLP across the H*W tokens, shared by every channel.

    Its weights are tied to the grid it was built for, so a different grid is a
    ConfigError, not a shape error deep inside a matmul.
    """

    grid_tied = "token-mixing MLP"
    reaches_prefix = True

    def __init__(self, dim: int, grid: tuple[int, int], prefix_tokens: int = 0, hidden_ratio: float = 0.5, bias: bool = True,
                 drop: float = 0.0):
        super().__init__()
        self.grid = tuple(grid)
        tokens = grid[0] * grid[1] + prefix_tokens  # a class token is one more token to mix
        hidden = int(hidden_ratio * dim)  # Mixer ties the token hidden size to the width: 0.5 * dim
        self.fc1 = nn.Linear(tokens, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, tokens, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None):
        B, H, W, C = x.shape
        check_grid("token-mixing MLP", self.grid, (H, W))
        tokens = x.reshape(B, H * W, C) if prefix is None else torch.cat([prefix, x.reshape(B, H * W, C)], dim=1)
        out = self.fc2(self.drop(self.act(self.fc1(tokens.transpose(1, 2)))))  # (B, C, N): mix along tokens
        out = self.drop(out.transpose(1, 2))  # (B, N, C)
        return split_prefix(out, prefix, (H, W))


def check_grid(what: str, built_for: tuple[int, int], got: tuple[int, int]) -> None:
    if got != built_for:
        raise ConfigError(f"{what} was built for a {built_for[0]}x{built_for[1]} token grid and cannot run on "
                          f"{got[0]}x{got[1]}; build the model for this image size")


def split_prefix(tokens: torch.Tensor, prefix: torch.Tensor | None, grid: tuple[int, int]):
    """(B, T + HW, C) -> grid (B, H, W, C), plus the T class tokens when there were any."""
    B, N, C = tokens.shape
    out = tokens[:, N - grid[0] * grid[1]:].reshape(B, *grid, C)
    return out if prefix is None else (out, tokens[:, :N - grid[0] * grid[1]])
