import torch

from .errors import ConfigError


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (1, H, W, dim) (MoCo v3 / big_vision's posemb_sincos_2d)."""
    if dim % 4:
        raise ConfigError(f"sincos position embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4 - 1 or 1))
    y, x = y[..., None] * omega, x[..., None] * omega  # (H, W, dim/4)
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)[None]
