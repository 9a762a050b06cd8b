"""What the recipe does to a training batch after its transform, and to the weights after a step: random erasing
and Mixup/CutMix (timm's, on whole batches on the device) and a moving average of the weights (timm ModelEmaV3)."""
import random

import numpy as np
import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.utils import ModelEmaV3

from ...foundations.config import RunConfig


class BatchRegularizer:
    """x, y -> x', y': erasing on the normalised images, then Mixup/CutMix, whose targets are mixed one-hot
    distributions (already smoothed: the loss then takes no label smoothing of its own)."""

    def __init__(self, cfg: RunConfig, num_classes: int, device: torch.device):
        self.erase = RandomErasing(cfg.random_erasing, mode="pixel", device=device) if cfg.random_erasing else None
        self.mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                         num_classes=num_classes) if cfg.mixup or cfg.cutmix else None
        self.label_smoothing = 0.0 if self.mix else cfg.label_smoothing

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.erase:
            x = self.erase(x)
        if self.mix:
            x, y = self.mix(x, y)
        return x, y


def seed_host_rngs(seed: int) -> None:
    """timm's Mixup draws from numpy's global generator and RandomErasing from Python's: seeded per run, and saved
    in checkpoints (host_rng_state) so that a resumed run draws what the uninterrupted one would."""
    random.seed(seed)
    np.random.seed(seed)  # RunConfig's seed range keeps seed + rank offsets below 2**32


def host_rng_state() -> dict:
    """Both states as ints, floats, strings, tuples and lists: what torch.load(weights_only=True) reads back (numpy's
    own form holds an ndarray, which it refuses)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python_rng": random.getstate(),
            "numpy_rng": {"bit_generator": name, "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                          "gauss": float(gauss)}}


def set_host_rng_state(state: dict) -> None:
    """host_rng_state()'s states back; a malformed one raises TypeError, ValueError or KeyError."""
    random.setstate(state["python_rng"])
    numpy = state["numpy_rng"]
    np.random.set_state((numpy["bit_generator"], np.asarray(numpy["key"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))


def make_ema(cfg: RunConfig, model: torch.nn.Module) -> ModelEmaV3 | None:
    """The weights' exponential moving average, its decay warmed up from 0 (the first steps would otherwise be
    averaged over an untrained start); None without `ema`."""
    return ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
