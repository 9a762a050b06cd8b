from timm.layers import Mlp

from ..layers import make_act


class MLP(Mlp):
    """Two-layer MLP over channels (ViT/Mixer: GELU, ratio 4; MetaFormer v2: StarReLU, no bias)."""

    def __init__(self, dim: int, ratio: float = 4.0, act: str = "gelu", bias: bool = True, drop: float = 0.0):
        super().__init__(dim, int(ratio * dim), act_layer=lambda: make_act(act), bias=bias, drop=drop)
