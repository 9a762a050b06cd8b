"""Budget matching: resize a model so that its params or MACs equal a reference's (within 2%).

The rule, so that a matched comparison still changes one thing, the mixer, and the rest only in size:
1. Coarse step, width: every stage's width is scaled by the same factor and rounded to its step, a multiple
   of 8, and for a stage with attention a multiple of the head size (heads = dim / head_dim stays whole), or of
   num_heads where the preset fixes the head count (ViT). The width chosen is the one whose cost at the
   preset's own channel-MLP ratio is nearest the target (on a log scale).
2. Fine step, the channel mixer's hidden ratio (`channel_options[channel]["ratio"]`, for mlp and glu alike):
   at that width the cost is affine in the hidden size, so two counts give the ratio that hits the target.
   A ratio below one hidden unit moves the width one step down.
"params" means trainable parameters (the `params` of a run record; `random`'s frozen matrix is not capacity).
MACs are fvcore's (engines.cost.count_macs); the search itself counts on the "meta" device (no memory, no
compute) with torch's FlopCounterMode, then corrects the ratio once with fvcore's count.
"""
import inspect
import math
from dataclasses import replace

import torch

import blocks
from blocks.checks import shown

from ..foundations.config import MATCH_METRICS as METRICS
from ..foundations.errors import UsageError
from .cost import count_macs, count_params, flop_counter_macs

TOLERANCE = 0.02  # a matched model's cost is within 2% of the target, or matching fails


def model_cost(metric: str, cfg: blocks.MetaFormerConfig, fast: bool = False) -> int:
    """Trainable params or fvcore MACs of the model `cfg` builds; fast=True counts MACs with FlopCounterMode on
    the meta device (matmul and conv work only: no norms)."""
    if metric not in METRICS:
        raise UsageError(f"unknown budget metric {metric!r}; valid: {', '.join(METRICS)}")
    with torch.device("meta"):  # counting needs shapes only: no memory, no initialisation
        model = blocks.MetaFormer(cfg)
    if metric == "params":
        return count_params(model)[0]
    shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
    if fast:
        return sum(flop_counter_macs(model, shape).values())
    return count_macs(model.to_empty(device="cpu"), shape)  # fvcore traces a real (uninitialised) forward


def width_steps(cfg: blocks.MetaFormerConfig) -> list[int]:
    """Per stage, the step a width moves in so every mixer stays valid: its spatial mixer's `width_step` trait."""
    return [blocks.SPATIAL[name].width_step(cfg.spatial_options.get(name, {})) for name in cfg.per_stage(cfg.spatial)]


def channel_ratio(cfg: blocks.MetaFormerConfig, channel: str) -> float:
    """The channel mixer's hidden ratio in `cfg`: its option if set, else the mixer's default."""
    params = inspect.signature(blocks.CHANNEL[channel]).parameters
    if "ratio" not in params:
        tunable = [n for n, c in blocks.CHANNEL.items() if "ratio" in inspect.signature(c).parameters]
        raise UsageError(f"budget matching tunes the channel mixer's `ratio`; {channel!r} has none "
                         f"(valid: {', '.join(tunable)})")
    return cfg.channel_options.get(channel, {}).get("ratio", params["ratio"].default)


def with_size(cfg: blocks.MetaFormerConfig, channel: str, dims: tuple[int, ...],
              ratio: float) -> blocks.MetaFormerConfig:
    options = {**cfg.channel_options, channel: {**cfg.channel_options.get(channel, {}), "ratio": ratio}}
    return replace(cfg, dims=dims, channel_options=options)


def match_overrides(preset: str, spatial: str, channel: str, metric: str, target: int,
                    base_overrides: dict) -> dict:
    """Model overrides (dims, channel_options) that bring preset + spatial/channel + base_overrides to `target`
    params or MACs, by the rule in this module's docstring. Merge them over base_overrides to build the model."""
    if metric not in METRICS:
        raise UsageError(f"unknown budget metric {metric!r}; valid: {', '.join(METRICS)}")
    if isinstance(channel, (tuple, list)):
        raise UsageError("budget matching needs one channel mixer for all stages")
    cfg = blocks.preset_config(preset, spatial=spatial, channel=channel, **base_overrides)
    ratio0 = channel_ratio(cfg, channel)
    steps = width_steps(cfg)
    k0 = cfg.dims[0] / steps[0]

    def dims_at(k: int) -> tuple[int, ...]:
        return tuple(max(step, round(d * k / k0 / step) * step) for d, step in zip(cfg.dims, steps))

    cache: dict[tuple, int] = {}

    def fast(k: int, ratio: float) -> int:
        key = (dims_at(k), ratio)
        if key not in cache:
            cache[key] = model_cost(metric, with_size(cfg, channel, key[0], ratio), fast=True)
        return cache[key]

    k = nearest_width(lambda k: fast(k, ratio0), max(1, round(k0)), target, k_max=max(64, 16 * round(k0)))
    while k >= 1:
        dims = dims_at(k)
        ratio = solve_ratio(lambda r: fast(k, r), ratio0, target)
        if ratio * min(dims) >= 1:
            break
        k -= 1  # the channel MLP alone cannot shrink enough: narrower
    else:
        raise UsageError(f"cannot bring {preset} with {spatial}/{channel} down to {target:,} {metric}: even the "
                         f"narrowest width with a one-unit channel MLP costs more")
    if metric == "macs":  # fvcore also counts norms, which the fast count leaves out: one correction
        real = model_cost(metric, with_size(cfg, channel, dims, ratio))
        slope = (fast(k, ratio0) - fast(k, ratio0 / 2)) / (ratio0 / 2)
        ratio = max(ratio + (target - real) / slope, 1.5 / min(dims))
    ratio = tidy(ratio, dims)
    matched = with_size(cfg, channel, dims, ratio)
    real = model_cost(metric, matched)
    if abs(real / target - 1) > TOLERANCE:
        raise UsageError(f"budget matching missed: {preset} with {spatial}/{channel} at width {dims} and channel ratio "
                         f"{ratio} costs {real:,} {metric}, {real / target - 1:+.1%} from the target {target:,} "
                         f"(tolerance {TOLERANCE:.0%}); its width steps are too coarse for this budget")
    return {"dims": dims, "channel_options": matched.channel_options}


def tidy(ratio: float, dims: tuple[int, ...]) -> float:
    """The shortest decimal that gives every stage the same hidden size as `ratio` does."""
    hidden = [int(ratio * d) for d in dims]
    return next((r for r in (round(ratio, n) for n in range(1, 7)) if [int(r * d) for d in dims] == hidden),
                ratio)


def nearest_width(value, k: int, target: int, k_max: int) -> int:
    """The width index whose value (non-decreasing in the index) is nearest `target` on a log scale:
    gallop from k to bracket the target, then bisect."""
    if value(k) >= target:
        hi, jump = k, 1
        while hi - jump >= 1 and value(hi - jump) >= target:
            hi, jump = hi - jump, jump * 2
        lo = max(hi - jump, 0)  # index 0 stands for "below the target"
    else:
        lo, jump = k, 1
        while value(lo + jump) < target:
            lo, jump = lo + jump, jump * 2
            if lo + jump > k_max:
                raise UsageError(f"cannot reach a budget of {target:,}: the widest model tried costs {value(lo):,}")
        hi = lo + jump
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if value(mid) >= target else (mid, hi)
    return min([hi] + [lo] * (lo >= 1), key=lambda i: abs(math.log(value(i) / target)))


def solve_ratio(value, ratio0: float, target: int) -> float:
    """The ratio where value (affine in the hidden size) meets target, from counts at ratio0 and ratio0 / 2."""
    v0, v1 = value(ratio0), value(ratio0 / 2)
    if v0 == v1:
        raise UsageError("budget matching: the channel mixer's ratio does not change the cost of this model")
    return ratio0 + (target - v0) * (ratio0 / 2) / (v0 - v1)


def reference_target(preset: str, spatial: str, channel: str, metric: str, base_overrides: dict) -> int:
    """The reference model's params or MACs: the budget the others are matched to."""
    return model_cost(metric, blocks.preset_config(preset, spatial=spatial, channel=channel, **base_overrides))


def check_match_to(metric: str | None, match_to: str | None) -> None:
    """--match-to names a spatial mixer and comes with --match."""
    if match_to and not metric:
        raise UsageError("--match-to needs --match params|macs")
    if match_to and match_to not in blocks.SPATIAL:
        raise UsageError(f"unknown --match-to {shown(match_to)}; valid: {', '.join(blocks.SPATIAL)}")


def run_overrides(preset: str, spatial: str, channel: str, metric: str | None, match_to: str | None,
                  base_overrides: dict) -> tuple[dict, dict | None]:
    """For one run (training.plan.plan_model): the overrides that match it to `match_to`'s budget, and the record
    of it ({metric, to, target}); ({}, None) without a metric. A run has no other mixer to default to, so --match
    needs --match-to."""
    check_match_to(metric, match_to)
    if not metric:
        return {}, None
    if not match_to:
        raise UsageError(f"--match {metric} needs --match-to SPATIAL, the mixer whose budget to match "
                         f"(one of {', '.join(blocks.SPATIAL)})")
    target = reference_target(preset, match_to, channel, metric, base_overrides)
    overrides = {} if match_to == spatial else match_overrides(preset, spatial, channel, metric, target,
                                                               base_overrides)
    return overrides, {"metric": metric, "to": f"{match_to}/{channel}", "target": target}
