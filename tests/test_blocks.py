"""Every registered spatial x channel mixer pair in both backbone shapes and both precisions: shape, finite loss,
gradients."""
import dataclasses
import math

import pytest
import torch

import blocks
from blocks.backbone import build_mixer

SHAPES = {"isotropic": "tiny", "hierarchical": "tiny-hier"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channel", blocks.CHANNEL)
@pytest.mark.parametrize("spatial", blocks.SPATIAL)
def test_pair_trains(spatial: str, channel: str, shape: str, precision: str):
    torch.manual_seed(0)
    model = blocks.create(SHAPES[shape], spatial=spatial, channel=channel)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    assert logits.shape == (4, 10)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no gradient"
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
        else:
            assert spatial == "random" and name.endswith("random_matrix"), f"{name} is frozen unexpectedly"
            assert p.grad is None
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == (spatial == "random")


@pytest.mark.parametrize("spatial", blocks.SPATIAL)
def test_mixer_keeps_shape(spatial: str):
    mixer = build_mixer(blocks.SPATIAL, "spatial", spatial, 16, {}, grid=(5, 3))
    x = torch.randn(2, 5, 3, 16)
    assert mixer(x).shape == x.shape


@pytest.mark.parametrize("channel", blocks.CHANNEL)
def test_channel_mixer_keeps_shape(channel: str):
    mixer = build_mixer(blocks.CHANNEL, "channel", channel, 16, {})
    x = torch.randn(2, 5, 3, 16)
    assert mixer(x).shape == x.shape


@pytest.mark.parametrize("class_token", [False, True])
def test_attention_spelled_out_under_cpu_bf16_is_sdpa_to_bf16_precision(monkeypatch, class_token):
    """Attention.attend's CPU bf16 path (a speed fix, no SDPA there) gives fp32 SDPA's output to bf16's precision,
    class tokens included."""
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].dtype) or sdpa(*a, **kw))
    torch.manual_seed(0)
    mixer = blocks.SPATIAL["attention"](64, (7, 7))
    tokens = torch.randn(2, 49 + class_token, 64)  # a class token first, as the backbone's sequence has it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mixer.mix(tokens, (7, 7))
    assert calls == []
    high = mixer.mix(tokens, (7, 7))
    assert calls == [torch.float32]
    assert low.dtype == torch.bfloat16 and low.shape == high.shape == tokens.shape
    torch.testing.assert_close(low.float(), high, atol=0.03, rtol=0.03)


def test_random_mixer_is_frozen_and_counted():
    from ablate.engines.cost import count_params
    trainable, frozen = count_params(blocks.create("tiny", spatial="random"))
    assert frozen == 4 * 49 * 49  # one 49x49 matrix per block
    assert trainable == count_params(blocks.create("tiny", spatial="identity"))[0]


def test_glu_matches_mlp_size():
    mlp = sum(p.numel() for p in build_mixer(blocks.CHANNEL, "channel", "mlp", 96, {}).parameters())
    glu = sum(p.numel() for p in build_mixer(blocks.CHANNEL, "channel", "glu", 96, {}).parameters())
    assert abs(glu - mlp) / mlp < 0.01


def test_token_mlp_rejects_other_grid():
    model = blocks.create("tiny", spatial="mlp", pos_embed="none")
    with pytest.raises(blocks.ConfigError, match="built for 28 px.*8x8.*token-mixing MLP"):
        model(torch.randn(1, 1, 32, 32))
    mixer = build_mixer(blocks.SPATIAL, "spatial", "mlp", 8, {}, grid=(7, 7))
    with pytest.raises(blocks.ConfigError, match="7x7 token grid and cannot run on 8x8"):
        mixer(torch.randn(1, 8, 8, 8))


def test_conv_model_runs_on_any_grid():
    model = blocks.create("tiny", spatial="conv", pos_embed="none")
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_unknown_names_and_options_list_valid_ones():
    with pytest.raises(blocks.ConfigError, match="unknown spatial mixer 'sa'; valid: attention, mlp, conv"):
        blocks.create("tiny", spatial="sa")
    with pytest.raises(blocks.ConfigError, match="has no option 'kernel'; its options: kernel_size"):
        blocks.create("tiny", spatial="conv", spatial_options={"conv": {"kernel": 3}})
    with pytest.raises(blocks.ConfigError, match="unknown preset 'huge'; valid: tiny"):
        blocks.create("huge")
    with pytest.raises(blocks.ConfigError, match="unknown backbone option 'width'"):
        blocks.create("tiny", width=3)


def test_options_of_other_mixers_are_dropped_on_swap():
    """The preset's conv kernel option applies only where conv is used: a swap changes one thing."""
    conv = blocks.create("tiny", spatial="conv")
    assert conv.stages[0][0].spatial.dw.kernel_size == (3, 3)
    attn = blocks.create("tiny", spatial="attention")
    assert type(attn.stages[0][0].spatial).__name__ == "Attention"


def test_swap_changes_only_the_spatial_mixer():
    def outside_mixer(model):
        return {n: tuple(p.shape) for n, p in model.state_dict().items() if ".spatial." not in n}
    reference = outside_mixer(blocks.create("tiny", spatial="attention"))
    for spatial in blocks.SPATIAL:
        assert outside_mixer(blocks.create("tiny", spatial=spatial)) == reference


@pytest.mark.parametrize("norm", ["layer", "batch", "group1"])
@pytest.mark.parametrize("pos_embed", ["none", "learned", "sincos"])
def test_backbone_options(norm: str, pos_embed: str):
    model = blocks.create("tiny", spatial="attention", norm=norm, pos_embed=pos_embed, layer_scale=1e-5,
                          drop_path=0.1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_hierarchical_positional_embedding_sits_on_the_first_stage_grid(pos_embed: str):
    """Attention in every stage of a hierarchical model is blind to positions inside a stage without one."""
    model = blocks.create("tiny-hier", spatial="attention", pos_embed=pos_embed)
    assert model.pos_embed.shape == (1, 14, 14, 32)  # 28 px / stem stride 2, first stage's width
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert pos_embed == "sincos" or model.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial", ["attention", "mlp", "random"])
def test_class_token_head(spatial: str):
    model = blocks.create("tiny", spatial=spatial, head="token", head_norm="pre")
    assert model.cls_token is not None
    logits = model(torch.randn(2, 1, 28, 28))
    logits.sum().backward()
    assert model.cls_token.grad.abs().sum() > 0


@pytest.mark.parametrize("head_norm", ["pre", "post", "none"])
def test_every_head_norm_parameter_is_used(head_norm: str):
    model = blocks.create("tiny", head_norm=head_norm)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused, f"parameters that never get a gradient: {unused}"


def test_class_token_needs_a_token_mixer():
    with pytest.raises(blocks.ConfigError, match="cannot reach a class token; build the model with head='avg'"):
        blocks.create("tiny", spatial="conv", head="token")


def test_per_stage_mixers_in_hierarchical_shape():
    model = blocks.create("tiny-hier")
    kinds = [type(stage[-1].spatial).__name__ for stage in model.stages]
    assert kinds == ["DepthwiseConv", "DepthwiseConv", "Attention", "Attention"]
    assert len(model.stages) == 4


def test_weight_decay_skips_embeddings_class_token_norms_and_biases():
    from ablate.engines.training.step import make_optimizer
    model = blocks.create("tiny", spatial="attention", head="token")
    assert model.no_weight_decay() == {"pos_embed", "prefix_pos_embed", "cls_token"}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in make_optimizer(model, 1e-3, 0.05).param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert {"pos_embed", "prefix_pos_embed", "cls_token"}.isdisjoint(decayed)
    assert not any(n.endswith(".bias") or ".norm" in n for n in decayed)
    assert "stages.0.0.spatial.qkv.weight" in decayed and "head.weight" in decayed


BAD_VALUES = {"img_size": 0, "in_chans": -1, "num_classes": -1, "depths": (0,), "dims": (-8,), "spatial": 3,
              "channel": None, "spatial_options": [], "channel_options": {"mlp": 4}, "stem": "pixel",
              "patch_size": 0, "stem_norm": "rms", "downsample_norm": 1, "norm": "rms", "norm_eps": 0.0,
              "pos_embed": "rope", "head": "cls", "head_norm": "mid", "head_norm_name": "rms", "head_norm_eps": -1.0,
              "head_hidden_ratio": -1.0, "layer_scale": -1e-5, "res_scale": "one", "drop_path": 1.5, "drop": -0.1,
              "residual": "yes"}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(blocks.MetaFormerConfig)])
def test_every_config_field_is_checked(name):
    """A wrong type or an out-of-range value of any field is a ConfigError naming it, before anything is built."""
    with pytest.raises(blocks.ConfigError, match=name.split("_options")[0] if "options" in name else name):
        blocks.create("tiny", **{name: BAD_VALUES[name]})


STRUCTURES = {"no channel mixer": {"channel": "identity"}, "no norm": {"norm": "none"},
              "no residual": {"residual": False}}


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("spatial", blocks.SPATIAL)
def test_structure_ablations_build_and_train_with_every_mixer(spatial: str, structure: str):
    """PoolFormer Table 5's structure ablations: each removal builds and trains (finite losses, every parameter
    updated); without the channel MLP or the norm a fixed batch's loss falls within 8 AdamW steps. Without
    residuals it need not: four blocks initialised at std 0.02 pass almost nothing on (PoolFormer: 0.1% top-1)."""
    torch.manual_seed(0)
    model = blocks.create("tiny", spatial=spatial, **STRUCTURES[structure])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    if structure != "no residual":
        assert losses[-1] < losses[0]


def test_no_residual_means_no_skip_connection():
    model = blocks.create("tiny", spatial="identity", channel="identity", residual=False, norm="none")
    grid = torch.randn(2, 7, 7, 64)
    assert torch.equal(model.stages[0](grid), grid)  # identity branches, nothing added back: x passes unchanged
    with pytest.raises(blocks.ConfigError, match="residual=false"):
        blocks.create("tiny", residual=False, drop_path=0.1)
