"""The default job (`python -m ablate --spatial S --channel mlp`, nothing else) per spatial mixer, each in a fresh
process, alone, from an empty run folder: wall time, accuracies and throughput from its record, beside the machine's
warm fp32 matmul peak on the same threads and the wall-time target it gives (300 s x 140 GFLOP/s / peak), and the
per-op table of one mixer's training step (torch.profiler, warm), which says where its time goes.

    python benchmarks/default_job.py --out benchmarks/results/default_job.md

Absolute times compare only on one machine (machines of this kind differ ~2x at the same matmul peak): compare the
ratios, and each time with its peak.
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import blocks
from ablate.engines.measure import batch, train_step
from ablate.foundations.io import atomic_write
from ablate.foundations.runtime import usable_cores
from ablate.foundations.timing import matmul_flops, warm_times

CPU = torch.device("cpu")
TARGET_S, TARGET_PEAK = 300, 140e9  # issue 14: 300 s on a machine whose fp32 matmul peak is 140 GFLOP/s


def default_job(spatial: str) -> dict:
    """One default job in a fresh process; its record and the wall time of the whole command."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ablate", "--spatial", spatial, "--channel", "mlp", "--out", out,
                               "--json"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"the default job with {spatial} failed: {done.stderr.strip().splitlines()[-1]}")
        return {**json.loads(done.stdout), "wall_s": wall}


def op_table(spatial: str, rows: int) -> str:
    """torch.profiler's per-op self CPU time of 10 warm training steps of `tiny` with `spatial`, batch 256."""
    torch.manual_seed(0)
    model = blocks.create("tiny", spatial=spatial)
    step = train_step(model, *batch(model.cfg, 256, CPU), "fp32")
    warm_times(step, CPU, repeats=1)
    with torch.profiler.profile() as prof:
        for _ in range(10):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown(records: list[dict], peak: float, command: str, ops: dict[str, str]) -> str:
    target = TARGET_S * TARGET_PEAK / peak
    lines = ["# The default job, per spatial mixer", "", f"Command: `{command}`", "",
             f"{platform.machine()}, {usable_cores()} cores, torch {torch.__version__}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, each job alone. Warm fp32 matmul peak on "
             f"{torch.get_num_threads()} threads: {peak / 1e9:.0f} GFLOP/s, so the target wall time is 300 s x 140 / "
             f"{peak / 1e9:.0f} = {target:.0f} s. Wall time is the whole command (start-up, data, training, "
             f"evaluation); train img/s is the record's (all training steps, the first included).", "",
             "| spatial | precision | test acc | val acc | wall time | train img/s | record's matmul peak | target |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['spatial']} | {r['precision']} | {r['test_acc']:.4f} | {r['val_acc']:.4f} | "
                     f"{r['wall_s']:.0f} s | {r['train_img_s']:,.0f} | {r['matmul_flops'] / 1e9:.0f} GFLOP/s | "
                     f"{'met' if r['wall_s'] <= target else 'missed'} |")
    for spatial, table in ops.items():
        lines += ["", f"Per op, 10 warm training steps of `tiny` with `{spatial}`, batch 256, fp32:", "", "```",
                  table.strip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spatial", default="attention,mlp,conv")
    parser.add_argument("--ops", default="attention", help="mixers whose per-op table to add (comma-separated)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(usable_cores())  # as `run` does
    peak = matmul_flops(CPU, "fp32")
    records = [default_job(s) for s in args.spatial.split(",") if s]
    ops = {s: op_table(s, 20) for s in args.ops.split(",") if s}
    text = markdown(records, peak, "python benchmarks/default_job.py " + " ".join(sys.argv[1:]), ops)
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
