"""Batched image transforms on tensors: normalisation, random crop + flip, and the fixed pixel shuffles of
MLP-Mixer Fig. 4. In-memory and streamed datasets share them, so both see the same transform."""
from dataclasses import dataclass

import torch

from blocks.checks import shown

from ...foundations.config import SHUFFLES
from ...foundations.errors import DataError


def pixel_permutation(mode: str, height: int, width: int, patch: int, seed: int) -> torch.Tensor | None:
    """A fixed permutation of the H*W pixel positions (MLP-Mixer Fig. 4), or None for `none`.

    patch:  one permutation of the patch grid and one of the pixels inside every patch;
    global: one permutation of all pixels. out.flatten(-2) = img.flatten(-2)[..., perm].
    """
    if mode not in SHUFFLES:
        raise DataError(f"unknown shuffle {shown(mode)}; valid: {', '.join(SHUFFLES)}")
    if mode == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    if mode == "global":
        return torch.randperm(height * width, generator=g)
    if height % patch or width % patch:
        raise DataError(f"patch shuffle needs the image ({height}x{width}) divisible by the patch size {patch}")
    gh, gw = height // patch, width // patch
    patch_perm = torch.randperm(gh * gw, generator=g)
    inner_perm = torch.randperm(patch * patch, generator=g)
    # pixel index laid out as (patch row, patch col, row in patch, col in patch)
    index = torch.arange(height * width).view(gh, patch, gw, patch).permute(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    index = index[patch_perm][:, inner_perm]  # output patch j takes input patch perm[j], pixels permuted inside
    return index.view(gh, gw, patch, patch).permute(0, 2, 1, 3).reshape(-1)


def apply_permutation(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    if perm is None:
        return x
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W)[..., perm].reshape(B, C, H, W)


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip for a whole batch (B, C, H, W) at once."""
    B, C, H, W = x.shape
    dev = x.device  # the draws come from a CPU generator (saved in checkpoints); the indexing runs where x is
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator).to(dev)
        rows = (dy + torch.arange(H, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(W, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(B, device=dev)[:, None, None, None], torch.arange(C, device=dev)[None, :, None, None],
                   rows, cols]
    if flip:
        mask = (torch.rand(B, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


@dataclass
class Transform:
    """A uint8 batch (B, C, H, W) -> the model's input: in [0, 1], augmented (given a generator), normalized,
    pixel-shuffled."""
    mean: torch.Tensor               # (1, C, 1, 1), in [0, 1] units
    std: torch.Tensor
    perm: torch.Tensor | None = None  # pixel_permutation(...)
    pad: int = 0                     # random-crop padding
    flip: bool = False               # random horizontal flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.float().div_(255)
        if generator is not None:
            x = augment(x, self.pad, self.flip, generator)
        return apply_permutation((x - self.mean) / self.std, self.perm)


def augment_generator(seed: int, rank: int = 0) -> torch.Generator:
    """Augmentation randomness, saved in checkpoints; every rank of a distributed job draws its own."""
    return torch.Generator().manual_seed(seed + 1 + 1_000_003 * rank)
