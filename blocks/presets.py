"""Named architectures: CPU-sized ones for 28-32 px inputs and published ones (timm parity)."""
from dataclasses import replace

from .backbone import MetaFormer
from .checks import shown
from .config import CONFIG_FIELDS, MetaFormerConfig, validate
from .errors import ConfigError
from .published import PUBLISHED

# CPU-sized presets. Built without overrides they take Fashion-MNIST's shape (1 x 28 x 28, 10 classes).
# Options that only matter for one mixer live under that mixer's name, so swapping the mixer drops them.
CPU_PRESETS: dict[str, MetaFormerConfig] = {
    # isotropic, 7x7 tokens after a two-conv stem, 4 blocks: the CLI default, sized so that 5 epochs of
    # Fashion-MNIST fit in 5 minutes on 2 CPU cores for every mixer (README: the default job)
    "tiny": MetaFormerConfig(depths=(4,), dims=(64,), stem="conv", patch_size=4, pos_embed="learned",
                             spatial_options={"conv": {"kernel_size": 3}}),
    # isotropic, wider and deeper
    "small": MetaFormerConfig(depths=(8,), dims=(128,), stem="conv", patch_size=4, pos_embed="learned",
                              spatial_options={"conv": {"kernel_size": 3}}),
    # hierarchical, 14 -> 7 -> 4 -> 2 tokens per side
    "tiny-hier": MetaFormerConfig(depths=(1, 1, 3, 1), dims=(32, 64, 96, 128), stem="conv", patch_size=2,
                                  spatial=("conv", "conv", "attention", "attention"),
                                  spatial_options={"conv": {"kernel_size": 3}}, downsample_norm="layer"),
}

PRESETS: dict[str, MetaFormerConfig] = {**CPU_PRESETS, **PUBLISHED}  # published: 224 px ImageNet shape, timm parity


def preset_config(name: str, **overrides) -> MetaFormerConfig:
    """Preset `name` with MetaFormerConfig fields overridden, checked (a ConfigError names a wrong field)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {shown(name)}; valid: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown backbone option {', '.join(map(shown, unknown[:3]))}; valid: "
                          f"{', '.join(CONFIG_FIELDS)}")
    cfg = PRESETS[name]
    for key in ("spatial", "channel"):  # one name for every stage
        if isinstance(overrides.get(key), str) and isinstance(getattr(cfg, key), tuple):
            overrides[key] = (overrides[key],) * len(cfg.depths)
    cfg = replace(cfg, **overrides)
    validate(cfg)  # every value, before anything is built
    return cfg


def create(name: str, **overrides) -> MetaFormer:
    """Builds preset `name`, with any MetaFormerConfig field overridden (e.g. spatial="mlp", img_size=32)."""
    return MetaFormer(preset_config(name, **overrides))
