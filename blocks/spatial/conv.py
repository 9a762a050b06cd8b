import torch
from torch import nn

from ..checks import ODD_SIZE, RATIO, hidden_width
from ..layers import ACTIVATIONS, make_act
from .base import SpatialMixer


class DepthwiseConv(SpatialMixer):
    """Depthwise k x k convolution; with `expansion` it is ConvFormer's SepConv
    (pointwise expand -> act -> depthwise -> pointwise project)."""

    option_ranges = {"kernel_size": ODD_SIZE, "expansion": RATIO}
    option_choices = {"act": tuple(ACTIVATIONS)}

    def __init__(self, dim: int, grid: tuple[int, int], kernel_size: int = 7, expansion: float | None = None,
                 act: str = "starrelu", bias: bool = False):
        super().__init__()
        hidden = hidden_width(expansion, dim, "conv expansion") if expansion else dim
        self.pw1 = nn.Linear(dim, hidden, bias=bias) if expansion else None
        self.act = make_act(act) if expansion else None
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=bias)
        self.pw2 = nn.Linear(hidden, dim, bias=bias) if expansion else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pw1 is not None:
            x = self.act(self.pw1(x))
        x = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # conv runs channels-first
        if self.pw2 is not None:
            x = self.pw2(x)
        return x
