"""Small shared layers: activations and channels-last norms, looked up by name."""
import torch
from timm.models.metaformer import SquaredReLU, StarReLU
from torch import nn

from .checks import shown
from .errors import ConfigError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "starrelu": StarReLU, "squaredrelu": SquaredReLU}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {shown(name)}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ChannelsFirst(nn.Module):
    """Runs a channels-first norm (BatchNorm2d, GroupNorm) on a channels-last tensor: (B, H, W, C) or (B, C)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # pooled features, as (B, C, 1, 1)
            return self.norm(x[:, :, None, None])[:, :, 0, 0]
        return self.norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


NORMS = {
    "none": lambda dim, eps: nn.Identity(),  # PoolFormer Table 5's "no normalization"
    "layer": lambda dim, eps: nn.LayerNorm(dim, eps=eps),
    "layer-nobias": lambda dim, eps: nn.LayerNorm(dim, eps=eps, bias=False),
    "batch": lambda dim, eps: ChannelsFirst(nn.BatchNorm2d(dim, eps=eps)),
    "group1": lambda dim, eps: ChannelsFirst(nn.GroupNorm(1, dim, eps=eps)),
    "group1-nobias": lambda dim, eps: ChannelsFirst(nn.GroupNorm(1, dim, eps=eps, bias=False)),  # PoolFormer v2
}


def make_norm(name: str, dim: int, eps: float) -> nn.Module:
    """A norm over channels of a (B, H, W, C) tensor (group1 also spans H and W, as in PoolFormer)."""
    if name not in NORMS:
        raise ConfigError(f"unknown norm {shown(name)}; valid: {', '.join(NORMS)}")
    return NORMS[name](dim, eps)
