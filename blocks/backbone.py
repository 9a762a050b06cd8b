"""The one backbone: stem -> stages of MetaFormer blocks -> head.

Every block sees a channels-last token grid (B, H, W, C) and does

    x = res_scale1 * x + drop_path(layer_scale1 * spatial(norm1(x)))
    x = res_scale2 * x + drop_path(layer_scale2 * channel(norm2(x)))

(with residual=False the `res_scale * x` terms are gone: PoolFormer Table 5's "no residual").

One stage of N blocks after a patch stem is the isotropic shape (ViT, Mixer); four
stages with downsampling between them is the hierarchical shape (PoolFormer, ConvFormer,
CAFormer). Everything that differs between those families is a field of MetaFormerConfig,
so swapping the spatial mixer changes exactly one thing.
"""
from dataclasses import replace

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .channel import CHANNEL
from .checks import check_options, hidden_width, shown
from .config import MetaFormerConfig, validate
from .errors import ConfigError
from .layers import make_act, make_norm
from .pos_embed import sincos_2d
from .spatial import SPATIAL


def build_mixer(registry: dict, kind: str, name: str, dim: int, options: dict, prefix_tokens: int = 0,
                **positional) -> nn.Module:
    """Builds one mixer by name with only its own options; unknown names, options and values that make no sense
    (checks.check_options) are ConfigErrors.

    With class tokens (`prefix_tokens` > 0) the mixer must reach them (its `reaches_prefix` trait), and a
    grid-tied one is told how many there are, as its weights are tied to the token count.
    """
    if name not in registry:
        raise ConfigError(f"unknown {kind} mixer {shown(name)}; valid: {', '.join(registry)}")
    cls = registry[name]
    if prefix_tokens and not cls.reaches_prefix:
        raise ConfigError(f"{kind} mixer {name!r} mixes a grid and cannot reach a class token; "
                          f"build the model with head='avg'")
    if prefix_tokens and cls.grid_tied:
        positional["prefix_tokens"] = prefix_tokens
    check_options(cls, options, f"{kind} mixer {name!r}")
    return cls(dim, **positional, **options)


class Scale(nn.Module):
    """Learnable per-channel scale (layer scale / residual scale)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def optional(module_or_none):
    return module_or_none if module_or_none is not None else nn.Identity()


class Cut(nn.Module):
    """The residual path of a block without skip connections: x = 0 + branch(x)."""

    def forward(self, x: torch.Tensor) -> int:
        return 0


def residual_path(cfg: MetaFormerConfig, dim: int, res_scale: float | None) -> nn.Module:
    """What a block adds its branch to: x, a learned per-channel scale of x (MetaFormer v2), or nothing."""
    if not cfg.residual:
        return Cut()
    return optional(res_scale and Scale(dim, res_scale))


class Block(nn.Module):
    def __init__(self, dim: int, spatial: nn.Module, channel: nn.Module, cfg: MetaFormerConfig,
                 drop_path: float, layer_scale: float | None, res_scale: float | None):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, dim, cfg.norm_eps)
        self.spatial = spatial
        self.layer_scale1 = optional(layer_scale and Scale(dim, layer_scale))
        self.res_scale1 = residual_path(cfg, dim, res_scale)
        self.norm2 = make_norm(cfg.norm, dim, cfg.norm_eps)
        self.channel = channel
        self.layer_scale2 = optional(layer_scale and Scale(dim, layer_scale))
        self.res_scale2 = residual_path(cfg, dim, res_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = self.res_scale1(x) + self.drop_path(self.layer_scale1(self.spatial(self.norm1(x))))
        x = self.res_scale2(x) + self.drop_path(self.layer_scale2(self.channel(self.norm2(x))))
        return x

    def forward_sequence(self, seq: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Same math on the token sequence [class tokens; grid tokens] (B, T + HW, C) -> same: the spatial mixer is
        a TokenMixer, which mixes them all at once."""
        seq = self.res_scale1(seq) + self.drop_path(self.layer_scale1(self.spatial.mix(self.norm1(seq), grid)))
        seq = self.res_scale2(seq) + self.drop_path(self.layer_scale2(self.channel(self.norm2(seq))))
        return seq


class Stem(nn.Module):
    """Image (B, C_in, H, W) -> token grid (B, H / patch, W / patch, dim)."""

    def __init__(self, cfg: MetaFormerConfig, dim: int):
        super().__init__()
        p = cfg.patch_size
        if cfg.stem == "patch":
            self.conv = nn.Conv2d(cfg.in_chans, dim, p, stride=p)
        elif cfg.stem == "overlap":
            if p != 4:
                raise ConfigError(f"the overlapping stem has stride 4, not patch_size {p}")
            self.conv = nn.Conv2d(cfg.in_chans, dim, 7, stride=4, padding=2)
        else:  # conv
            n = p.bit_length() - 1
            if 2 ** n != p or n < 1:
                raise ConfigError(f"the conv stem halves the size per conv, so patch_size must be a power of 2, not {p}")
            if dim < 2 ** (n - 1):
                raise ConfigError(f"the conv stem of patch_size {p} doubles its width {n - 1} times up to dims[0], "
                                  f"which must be at least {2 ** (n - 1)}, not {dim}")
            widths = [cfg.in_chans] + [dim // 2 ** (n - 1 - i) for i in range(n)]
            layers = []
            for i in range(n):
                layers += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
                if i < n - 1:
                    layers += [nn.BatchNorm2d(widths[i + 1]), nn.GELU()]
            self.conv = nn.Sequential(*layers)
        self.norm = optional(cfg.stem_norm and make_norm(cfg.stem_norm, dim, cfg.norm_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """(B, H, W, C_in) -> (B, H/2, W/2, C_out): optional norm, then a 3x3 stride-2 conv (MetaFormer)."""

    def __init__(self, cfg: MetaFormerConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = optional(cfg.downsample_norm and make_norm(cfg.downsample_norm, in_dim, cfg.norm_eps))
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MlpHead(nn.Module):
    """MetaFormer v2's classifier: fc -> SquaredReLU -> norm -> fc."""

    def __init__(self, dim: int, num_classes: int, ratio: float, norm: str, eps: float, drop: float):
        super().__init__()
        hidden = hidden_width(ratio, dim, "head_hidden_ratio")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act("squaredrelu")
        self.norm = make_norm(norm, hidden, eps)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


def grid_sizes(cfg: MetaFormerConfig) -> list[tuple[int, int]]:
    """Token grid of each stage; a size the stem or a downsampling does not divide is a ConfigError."""
    if cfg.img_size % cfg.patch_size:
        raise ConfigError(f"image size {cfg.img_size} is not divisible by the patch size {cfg.patch_size}")
    side = cfg.img_size // cfg.patch_size
    grids = [(side, side)]
    for _ in cfg.depths[1:]:
        side = (side + 1) // 2  # 3x3 stride-2 conv with padding 1
        grids.append((side, side))
    return grids


class MetaFormer(nn.Module):
    def __init__(self, cfg: MetaFormerConfig | None = None, **overrides):
        super().__init__()
        cfg = replace(cfg or MetaFormerConfig(), **overrides)
        validate(cfg)
        self.cfg = cfg
        grids = grid_sizes(cfg)
        spatial, channel = cfg.per_stage(cfg.spatial), cfg.per_stage(cfg.channel)
        layer_scales, res_scales = cfg.per_stage(cfg.layer_scale), cfg.per_stage(cfg.res_scale)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths), device="cpu").tolist()  # cpu: also builds on "meta"

        self.stem = Stem(cfg, cfg.dims[0])
        self.prefix_pos_embed = self.cls_token = None
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_2d(grids[0], cfg.dims[0]), persistent=False)
        else:
            self.pos_embed = (nn.Parameter(trunc_normal_(torch.zeros(1, *grids[0], cfg.dims[0]), std=0.02))
                              if cfg.pos_embed == "learned" else None)
        prefix_tokens = 1 if cfg.head == "token" else 0
        if prefix_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dims[0]))
            nn.init.normal_(self.cls_token, std=1e-6)
            if cfg.pos_embed == "learned":  # ViT gives the class token a position of its own
                self.prefix_pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, 1, cfg.dims[0]), std=0.02))

        self.stages = nn.ModuleList()
        for i, (depth, dim, grid) in enumerate(zip(cfg.depths, cfg.dims, grids)):
            blocks = [] if i == 0 else [Downsample(cfg, cfg.dims[i - 1], dim)]
            for _ in range(depth):
                blocks.append(Block(
                    dim,
                    build_mixer(SPATIAL, "spatial", spatial[i], dim, cfg.spatial_options.get(spatial[i], {}),
                                prefix_tokens, grid=grid),
                    build_mixer(CHANNEL, "channel", channel[i], dim, cfg.channel_options.get(channel[i], {})),
                    cfg, rates.pop(0), layer_scales[i], res_scales[i]))
            self.stages.append(nn.Sequential(*blocks))

        width = cfg.dims[-1]
        head_eps = cfg.norm_eps if cfg.head_norm_eps is None else cfg.head_norm_eps
        self.head_norm = (nn.Identity() if cfg.head_norm == "none"
                          else make_norm(cfg.head_norm_name or cfg.norm, width, head_eps))
        self.head_drop = nn.Dropout(cfg.drop)
        self.head = (nn.Identity() if not cfg.num_classes  # timm's headless models (vit_large_patch32_224)
                     else MlpHead(width, cfg.num_classes, cfg.head_hidden_ratio, cfg.head_norm_name or cfg.norm,
                                  head_eps, cfg.drop) if cfg.head_hidden_ratio else nn.Linear(width, cfg.num_classes))
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C_in, H, W) -> token grid (B, h, w, C) and class tokens (B, 1, C) or None."""
        x = self.stem(x)
        self.check_grid(tuple(x.shape[1:3]))
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.cls_token is None:
            for stage in self.stages:
                x = stage(x)
            return x, None
        prefix = self.cls_token.expand(x.shape[0], -1, -1)
        if self.prefix_pos_embed is not None:
            prefix = prefix + self.prefix_pos_embed
        B, H, W, C = x.shape
        T = prefix.shape[1]
        seq = torch.cat([prefix, x.reshape(B, H * W, C)], dim=1)  # (B, T + HW, C), one sequence through the blocks
        for block in self.stages[0]:  # a class token implies one stage (validated)
            seq = block.forward_sequence(seq, (H, W))
        return seq[:, T:].reshape(B, H, W, C), seq[:, :T]

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Parts tied to the token grid (learned position embedding, token-mixing weights) cannot run on another."""
        expected = grid_sizes(self.cfg)[0]
        if grid == expected:
            return
        tied = [SPATIAL[name].grid_tied for name in self.cfg.per_stage(self.cfg.spatial) if SPATIAL[name].grid_tied]
        tied += ["position embedding"] if self.pos_embed is not None else []
        if tied:
            raise ConfigError(f"this model was built for {self.cfg.img_size} px images ({expected[0]}x{expected[1]} "
                              f"tokens) and cannot run on a {grid[0]}x{grid[1]} token grid: its "
                              f"{', '.join(sorted(set(tied)))} weights are tied to the grid size; "
                              f"build it with img_size set to the input size")

    def forward_head(self, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:  # -> (B, num_classes)
        pre = self.head_norm if self.cfg.head_norm == "pre" else nn.Identity()
        # (B, C): the mean of the grid, or the class token alone (ViT: the grid is not normed for nothing)
        x = pre(x).mean(dim=(1, 2)) if prefix is None else pre(prefix)[:, 0]
        if self.cfg.head_norm == "post":
            x = self.head_norm(x)
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(*self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay, beside norms and biases (1-D): position
        embeddings and class tokens, as in timm's ViT."""
        return {name for name in ("pos_embed", "prefix_pos_embed", "cls_token")
                if isinstance(getattr(self, name, None), nn.Parameter)}


def init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
