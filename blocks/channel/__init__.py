"""Channel mixers: `Mixer(dim, **own_options)`, per token, any leading shape (..., C) -> (..., C)."""
from .glu import GLU
from .identity import IdentityChannel
from .mlp import MLP

CHANNEL = {"mlp": MLP, "glu": GLU, "identity": IdentityChannel}
