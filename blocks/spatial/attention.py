import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import FRACTION, MAX_WIDTH, whole
from ..errors import ConfigError
from .base import TokenMixer


class Attention(TokenMixer):
    """Multi-head self-attention over all H*W tokens (fused SDPA, spelled out under CPU bf16: attend).

    `num_heads` wins over `head_dim` when given (ViT: 6 heads at 384); otherwise
    heads = dim // head_dim (MetaFormer/CAFormer: head_dim 32).
    """

    option_ranges = {"num_heads": whole(1, MAX_WIDTH), "head_dim": whole(1, MAX_WIDTH), "attn_drop": FRACTION,
                     "proj_drop": FRACTION}

    @classmethod
    def width_step(cls, options: dict) -> int:
        """Whole heads: a multiple of the head count where it is fixed (ViT), else of the head size."""
        unit = options.get("num_heads") or options.get("head_dim", 32)
        return math.lcm(8, unit)

    def __init__(self, dim: int, grid: tuple[int, int], num_heads: int | None = None, head_dim: int = 32,
                 qkv_bias: bool = True, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = max(dim // head_dim, 1) if num_heads is None else num_heads
        if dim % self.num_heads:
            divisors = [str(k) for k in range(1, dim + 1) if dim % k == 0]
            listed = ", ".join(divisors[:12]) + (", ..." if len(divisors) > 12 else "")
            raise ConfigError(f"attention: dim {dim} is not divisible by num_heads {self.num_heads}"
                              f"{'' if num_heads else f' (dim // head_dim {head_dim})'}; valid: num_heads that "
                              f"divide the width, here {listed}")
        self.head_dim = dim // self.num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) -> (B, N, C): every token (class tokens too) attends to every token."""
        B, N, C = tokens.shape
        qkv = self.qkv(tokens).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        out = self.attend(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v, fused (SDPA) but under CPU bf16 autocast: there torch's SDPA kernel is 4x
        slower than in fp32 at these sizes, and spelling it out (bf16 matmuls, the softmax in fp32) trains `tiny`
        1.3x faster than SDPA in fp32 (README: speed)."""
        dropout = self.attn_drop if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            weights = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).float().softmax(-1).to(q.dtype)
            return (F.dropout(weights, dropout) if dropout else weights) @ v
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
