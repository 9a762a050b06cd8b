"""Spatial (token) mixers: `Mixer(dim, grid=(H, W), **own_options)`, (B, H, W, C) -> (B, H, W, C)."""
from .attention import Attention
from .conv import DepthwiseConv
from .identity import IdentityMixer
from .mlp import TokenMLP
from .pool import Pooling
from .random import RandomMixing

SPATIAL = {
    "attention": Attention,
    "mlp": TokenMLP,
    "conv": DepthwiseConv,
    "pool": Pooling,
    "identity": IdentityMixer,
    "random": RandomMixing,
}
