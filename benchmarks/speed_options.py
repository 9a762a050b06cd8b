"""What makes training faster on this machine, measured, per spatial mixer of the default `tiny` model: bf16
autocast against fp32, torch.compile (whole model, and without the depthwise conv), 1 vs 2 threads (2 study workers x
1 thread against 1 x 2), batch 512 against 256, and what one evaluation of the validation and test splits costs
against a training epoch. Every time comes with the machine's measured matmul peak; compare the ratios, which hold across machines.

    python benchmarks/speed_options.py --out benchmarks/results/speed_options.md
"""
import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import blocks
from ablate.engines.measure import infer_step, train_step
from ablate.foundations.io import atomic_write
from ablate.foundations.timing import matmul_flops, warm_times

SPATIAL = ("attention", "mlp", "conv")
CPU = torch.device("cpu")
TRAIN_IMAGES, EVAL_IMAGES = 55_000, 15_000  # Fashion-MNIST: the training split, and validation + test


def train_img_s(model: torch.nn.Module, batch: int, repeats: int, precision: str = "fp32") -> float:
    """The median of `repeats` warm training steps (timing.warm_times: warmed up until stable)."""
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return warm_times(train_step(model, x, y, precision), CPU, repeats).rate(batch)[0]


def infer_img_s(model: torch.nn.Module, batch: int, repeats: int, precision: str = "fp32") -> float:
    x = torch.randn(batch, 1, 28, 28)
    return warm_times(infer_step(model, x, precision), CPU, repeats).rate(batch)[0]


def compiled(spatial: str, skip_conv: bool) -> tuple[torch.nn.Module, float]:
    """The model with torch.compile applied (to every block's parts but the depthwise conv, with skip_conv) and
    the seconds the first training step took (compilation included)."""
    model = blocks.create("tiny", spatial=spatial)
    if skip_conv:
        for block in model.stages[0]:
            for name in ("norm1", "norm2", "channel") + (() if spatial == "conv" else ("spatial",)):
                setattr(block, name, torch.compile(getattr(block, name)))
    else:
        model = torch.compile(model)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    step = train_step(model, x, y, "fp32")
    start = time.perf_counter()
    step()
    return model, time.perf_counter() - start


def measure(spatial: str, repeats: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    eager = blocks.create("tiny", spatial=spatial)
    row = {"spatial": spatial, "eager_256": train_img_s(eager, 256, repeats), "eager_512": train_img_s(eager, 512, repeats),
           "infer": infer_img_s(eager, 256, repeats), "infer_1000": infer_img_s(eager, 1000, repeats),
           "bf16": train_img_s(eager, 256, repeats, "bf16"), "infer_bf16": infer_img_s(eager, 256, repeats, "bf16")}
    for key, skip in (("compiled", False), ("compiled_no_dw", True)):
        model, seconds = compiled(spatial, skip)
        row[key], row[f"{key}_first_step_s"] = train_img_s(model, 256, repeats), seconds
    torch.set_num_threads(1)
    row["one_thread"] = train_img_s(eager, 256, repeats)
    torch.set_num_threads(2)
    return row


def markdown(rows: list[dict], peak: dict, command: str) -> str:
    lines = [
        "# Speed options for training `tiny` on 2 CPU cores", "", f"Command: `{command}`", "",
        f"{platform.machine()}, torch {torch.__version__}, measured matmul peak {peak['fp32'] / 1e9:.1f} GFLOP/s "
        f"in fp32 and {peak['bf16'] / 1e9:.1f} GFLOP/s in bf16 (2 threads), "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Training images/s: median of timed steps, warmed up "
        "until stable (forward, loss, backward, AdamW), random 1 x 28 x 28 input, 2 threads unless said. Ratios are "
        "against eager fp32 at batch 256 and 2 threads; every column but bf16's is fp32.", "",
        "| spatial | eager img/s | bf16 autocast (train, inference) | compiled | compiled, conv left eager "
        "| first compiled step (s) | batch 512 | 2 workers x 1 thread | inference, batch 256 vs 1000 "
        "| eval (val + test) per epoch, batch 256 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = r["eager_256"]
        epoch_s, eval_s = TRAIN_IMAGES / base, EVAL_IMAGES / r["infer"]
        lines.append(
            f"| {r['spatial']} | {base:,.0f} | {r['bf16'] / base:.2f}x, {r['infer_bf16'] / r['infer']:.2f}x | "
            f"{r['compiled'] / base:.2f}x | {r['compiled_no_dw'] / base:.2f}x | "
            f"{r['compiled_first_step_s']:.0f} / {r['compiled_no_dw_first_step_s']:.0f} | "
            f"{r['eager_512'] / base:.2f}x | {2 * r['one_thread'] / base:.2f}x | "
            f"{r['infer']:,.0f} vs {r['infer_1000']:,.0f} img/s | "
            f"{eval_s:.1f} s = {eval_s / epoch_s:.1%} of a {epoch_s:.0f} s epoch |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    peak = {precision: matmul_flops(CPU, precision) for precision in ("fp32", "bf16")}  # warm, 2 threads
    rows = [measure(s, args.repeats) for s in SPATIAL]
    text = markdown(rows, peak, "python benchmarks/speed_options.py" + (f" --out {args.out}" if args.out else ""))
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
