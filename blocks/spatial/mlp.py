import torch
from torch import nn

from ..checks import FRACTION, RATIO, hidden_width
from ..errors import ConfigError
from .base import TokenMixer


class TokenMLP(TokenMixer):
    """MLP-Mixer token mixing: one MLP across the H*W tokens, shared by every channel.

    Its weights are tied to the grid it was built for, so a different grid is a
    ConfigError, not a shape error deep inside a matmul.
    """

    grid_tied = "token-mixing MLP"
    option_ranges = {"hidden_ratio": RATIO, "drop": FRACTION}

    def __init__(self, dim: int, grid: tuple[int, int], prefix_tokens: int = 0, hidden_ratio: float = 0.5,
                 bias: bool = True, drop: float = 0.0):
        super().__init__()
        self.grid = tuple(grid)
        tokens = grid[0] * grid[1] + prefix_tokens  # a class token is one more token to mix
        hidden = hidden_width(hidden_ratio, dim, "token-mixing MLP")  # Mixer ties it to the width: 0.5 * dim
        self.fc1 = nn.Linear(tokens, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, tokens, bias=bias)
        self.drop = nn.Dropout(drop)

    def mix(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        check_grid("token-mixing MLP", self.grid, grid)
        out = self.fc2(self.drop(self.act(self.fc1(tokens.transpose(1, 2)))))  # (B, C, N): mix along tokens
        return self.drop(out.transpose(1, 2))  # (B, N, C)


def check_grid(what: str, built_for: tuple[int, int], got: tuple[int, int]) -> None:
    if got != built_for:
        raise ConfigError(f"{what} was built for a {built_for[0]}x{built_for[1]} token grid and cannot run on "
                          f"{got[0]}x{got[1]}; build the model for this image size")
