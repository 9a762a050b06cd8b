import torch
from torch import nn


class SpatialMixer(nn.Module):
    """What a spatial mixer declares about itself. The backbone, cost counting and budget matching read these
    traits from the class, so a new mixer is one file and one registry line.

    Built as `Mixer(dim, grid=(H, W), **own_options)`; a grid-tied mixer that reaches class tokens also gets
    `prefix_tokens` (their count is part of the token count its weights are tied to).
    """

    grid_tied: str | None = None   # the weights tied to the token grid, named in errors; None: runs on any grid
    reaches_prefix: bool = False   # a TokenMixer: it mixes class tokens with the grid (mix on the sequence)
    uncounted_ops: frozenset[str] = frozenset()  # aten ops it runs that do no multiply-accumulates (0 MACs)
    # Its options are its constructor's parameters after `grid`, typed by their hints; these declare their valid
    # values beyond the type (checks.check_options): option -> (predicate, what is valid), option -> the names
    option_ranges: dict = {}
    option_choices: dict = {}

    @classmethod
    def width_step(cls, options: dict) -> int:
        """The step its width moves in when budget matching resizes the model (8: tensor-core friendly)."""
        return 8


class TokenMixer(SpatialMixer):
    """A mixer of every token at once (attention, the token-MLP, random mixing): its math is on the token sequence,
    `mix(tokens, grid)`: (B, T + H*W, C) -> same, the T class tokens first. So it reaches class tokens, and a model
    with one keeps the sequence through its blocks (no split and concatenation per block); on a grid alone, forward
    flattens it."""

    reaches_prefix = True

    def mix(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        B, H, W, C = x.shape
        return self.mix(x.reshape(B, H * W, C), (H, W)).reshape(B, H, W, C)
