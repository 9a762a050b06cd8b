from torch import nn


class SpatialMixer(nn.Module):
    """What a spatial mixer declares about itself. The backbone, cost counting and budget matching read these
    traits from the class, so a new mixer is one file and one registry line.

    Built as `Mixer(dim, grid=(H, W), **own_options)`; a grid-tied mixer that reaches class tokens also gets
    `prefix_tokens` (their count is part of the token count its weights are tied to).
    """

    grid_tied: str | None = None   # the weights tied to the token grid, named in errors; None: runs on any grid
    reaches_prefix: bool = False   # forward(x, prefix=...) mixes class tokens with the grid and returns both
    uncounted_ops: frozenset[str] = frozenset()  # aten ops it runs that do no multiply-accumulates (0 MACs)

    @classmethod
    def width_step(cls, options: dict) -> int:
        """The step its width moves in when budget matching resizes the model (8: tensor-core friendly)."""
        return 8
