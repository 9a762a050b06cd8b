from timm.layers import SwiGLU

from ..layers import make_act


class GLU(SwiGLU):
    """Gated MLP, SwiGLU-style: fc2(act(fc1_g(x)) * fc1_x(x)).

    The default ratio 8/3 gives the same parameter count as `mlp` with ratio 4
    (3 * 8/3 = 2 * 4 weight matrices of dim^2), so swapping the two changes the form, not the size.
    """

    def __init__(self, dim: int, ratio: float = 8 / 3, act: str = "silu", bias: bool = True, drop: float = 0.0):
        super().__init__(dim, int(ratio * dim), act_layer=lambda: make_act(act), bias=bias, drop=drop)
