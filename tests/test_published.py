"""Published presets reproduce timm's models: same parameter count, same logits after from_timm."""
import pytest
import timm
import torch

import blocks
from blocks.published import PUBLISHED, TIMM_NAMES

# the smallest size of each family: logit parity in the default run
FAST = ["vit-ti16", "mixer-s32", "poolformer-s12", "poolformerv2-s12", "convformer-s18", "caformer-s18"]
SLOW = [name for name in PUBLISHED if name not in FAST]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, so that norms' affine terms, layer/residual scales (1e-5 at init) and
    StarReLU's scale and bias all change the output and a mis-mapped one shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_param_count_equals_timm(name):
    cfg = PUBLISHED[name]
    assert (cfg.img_size, cfg.in_chans, cfg.num_classes) == (224, 3, 1000)
    with torch.device("meta"):  # shapes only: no memory, no init
        ours = blocks.create(name)
        theirs = timm.create_model(TIMM_NAMES[name], num_classes=1000)  # vit_large_patch32_224 defaults to no head
    assert n_params(ours) == n_params(theirs) > 0


def check_logits(name: str, img_size: int) -> None:
    kwargs = {"img_size": img_size} if name.startswith(("vit", "mixer")) else {}  # tied to the grid: build for it
    torch.manual_seed(0)
    theirs = perturbed(timm.create_model(TIMM_NAMES[name], num_classes=1000, **kwargs))
    ours = blocks.from_timm(theirs)
    assert not ours.training
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape == (2, 1000)
    assert expected.std() > 0.1  # the check below means something
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", FAST)
def test_logits_equal_timm_smallest(name):
    check_logits(name, img_size=64)  # every family allows other sizes; 64 px keeps the default run fast


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + SLOW)
def test_logits_equal_timm_224(name):
    check_logits(name, img_size=224)


def test_from_timm_keeps_headless_models():
    theirs = perturbed(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32))
    ours = blocks.from_timm(theirs)
    assert ours.cfg.num_classes == 0 and n_params(ours) == n_params(theirs)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4)


def test_from_timm_rejects_other_models():
    with torch.device("meta"):
        with pytest.raises(blocks.ConfigError, match="no preset reproduces timm model 'resnet18'"):
            blocks.from_timm(timm.create_model("resnet18"))
        with pytest.raises(blocks.ConfigError, match="global_pool='avg'"):
            blocks.from_timm(timm.create_model("vit_tiny_patch16_224", global_pool="avg"))
        with pytest.raises(blocks.ConfigError, match="layout of preset 'vit-ti16'.*ls1"):
            blocks.from_timm(timm.create_model("vit_tiny_patch16_224", init_values=1e-5))  # layer scale


@pytest.mark.parametrize("name, spatial, mixer_part", [
    ("vit-s16", "mlp", ".spatial."),
    ("mixer-s16", "attention", ".spatial."),
    ("caformer-s18", "pool", ".spatial."),
    ("poolformer-s12", "conv", ".spatial."),
])
def test_swap_changes_only_the_spatial_mixer(name, spatial, mixer_part):
    with torch.device("meta"):
        base, swapped = shapes(blocks.create(name)), shapes(blocks.create(name, spatial=spatial))
    outside = {k: v for k, v in base.items() if mixer_part not in k}
    assert outside == {k: v for k, v in swapped.items() if mixer_part not in k}
    assert len(outside) > 10
    assert {k: v for k, v in base.items() if mixer_part in k} != {k: v for k, v in swapped.items() if mixer_part in k}


def test_swap_builds_the_token_mlp_for_the_preset_grid():
    with torch.device("meta"):
        model = blocks.create("vit-s16", spatial="mlp")
    # 14 x 14 patches plus the class token are the tokens mixed; hidden 0.5 * 384 (Mixer's default)
    assert tuple(model.stages[0][0].spatial.fc1.weight.shape) == (192, 14 * 14 + 1)


def test_class_token_needs_a_token_mixer():
    with pytest.raises(blocks.ConfigError, match="head='avg'"):
        blocks.create("vit-ti16", spatial="conv")


def test_published_presets_are_registered_beside_the_cpu_ones():
    assert set(PUBLISHED) <= set(blocks.PRESETS)
    assert {"tiny", "small", "tiny-hier"} <= set(blocks.PRESETS)
    assert blocks.preset_config("caformer-s18", spatial="pool").spatial == ("pool",) * 4
