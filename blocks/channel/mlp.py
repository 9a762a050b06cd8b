from timm.layers import Mlp

from ..checks import FRACTION, RATIO, hidden_width
from ..layers import ACTIVATIONS, make_act


class MLP(Mlp):
    """Two-layer MLP over channels (ViT/Mixer: GELU, ratio 4; MetaFormer v2: StarReLU, no bias)."""

    option_ranges = {"ratio": RATIO, "drop": FRACTION}
    option_choices = {"act": tuple(ACTIVATIONS)}

    def __init__(self, dim: int, ratio: float = 4.0, act: str = "gelu", bias: bool = True, drop: float = 0.0):
        super().__init__(dim, hidden_width(ratio, dim, "channel MLP"), act_layer=lambda: make_act(act), bias=bias,
                         drop=drop)
