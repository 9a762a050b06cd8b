"""ablate's models against timm's implementation of the same architecture: training and inference images/s,
side by side in one process (CPU, fp32 and bf16 autocast), as ratios ablate / timm.

    python benchmarks/vs_timm.py --out benchmarks/results/vs_timm.md

Each pair is a small Fashion-MNIST-shaped model (1 x 28 x 28, 10 classes) built twice: from a blocks preset with
overrides, and with timm's class and the same options. The script checks they are the same network (timm's
weights loaded into ours give the same logits) before timing. Timings alternate between the two models over
several rounds, so drift in machine load hits both; each round warms its step up until stable (timing.warm_times),
and each number is the median over all timed steps, with its interquartile range.
"""
import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
from timm.models.metaformer import Attention, GroupNorm1, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import blocks
from ablate.engines.measure import infer_step, train_step
from ablate.foundations.io import atomic_write
from ablate.foundations.runtime import usable_cores
from ablate.foundations.timing import Timing, matmul_flops, warm_times
from blocks.timm_convert import convert_state, family_of

SHAPE = dict(img_size=28, in_chans=1, num_classes=10)
DEPTH, WIDTH = blocks.PRESETS["tiny"].depths[0], blocks.PRESETS["tiny"].dims[0]
ISOTROPIC = dict(depths=(DEPTH,), dims=(WIDTH,), patch_size=4)  # the `tiny` preset's size
HIERARCHICAL = dict(depths=(1, 1, 3, 1), dims=(32, 64, 96, 128))  # the `tiny-hier` preset's size

# name: (blocks preset, its overrides, timm model factory)
PAIRS = {
    "vit": ("vit-s16", {**ISOTROPIC, "spatial_options": {"attention": {"num_heads": 2}}},
            lambda: VisionTransformer(embed_dim=WIDTH, depth=DEPTH, num_heads=2, patch_size=4, **SHAPE)),
    "mixer": ("mixer-s16", ISOTROPIC,
              lambda: MlpMixer(embed_dim=WIDTH, num_blocks=DEPTH, patch_size=4, **SHAPE)),
    "poolformer": ("poolformer-s12", HIERARCHICAL,
                   lambda: MetaFormer(**HIERARCHICAL, in_chans=1, num_classes=10, downsample_norm=None,
                                      mlp_act=nn.GELU, mlp_bias=True, norm_layers=GroupNorm1,
                                      layer_scale_init_values=1e-5, res_scale_init_values=None, use_mlp_head=False)),
    "convformer": ("convformer-s18", HIERARCHICAL,
                   lambda: MetaFormer(**HIERARCHICAL, in_chans=1, num_classes=10, token_mixers=SepConv,
                                      norm_layers=LayerNorm2dNoBias)),
    "caformer": ("caformer-s18", HIERARCHICAL,
                 lambda: MetaFormer(**HIERARCHICAL, in_chans=1, num_classes=10,
                                    token_mixers=[SepConv, SepConv, Attention, Attention],
                                    norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2)),
}


def build_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(ours, timm's) with the same weights; raises if they are not the same function."""
    preset, overrides, make_timm = PAIRS[name]
    torch.manual_seed(0)
    theirs = make_timm()
    ours = blocks.create(preset, **SHAPE, **overrides)
    ours.load_state_dict(convert_state(family_of(preset), theirs.state_dict(), ours.state_dict()))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        diff = (ours.eval()(x) - theirs.eval()(x)).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"{name}: ours and timm's differ by {diff:.2e} on the same input; not the same network")
    return ours, theirs


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CPU = torch.device("cpu")


def compare(name: str, batch_size: int, precision: str, rounds: int, warmup: int, repeats: int, clock) -> dict:
    """Images/s of ours and timm's, training and inference, alternating the two models each round."""
    models = dict(zip(("ablate", "timm"), build_pair(name)))
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    steps = {(who, mode): (train_step(m, x, y, precision) if mode == "train" else infer_step(m, x, precision))
             for who, m in models.items() for mode in ("train", "infer")}
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for (who, mode), step in steps.items():
            if mode == "train":
                models[who].train()
            else:
                models[who].eval()
            times[who, mode] += warm_times(step, CPU, repeats, min_warmup=warmup, clock=clock).times
    row = {"model": name, "batch": batch_size, "precision": precision,
           "params": sum(p.numel() for p in models["ablate"].parameters())}
    for (who, mode), ts in times.items():
        row[f"{who}_{mode}"] = Timing(tuple(ts), warmup, True).rate(batch_size)  # (median, low, high)
    for mode in ("train", "infer"):
        row[f"{mode}_ratio"] = row[f"ablate_{mode}"][0] / row[f"timm_{mode}"][0]
    return row


def markdown(rows: list[dict], command: str, clock: str, load: tuple[float, float], peaks: dict) -> str:
    lines = [
        "# ablate vs timm: throughput of the same architecture",
        "",
        f"Command: `{command}`",
        "",
        f"CPU, {torch.get_num_threads()} threads, {clock} clock, torch {torch.__version__}, "
        f"timm {timm.__version__}, {platform.processor() or platform.machine()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; warm matmul peak on these threads: "
        + ", ".join(f"{peak / 1e9:.0f} GFLOP/s {precision}" for precision, peak in peaks.items()) + ". "
        "Images/s are medians over all timed steps (each round warmed up until stable), with their interquartile "
        "range; ratio = ablate / timm of the medians (> 1: ablate is faster). Train = forward + backward + AdamW step. "
        f"Load average (1 min) of the machine: {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        f"(other work on the machine shows up as noise in the wall clock).",
        "",
        "| model | precision | params | batch | train ablate | train timm | **train ratio** | infer ablate "
        "| infer timm | **infer ratio** |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['params']:,} | {r['batch']} | "
                     f"{spread(r['ablate_train'])} | {spread(r['timm_train'])} | **{r['train_ratio']:.2f}** | {spread(r['ablate_infer'])} | "
                     f"{spread(r['timm_infer'])} | **{r['infer_ratio']:.2f}** |")
    return "\n".join(lines) + "\n"


def spread(rate: tuple[float, float, float]) -> str:
    median, low, high = rate
    return f"{median:.0f} ({low:.0f}-{high:.0f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/vs_timm.md", help="markdown file for the results table")
    p.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated: {', '.join(PAIRS)}")
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    p.add_argument("--rounds", type=int, default=3, help="alternations between the two models")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps at the least before each round; then more until the step time is stable")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall: elapsed time (a quiet machine); cpu: this process's CPU time on 1 thread, which other "
                        "load on a shared machine disturbs much less")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        p.error(f"unknown model {', '.join(unknown)}; valid: {', '.join(PAIRS)}")
    torch.set_num_threads(args.threads or (1 if args.clock == "cpu" else usable_cores()))
    if args.clock == "cpu" and torch.get_num_threads() > 1:
        p.error("--clock cpu sums the CPU time of all threads (spin-waits included); use it with --threads 1")
    precisions = [q for q in args.precisions.split(",") if q]
    if set(precisions) - {"fp32", "bf16"}:
        p.error(f"--precisions {args.precisions}: valid: fp32, bf16")
    rows, load_start = [], os.getloadavg()[0]
    peaks = {precision: matmul_flops(CPU, precision) for precision in precisions}
    for name in names:
        for precision in precisions:
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                rows.append(compare(name, batch_size, precision, args.rounds, args.warmup, args.repeats,
                                    CLOCKS[args.clock]))
                r = rows[-1]
                print(f"{name:<11} {precision} batch {batch_size:>4}: train {spread(r['ablate_train'])} vs "
                      f"{spread(r['timm_train'])} img/s ({r['train_ratio']:.2f}x)   infer {spread(r['ablate_infer'])} "
                      f"vs {spread(r['timm_infer'])} img/s ({r['infer_ratio']:.2f}x)", file=sys.stderr, flush=True)
    command = "python benchmarks/vs_timm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, command.strip(), args.clock, (load_start, os.getloadavg()[0]), peaks)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
