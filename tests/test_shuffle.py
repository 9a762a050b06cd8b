"""The fixed pixel shuffles of MLP-Mixer Fig. 4, and why a patch shuffle cannot hurt Mixer.

A `patch` shuffle permutes the patch grid and, with one shared permutation, the pixels inside every
patch. A model whose first layer is a linear map per patch, whose token mixing is permutation-
equivariant (attention) or a dense map over tokens (token-MLP), and whose head pools over tokens
is then equivalent to itself with permuted weights: the shuffle is absorbed, nothing is lost.
"""
import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import blocks
from ablate.engines.data import transforms as data
from ablate.engines.training.plan import check
from ablate.engines.training.trainer import Trainer
from ablate.foundations.config import RunConfig

H = W = 28
PATCH = 4


def test_permutations_are_fixed_by_the_seed_and_are_permutations():
    for mode in ("patch", "global"):
        a = data.pixel_permutation(mode, H, W, PATCH, seed=3)
        assert torch.equal(a, data.pixel_permutation(mode, H, W, PATCH, seed=3))
        assert not torch.equal(a, data.pixel_permutation(mode, H, W, PATCH, seed=4))
        assert torch.equal(a.sort().values, torch.arange(H * W))
    assert data.pixel_permutation("none", H, W, PATCH, seed=3) is None


def test_patch_shuffle_moves_whole_patches_with_one_inner_permutation():
    perm = data.pixel_permutation("patch", H, W, PATCH, seed=0)
    gh, gw = H // PATCH, W // PATCH
    # source pixel of every output pixel, as (patch index, position inside the patch)
    rows, cols = perm // W, perm % W

    def per_patch(pixels):  # (H*W,) in image order -> (patches, pixels in a patch)
        return pixels.view(gh, PATCH, gw, PATCH).permute(0, 2, 1, 3).reshape(gh * gw, -1)

    src_patch = per_patch((rows // PATCH) * gw + cols // PATCH)
    src_inner = per_patch((rows % PATCH) * PATCH + cols % PATCH)
    assert (src_patch == src_patch[:, :1]).all(), "every output patch must come from one input patch"
    assert torch.equal(src_patch[:, 0].sort().values, torch.arange(gh * gw))
    assert (src_inner == src_inner[:1]).all(), "every patch must be shuffled by the same inner permutation"
    assert not torch.equal(src_patch[:, 0], torch.arange(gh * gw))
    assert not torch.equal(src_inner[0], torch.arange(PATCH * PATCH))


@pytest.mark.parametrize("mode", ["patch", "global"])
def test_shuffle_is_exactly_invertible(mode):
    x = torch.randn(5, 3, H, W)
    perm = data.pixel_permutation(mode, H, W, PATCH, seed=1)
    shuffled = data.apply_permutation(x, perm)
    assert not torch.equal(shuffled, x)
    assert torch.equal(data.apply_permutation(shuffled, torch.argsort(perm)), x)


def test_pixel_permutation_rejects_bad_input():
    with pytest.raises(data.DataError, match="valid: none, patch, global"):
        data.pixel_permutation("rows", H, W, PATCH, seed=0)
    with pytest.raises(data.DataError, match="divisible"):
        data.pixel_permutation("patch", H, W, 5, seed=0)


def test_trainer_applies_one_permutation_to_train_and_test():
    """The batches a Trainer feeds are its unshuffled batches under one fixed permutation, train and test alike."""
    cfg = RunConfig(dataset="synthetic", shuffle="patch", augment=False, seed=2, batch_size=100, device="cpu",
                          train_size=500)
    trainer = Trainer(cfg, check(cfg), quiet=True)
    expected = data.pixel_permutation("patch", H, W, trainer.model.cfg.patch_size, cfg.seed)
    assert torch.equal(trainer.train_batches.transform.perm, expected)
    assert torch.equal(trainer.test_batches.transform.perm, expected)
    inverse = torch.argsort(expected)
    for batches in (trainer.train_batches, trainer.test_batches):
        plain = copy.copy(batches)
        plain.transform = dataclasses.replace(batches.transform, perm=None)
        for (xs, ys), (xp, yp) in zip(batches.epoch(0), plain.epoch(0)):
            assert torch.equal(ys, yp)
            assert not torch.equal(xs, xp)
            assert torch.equal(data.apply_permutation(xs, inverse), xp)
    assert trainer.record(Path("unused"), "running")["shuffle"] == "patch"


def token_permutation(perm: torch.Tensor, p: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads a patch shuffle back as (patch_perm, inner_perm): output token j is input token patch_perm[j],
    and output pixel k of a patch is pixel inner_perm[k] of its source patch."""
    g = side // p
    tokens = perm.view(g, p, g, p).permute(0, 2, 1, 3).reshape(g * g, p * p)  # source pixel per (patch, inner)
    rows, cols = tokens // side, tokens % side
    return (rows[:, 0] // p) * g + cols[:, 0] // p, (rows[0] % p) * p + cols[0] % p


def permute_for_patch_shuffle(model: blocks.MetaFormer, perm: torch.Tensor) -> blocks.MetaFormer:
    """A copy of `model` whose weights absorb the patch shuffle `perm` (from data.pixel_permutation)."""
    patch_perm, inner_perm = token_permutation(perm, model.cfg.patch_size, model.cfg.img_size)
    out = copy.deepcopy(model)
    with torch.no_grad():
        conv = out.stem.conv  # k = s = patch: token_j = sum_k w[k] * x_j[k]
        w = conv.weight.flatten(2)[..., inner_perm]
        conv.weight.copy_(w.view_as(conv.weight))
        if out.pos_embed is not None:  # position embedding follows its token
            out.pos_embed.copy_(out.pos_embed.flatten(1, 2)[:, patch_perm].view_as(out.pos_embed))
        for block in out.stages[0]:
            mixer = block.spatial
            if isinstance(mixer, blocks.SPATIAL["mlp"]):  # dense over tokens: permute its token axis in and out
                mixer.fc1.weight.copy_(mixer.fc1.weight[:, patch_perm])
                mixer.fc2.weight.copy_(mixer.fc2.weight[patch_perm])
                mixer.fc2.bias.copy_(mixer.fc2.bias[patch_perm])
            # attention is permutation-equivariant: nothing to permute
    return out


@pytest.mark.parametrize("spatial,pos_embed", [("mlp", "none"), ("mlp", "learned"), ("attention", "learned")])
def test_permuted_weights_absorb_the_patch_shuffle(spatial, pos_embed):
    torch.manual_seed(0)
    model = blocks.create("tiny", spatial=spatial, stem="patch", pos_embed=pos_embed).eval()
    with torch.no_grad():  # trained-looking weights: no zero biases or embeddings that hide a wrong permutation
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(8, 1, H, W)
    perm = data.pixel_permutation("patch", H, W, model.cfg.patch_size, seed=5)
    shuffled = data.apply_permutation(x, perm)
    twin = permute_for_patch_shuffle(model, perm).eval()
    with torch.no_grad():
        reference, on_shuffled, twin_on_shuffled = model(x), model(shuffled), twin(shuffled)
        grid, _ = model.forward_features(x)
        twin_grid, _ = twin.forward_features(shuffled)
    torch.testing.assert_close(twin_on_shuffled, reference, rtol=1e-4, atol=1e-5)
    # stronger than equal logits: every token of the twin is the original's token it was moved from
    patch_perm = token_permutation(perm, model.cfg.patch_size, W)[0]
    torch.testing.assert_close(twin_grid.flatten(1, 2), grid.flatten(1, 2)[:, patch_perm], rtol=1e-4, atol=1e-5)
    # the shuffle does change what the original model computes, so the equality above is not vacuous
    assert (on_shuffled - reference).abs().max() > 1e-2

