from torch import nn


class IdentityChannel(nn.Identity):
    """No channel mixing (PoolFormer Table 5's "no channel MLP"): the block's second branch is the identity."""

    def __init__(self, dim: int):
        super().__init__()
