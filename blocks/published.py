"""Published architectures as MetaFormer configs, each equal to a timm model (params and logits).

Every family is the same backbone with different options; mixer options sit under the mixer's
name, so `create("vit-s16", spatial="mlp")` drops ViT's head count and keeps everything else.
`TIMM_NAMES` maps each preset to the timm model it reproduces (see blocks.timm_convert).
"""
from .config import MetaFormerConfig

IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000)

# ViT (Dosovitskiy et al. 2021; timm vision_transformer): patch stem, learned position embedding,
# class token read out after the final LayerNorm, qkv with bias.
VIT_SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}  # dim, depth, heads
VIT_TIMM = {"ti": "tiny", "s": "small", "b": "base", "l": "large"}


def vit(size: str, patch: int) -> MetaFormerConfig:
    dim, depth, heads = VIT_SIZES[size]
    return MetaFormerConfig(**IMAGENET, depths=(depth,), dims=(dim,), spatial="attention", channel="mlp",
                            spatial_options={"attention": {"num_heads": heads}}, stem="patch", patch_size=patch,
                            norm="layer", norm_eps=1e-6, pos_embed="learned", head="token", head_norm="pre")


# MLP-Mixer (Tolstikhin et al. 2021; timm mlp_mixer): patch stem, token MLP of 0.5 * dim, no position
# embedding, mean over tokens after the final LayerNorm.
MIXER_SIZES = {"s": (512, 8), "b": (768, 12), "l": (1024, 24)}  # dim, depth


def mixer(size: str, patch: int) -> MetaFormerConfig:
    dim, depth = MIXER_SIZES[size]
    return MetaFormerConfig(**IMAGENET, depths=(depth,), dims=(dim,), spatial="mlp", channel="mlp",
                            spatial_options={"mlp": {"hidden_ratio": 0.5}}, stem="patch", patch_size=patch,
                            norm="layer", norm_eps=1e-6, head="avg", head_norm="pre")


# MetaFormer families (Yu et al. 2022, 2023; timm metaformer): 7x7 stride-4 stem, 3x3 stride-2
# downsampling, four stages, pooled features -> LayerNorm (with bias) -> classifier.
POOLFORMER_SIZES = {  # PoolFormer v1 and v2: depths, dims
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512)),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512)),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512)),
    "m36": ((6, 6, 18, 6), (96, 192, 384, 768)),
    "m48": ((8, 8, 24, 8), (96, 192, 384, 768)),
}
CONVFORMER_SIZES = {  # ConvFormer and CAFormer: depths, dims
    "s18": ((3, 3, 9, 3), (64, 128, 320, 512)),
    "s36": ((3, 12, 18, 3), (64, 128, 320, 512)),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}
METAFORMER_COMMON = dict(**IMAGENET, stem="overlap", patch_size=4, head="avg", head_norm="post",
                         head_norm_name="layer", head_norm_eps=1e-6)
# MetaFormer v2 (PoolFormerV2, ConvFormer, CAFormer): bias-free norms also after the stem and before each
# downsampling, StarReLU MLPs without bias, residual scale in the last two stages.
METAFORMER_V2 = dict(METAFORMER_COMMON, stem_norm="layer-nobias", downsample_norm="layer-nobias", norm_eps=1e-6,
                     res_scale=(None, None, 1.0, 1.0), channel="mlp",
                     channel_options={"mlp": {"act": "starrelu", "bias": False}})
SEPCONV = {"kernel_size": 7, "expansion": 2.0, "act": "starrelu", "bias": False}  # ConvFormer's inverted separable conv
CA_ATTENTION = {"head_dim": 32, "qkv_bias": False, "proj_bias": False}


def poolformer(size: str) -> MetaFormerConfig:
    """v1: GroupNorm(1) with timm's default eps 1e-5, layer scale, GELU MLP with bias, no stem/downsample norm."""
    depths, dims = POOLFORMER_SIZES[size]
    return MetaFormerConfig(**METAFORMER_COMMON, depths=depths, dims=dims, spatial="pool", channel="mlp",
                            spatial_options={"pool": {"pool_size": 3}}, norm="group1", norm_eps=1e-5,
                            layer_scale=1e-5 if size in ("s12", "s24") else 1e-6)


def poolformer_v2(size: str) -> MetaFormerConfig:
    depths, dims = POOLFORMER_SIZES[size]
    return MetaFormerConfig(**METAFORMER_V2, depths=depths, dims=dims, spatial="pool",
                            spatial_options={"pool": {"pool_size": 3}}, norm="group1-nobias")


def convformer(size: str) -> MetaFormerConfig:
    depths, dims = CONVFORMER_SIZES[size]
    return MetaFormerConfig(**METAFORMER_V2, depths=depths, dims=dims, spatial="conv",
                            spatial_options={"conv": SEPCONV}, norm="layer-nobias", head_hidden_ratio=4.0)


def caformer(size: str) -> MetaFormerConfig:
    depths, dims = CONVFORMER_SIZES[size]
    return MetaFormerConfig(**METAFORMER_V2, depths=depths, dims=dims, spatial=("conv", "conv", "attention", "attention"),
                            spatial_options={"conv": SEPCONV, "attention": CA_ATTENTION}, norm="layer-nobias",
                            head_hidden_ratio=4.0)


FAMILIES = {"poolformer": (poolformer, POOLFORMER_SIZES), "poolformerv2": (poolformer_v2, POOLFORMER_SIZES),
            "convformer": (convformer, CONVFORMER_SIZES), "caformer": (caformer, CONVFORMER_SIZES)}

PUBLISHED: dict[str, MetaFormerConfig] = {
    **{f"mixer-{size}{patch}": mixer(size, patch) for size in MIXER_SIZES for patch in (32, 16)},
    **{f"vit-{size}{patch}": vit(size, patch) for patch in (16, 32) for size in VIT_SIZES
       if (size, patch) != ("ti", 32)},  # timm registers no vit_tiny_patch32_224
    **{f"{family}-{size}": make(size) for family, (make, sizes) in FAMILIES.items() for size in sizes},
}


def timm_name(preset: str) -> str:
    """The timm model a published preset reproduces: vit-s16 -> vit_small_patch16_224."""
    family, size = preset.split("-")
    if family == "mixer":
        return f"mixer_{size}_224"
    if family == "vit":
        return f"vit_{VIT_TIMM[size[:-2]]}_patch{size[-2:]}_224"
    return f"{family}_{size}"


TIMM_NAMES: dict[str, str] = {name: timm_name(name) for name in PUBLISHED}
