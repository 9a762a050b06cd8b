"""The one check of a run config, before anything is loaded or written, and the model it resolves to."""
import os
from dataclasses import dataclass

import torch

import blocks

from ...foundations import config
from ...foundations.config import RunConfig
from ...foundations.errors import UsageError
from .. import data, matching
from ..cost import count_params

BYTES_PER_PARAM = 4 * 4  # fp32 weight, gradient and AdamW's two moments


@dataclass(frozen=True)
class ModelPlan:
    config: blocks.MetaFormerConfig  # the backbone, resolved: preset + the run's overrides + data shape + matching
    matched: dict | None             # what --match resized it to (metric, to, target); None without --match


def check(cfg: RunConfig) -> ModelPlan | None:
    """Every field's type and range, the dataset's name, then the model, built on the meta device: mixer names and
    options, grid sizes, and whether its parameters and optimizer state fit in memory. Each problem is a UsageError
    (exit 2). Returns the model plan, or None for a dataset whose image shape is only known from its files (image
    folders): plan_model checks the model once they are listed."""
    config.check(cfg)
    cfg = config.resolve(cfg)
    entry = data.check_img_size(cfg.dataset, cfg.img_size)
    if entry.shape is None:
        blocks.preset_config(cfg.preset, spatial=cfg.spatial, channel=cfg.channel, **cfg.model_options)
        return None
    return plan_model(cfg, entry.shape, entry.num_classes)


def plan_model(cfg: RunConfig, shape: tuple[int, int, int], num_classes: int) -> ModelPlan:
    """The backbone for data of `shape` (C, H, W): the dataset sets in_chans, img_size and num_classes, a user's
    model_options win where they can (img_size, for a model that runs on any grid; a token-MLP built for another
    size is caught here), and --match resizes it."""
    c, h, w = shape
    if h != w:
        raise UsageError(f"{cfg.dataset} images are {h}x{w}; the backbone needs square images")
    base = {"in_chans": c, "img_size": h, "num_classes": num_classes, **cfg.model_options}
    check_fits_data(cfg.dataset, blocks.preset_config(cfg.preset, spatial=cfg.spatial, channel=cfg.channel, **base),
                    shape, num_classes)
    resized, matched = matching.run_overrides(cfg.preset, cfg.spatial, cfg.channel, cfg.match, cfg.match_to, base)
    model_cfg = blocks.preset_config(cfg.preset, spatial=cfg.spatial, channel=cfg.channel, **{**base, **resized})
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = blocks.MetaFormer(model_cfg)
        if model_cfg.img_size != h:  # a model built for another size must say so now, not in the first batch
            model.check_grid(tuple(model.stem(torch.zeros(1, c, h, w)).shape[1:3]))
    check_memory(model, cfg.device, ema=cfg.ema > 0)
    return ModelPlan(model_cfg, matched)


def check_fits_data(dataset: str, model: blocks.MetaFormerConfig, shape: tuple[int, int, int],
                    num_classes: int) -> None:
    """The model's input channels and classes are the dataset's (a model option that says otherwise fails in the
    first batch, or trains outputs for classes that are not there); num_classes = 0 (timm's features-only model)
    has no classifier to train; a patch stem must not drop pixels of images of another size than it was built for."""
    c, h, _ = shape
    for name, value, what in (("in_chans", c, "image channels"), ("num_classes", num_classes, "classes")):
        given = getattr(model, name)
        if given != value:
            why = ("builds a model without a classifier (features only), which cannot be trained" if not given
                   else f"does not fit {dataset}")
            raise UsageError(f"model option {name} = {given} {why}; valid: {value}, as {dataset} has {value} {what} "
                             f"(leave {name} out: it is set from the dataset)")
    if model.stem == "patch" and h % model.patch_size:
        raise UsageError(f"the patch stem (patch_size {model.patch_size}) does not divide {dataset}'s {h} px images "
                         f"and would drop pixels; valid: a patch_size that divides {h}")


def check_memory(model: torch.nn.Module, device: str, ema: bool) -> None:
    """Parameters, gradients, AdamW state and any EMA copy must fit in the device's free memory (activations come
    on top).
    A GPU asked for on a machine without one (a study's login node) is checked where the run lands."""
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        return
    trainable, frozen = count_params(model)
    need = trainable * BYTES_PER_PARAM + frozen * 4 + (trainable + frozen) * 4 * ema
    free = torch.cuda.mem_get_info()[0] if on_gpu else available_memory()
    if need > free:
        raise UsageError(f"the model has {trainable + frozen:,} parameters ({frozen:,} frozen) and needs "
                         f"{need / 2**30:.1f} GiB for them, their gradients, AdamW's state{' and the EMA copy' if ema else ''}, more than the "
                         f"{free / 2**30:.1f} GiB free on the {'GPU' if on_gpu else 'CPU'}; lower img_size, the width "
                         f"or the depth")


def available_memory() -> int:
    """Bytes of memory the kernel can give this process now: MemAvailable (free + reclaimable cache) on Linux."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
