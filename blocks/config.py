"""The backbone's config: one dataclass, a comment per field, and the one check of every field."""
from dataclasses import dataclass, field, fields

from .channel import CHANNEL
from .checks import (FRACTION, MAX_BLOCKS, MAX_CLASSES, MAX_IMG_SIZE, MAX_RATIO, MAX_WIDTH, above, check_fields,
                     check_options, shown, whole)
from .errors import ConfigError
from .layers import NORMS
from .spatial import SPATIAL

STEMS = ("patch", "overlap", "conv")


@dataclass(frozen=True)
class MetaFormerConfig:
    img_size: int = 28                   # input height = width in pixels
    in_chans: int = 1                    # input channels (1 for Fashion-MNIST, 3 for RGB)
    num_classes: int = 10                # classifier outputs; 0 = no classifier, forward returns features (timm)
    depths: tuple[int, ...] = (6,)       # blocks per stage: one entry = isotropic, several = hierarchical
    dims: tuple[int, ...] = (64,)        # channels per stage
    spatial: str | tuple[str, ...] = "mlp"   # spatial mixer name (blocks.SPATIAL), or one per stage
    channel: str | tuple[str, ...] = "mlp"   # channel mixer name (blocks.CHANNEL), or one per stage
    spatial_options: dict = field(default_factory=dict)  # {mixer name: options}; used only where that mixer is
    channel_options: dict = field(default_factory=dict)  # {mixer name: options}; same for channel mixers
    stem: str = "patch"                  # patch: k = s = patch_size conv; overlap: k7 s4 p2 (MetaFormer); conv: 3x3 s2 convs
    patch_size: int = 4                  # total stride of the stem
    stem_norm: str | None = None         # norm after the stem conv (MetaFormer v2), None = none
    downsample_norm: str | None = None   # norm before each between-stage downsampling conv, None = none
    norm: str = "layer"                  # block norm: layer | layer-nobias | batch | group1 | group1-nobias | none
    residual: bool = True                # skip connections around both branches; False: x = branch(norm(x))
    norm_eps: float = 1e-6               # eps of every norm
    pos_embed: str = "none"              # none | learned | sincos, added after the stem (on the first stage's grid
                                         # in a hierarchical model, as PVT's first stage)
    head: str = "avg"                    # avg: mean over the grid | token: a class token mixed with the grid, read out (ViT)
    head_norm: str = "post"              # pre: norm, pool (ViT, Mixer) | post: pool, norm (MetaFormer) | none
    head_norm_name: str | None = None    # norm type of the head norm, None = same as `norm`
    head_norm_eps: float | None = None   # eps of the head's norms, None = norm_eps (PoolFormer v1: 1e-5 in blocks, 1e-6 here)
    head_hidden_ratio: float = 0.0       # 0: linear classifier; > 0: MLP head with this ratio (MetaFormer v2)
    layer_scale: float | tuple[float | None, ...] | None = None  # init value of per-channel scale on each branch,
                                                                # None = off; or per stage
    res_scale: float | tuple[float | None, ...] | None = None    # init value of per-channel scale on the residual
                                                                # (MetaFormer v2)
    drop_path: float = 0.0               # stochastic depth, rising linearly to this over all blocks
    drop: float = 0.0                    # dropout before the classifier

    def per_stage(self, value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * len(self.depths)


CONFIG_FIELDS = tuple(f.name for f in fields(MetaFormerConfig))
CHOICES = {"stem": STEMS, "norm": tuple(NORMS), "stem_norm": tuple(NORMS), "downsample_norm": tuple(NORMS),
           "head_norm_name": tuple(NORMS), "pos_embed": ("none", "learned", "sincos"), "head": ("avg", "token"),
           "head_norm": ("pre", "post", "none")}
RANGES = {
    "img_size": whole(1, MAX_IMG_SIZE), "in_chans": whole(1, MAX_WIDTH), "num_classes": whole(0, MAX_CLASSES),
    "depths": whole(1, MAX_BLOCKS), "dims": whole(1, MAX_WIDTH), "patch_size": whole(1, MAX_IMG_SIZE),
    "norm_eps": above(0, 1), "head_norm_eps": above(0, 1),
    "head_hidden_ratio": ((lambda v: 0 <= v <= MAX_RATIO), f"in [0, {MAX_RATIO}]: 0 = a linear classifier"),
    "layer_scale": above(0), "res_scale": above(0), "drop_path": FRACTION, "drop": FRACTION,
}


def validate(cfg: MetaFormerConfig) -> None:
    """Every field's type, choices and range, then how the fields fit together; a ConfigError names the field."""
    for kind, registry in (("spatial", SPATIAL), ("channel", CHANNEL)):
        for name in cfg.per_stage(getattr(cfg, kind)) if isinstance(getattr(cfg, kind), (str, tuple, list)) else ():
            if not isinstance(name, str) or name not in registry:
                raise ConfigError(f"unknown {kind} mixer {shown(name)}; valid: {', '.join(registry)}")
    check_fields(cfg, RANGES, CHOICES)
    if not 1 <= sum(cfg.depths) <= MAX_BLOCKS:
        raise ConfigError(f"depths = {shown(cfg.depths)} make {sum(cfg.depths):,} blocks; valid: one entry per "
                          f"stage, from 1 to {MAX_BLOCKS:,} blocks in all")
    check_mixer_options(cfg)
    n = len(cfg.depths)
    if len(cfg.dims) != n:
        raise ConfigError(f"depths has {n} stages but dims has {len(cfg.dims)}")
    for name in ("spatial", "channel", "layer_scale", "res_scale"):
        value = getattr(cfg, name)
        if isinstance(value, (tuple, list)) and len(value) != n:
            raise ConfigError(f"{name} lists {len(value)} entries for {n} stages")
    if cfg.head == "token" and (n > 1 or cfg.norm not in ("layer", "layer-nobias", "none")):
        raise ConfigError("a class token (head='token') needs one stage and a per-token norm (layer, layer-nobias, "
                          "none)")
    if not cfg.residual and (cfg.drop_path or any(cfg.per_stage(cfg.res_scale))):
        raise ConfigError("residual=false leaves no skip connection for drop_path to fall back on or res_scale to "
                          "scale; set drop_path = 0 and res_scale = none")


def check_mixer_options(cfg: MetaFormerConfig) -> None:
    """Every mixer named in spatial_options and channel_options, and each of its options (checks.check_options),
    also for mixers the model does not use: a value that makes no sense is an error wherever it is."""
    for kind, registry in (("spatial", SPATIAL), ("channel", CHANNEL)):
        for name, options in getattr(cfg, f"{kind}_options").items():
            if name not in registry:
                raise ConfigError(f"{kind}_options names unknown mixer {shown(name)}; valid: {', '.join(registry)}")
            if not isinstance(options, dict):
                raise ConfigError(f"{kind}_options[{shown(name)}] must be a table of that mixer's options")
            check_options(registry[name], options, f"{kind} mixer {name!r}")
