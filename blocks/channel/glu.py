from timm.layers import SwiGLU

from ..checks import FRACTION, RATIO, hidden_width
from ..layers import ACTIVATIONS, make_act


class GLU(SwiGLU):
    """Gated MLP, SwiGLU-style: fc2(act(fc1_g(x)) * fc1_x(x)).

    The default ratio 8/3 gives the same parameter count as `mlp` with ratio 4
    (3 * 8/3 = 2 * 4 weight matrices of dim^2), so swapping the two changes the form, not the size.
    """

    option_ranges = {"ratio": RATIO, "drop": FRACTION}
    option_choices = {"act": tuple(ACTIVATIONS)}

    def __init__(self, dim: int, ratio: float = 8 / 3, act: str = "silu", bias: bool = True, drop: float = 0.0):
        super().__init__(dim, hidden_width(ratio, dim, "channel GLU"), act_layer=lambda: make_act(act), bias=bias,
                         drop=drop)
