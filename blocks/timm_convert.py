"""Weights from timm: `from_timm(model_or_name)` builds the matching published preset and loads
a timm ViT, MLP-Mixer or MetaFormer (PoolFormer v1/v2, ConvFormer, CAFormer) into it."""
import re
from dataclasses import replace

import timm
import torch
from torch import nn

from .backbone import MetaFormer
from .config import MetaFormerConfig
from .errors import ConfigError
from .published import PUBLISHED, TIMM_NAMES

PRESET_OF = {timm_name: preset for preset, timm_name in TIMM_NAMES.items()}

# timm key -> our key: every rule applies in turn.
RULES = {
    "vit": [
        (r"^patch_embed\.proj\.", "stem.conv."),
        (r"^blocks\.(\d+)\.attn\.", r"stages.0.\1.spatial."),
        (r"^blocks\.(\d+)\.mlp\.", r"stages.0.\1.channel."),
        (r"^blocks\.(\d+)\.", r"stages.0.\1."),
        (r"^norm\.", "head_norm."),
    ],
    "mixer": [
        (r"^stem\.proj\.", "stem.conv."),
        (r"^blocks\.(\d+)\.mlp_tokens\.", r"stages.0.\1.spatial."),
        (r"^blocks\.(\d+)\.mlp_channels\.", r"stages.0.\1.channel."),
        (r"^blocks\.(\d+)\.", r"stages.0.\1."),
        (r"^norm\.", "head_norm."),
    ],
    "metaformer": [
        # timm keeps the downsampling apart (stages.i.downsample, stages.i.blocks.j); ours leads the stage
        (r"^stages\.(\d+)\.downsample\.", r"stages.\1.0."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"stages.{m[1]}.{int(m[2]) + (int(m[1]) > 0)}."),
        (r"\.token_mixer\.pwconv1\.", ".spatial.pw1."),  # SepConv's 1x1 convs are our per-token linears
        (r"\.token_mixer\.pwconv2\.", ".spatial.pw2."),
        (r"\.token_mixer\.dwconv\.", ".spatial.dw."),
        (r"\.token_mixer\.act1\.", ".spatial.act."),
        (r"\.token_mixer\.", ".spatial."),
        (r"\.mlp\.", ".channel."),
        (r"^head\.norm\.", "head_norm."),
        (r"^head\.fc\.", "head."),
    ],
}


def rename(key: str, family: str) -> str:
    for pattern, repl in RULES[family]:
        key = re.sub(pattern, repl, key)
    return key


def resolve(key: str, ours: dict[str, torch.Tensor]) -> str:
    """Our channels-first norms (GroupNorm, BatchNorm) sit one level deeper: norm1.weight -> norm1.norm.weight."""
    if key in ours:
        return key
    module, _, name = key.rpartition(".")
    deeper = f"{module}.norm.{name}"
    return deeper if deeper in ours else key


def convert_state(family: str, theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict:
    """timm state dict -> ours. 1x1 convs become linears by reshaping (same numbers, same count)."""
    out = {}
    for key, value in theirs.items():
        if family == "vit" and key == "pos_embed":  # one table for [class; grid] -> class position + grid positions
            grid = ours["pos_embed"].shape
            out["prefix_pos_embed"], out["pos_embed"] = value[:, :1], value[:, 1:].reshape(grid)
            continue
        new = resolve(rename(key, family), ours)
        if new in ours and value.shape != ours[new].shape and value.shape[2:] == (1, 1):  # 1x1 conv -> linear
            value = value.reshape(ours[new].shape)
        out[new] = value
    return out


def family_of(preset: str) -> str:
    family = preset.split("-")[0]
    return family if family in ("vit", "mixer") else "metaformer"


def timm_config(model: nn.Module, preset: str) -> MetaFormerConfig:
    """The preset's config with the timm model's input size, channels and classes."""
    family = family_of(preset)
    pool = model.head.global_pool.pool_type if family == "metaformer" else model.global_pool
    if pool != ("token" if family == "vit" else "avg"):
        raise ConfigError(f"from_timm: {preset} reads out {'the class token' if family == 'vit' else 'the mean'}, "
                          f"but this timm model pools with global_pool={pool!r}")
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    if family == "metaformer":  # no part of these depends on the grid: keep the checkpoint's resolution
        img_size = model.pretrained_cfg["input_size"][-1]
    else:
        size = (model.patch_embed if family == "vit" else model.stem).img_size
        if size[0] != size[1]:
            raise ConfigError(f"from_timm: only square inputs are supported, this model takes {size}")
        img_size = size[0]
    return replace(PUBLISHED[preset], img_size=img_size, in_chans=first_conv.in_channels, num_classes=model.num_classes)


def from_timm(model_or_name: nn.Module | str, pretrained: bool = True) -> MetaFormer:
    """Builds the published preset matching a timm model and loads its weights.

    A name ("vit_small_patch16_224", "caformer_s18.sail_in1k") is created with timm first, with its
    pretrained weights unless pretrained=False. The result has the timm model's mode (train/eval).
    """
    model = timm.create_model(model_or_name, pretrained=pretrained) if isinstance(model_or_name, str) else model_or_name
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    if arch not in PRESET_OF:
        raise ConfigError(f"from_timm: no preset reproduces timm model {arch or type(model).__name__!r}; "
                          f"supported: {', '.join(PRESET_OF)}")
    preset = PRESET_OF[arch]
    with torch.device("meta"):  # shapes only: every tensor is then assigned from timm's (no init, no copy of ours)
        ours = MetaFormer(timm_config(model, preset))
    target = ours.state_dict()
    state = convert_state(family_of(preset), model.state_dict(), target)
    unexpected = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state))
    if unexpected or missing:
        raise ConfigError(f"from_timm: {arch} does not have the layout of preset {preset!r} "
                          f"(timm-only: {', '.join(unexpected) or 'none'}; preset-only: {', '.join(missing) or 'none'})")
    try:  # clones: training ours must not change the timm model
        ours.load_state_dict({k: v.detach().clone() for k, v in state.items()}, assign=True)
    except RuntimeError as e:  # same names, other shapes
        raise ConfigError(f"from_timm: {arch} does not have the shapes of preset {preset!r}: {e}") from None
    return ours.train(model.training)
