"""`python -m ablate profile`: params, MACs, training and inference throughput, memory and MFU, one row per
preset x image size x spatial mixer x channel mixer."""
import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

import blocks
from blocks.checks import shown

from ..engines.cost import count_macs, count_params, tokens
from ..engines.matching import channel_ratio, check_match_to, match_overrides, reference_target
from ..engines.measure import cpu_peak_memory_mb, forkserver, throughput
from ..engines.training.plan import check_memory
from ..foundations.config import MATCH_METRICS
from ..foundations.errors import UsageError
from ..foundations.io import atomic_write
from ..foundations.runtime import DEVICES, PRECISIONS, pick_device, pick_precision, usable_cores
from ..foundations.timing import MAX_WARMUP_S, matmul_flops, mfu
from .args import add_model_args, positive_int

HELP = "params, MACs, throughput and memory per mixer"


def names(text: str, registry: dict, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in registry]
    if unknown or not items:
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"valid: {', '.join(registry)}")
    return items


def img_sizes(text: str | None) -> list[int | None]:
    if text is None:
        return [None]  # each preset's own
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--img-size expects comma-separated whole numbers, got {shown(text)}") from None
    if not sizes or min(sizes) <= 0:
        raise UsageError(f"--img-size expects positive sizes, got {shown(text)}")
    return sizes


def planned(args: argparse.Namespace, presets: list[str], spatials: list[str],
            channels: list[str]) -> list[tuple[str, str, str, blocks.MetaFormerConfig]]:
    """Each row's preset, spatial and channel mixer, and model (resized to the reference's budget with --match), built on the meta device: a bad option or
    a model too large for the device's memory stops the command before anything is measured."""
    configs, targets = [], {}
    reference = args.match_to or spatials[0]
    for preset, size, spatial, channel in itertools.product(presets, img_sizes(args.img_size), spatials, channels):
        base = dict(args.model_opt) | ({"img_size": size} if size else {})
        overrides = {"spatial": spatial, "channel": channel, **base}
        if args.match and (spatial, channel) != (reference, channels[0]):
            if (preset, size) not in targets:
                targets[preset, size] = reference_target(preset, reference, channels[0], args.match, base)
            overrides |= match_overrides(preset, spatial, channel, args.match, targets[preset, size], base)
        cfg = blocks.preset_config(preset, **overrides)
        with torch.device("meta"):
            check_memory(blocks.MetaFormer(cfg), args.device, ema=False)
        configs.append((preset, spatial, channel, cfg))
    return configs


def profile(args: argparse.Namespace, log) -> dict:
    """The command's JSON document: device, precision, batch size, the peak matmul FLOP/s behind `mfu` (in that
    precision), and the rows."""
    spatials = names(args.spatial, blocks.SPATIAL, "spatial mixer")
    channels = names(args.channel, blocks.CHANNEL, "channel mixer")
    presets = names(args.preset, blocks.PRESETS, "preset")
    check_match_to(args.match, args.match_to)
    device = pick_device(args.device)
    configs = planned(args, presets, spatials, channels)  # every row checked before anything is timed
    if device.type == "cpu":
        torch.set_num_threads(args.threads or usable_cores())
        forkserver()  # started and done importing before anything is timed
    precision = pick_precision(args.precision, device)
    peak = matmul_flops(device, precision)
    log(f"profile: {device}, {precision}, {torch.get_num_threads()} threads, warm matmul peak {peak / 1e9:.1f} "
        f"GFLOP/s, batch {args.batch_size}")
    rows, reference = [], args.match_to or spatials[0]
    for preset, spatial, channel, model_cfg in tqdm(configs, desc="profile", file=sys.stderr,
                                                    disable=args.json or not sys.stderr.isatty()):
        torch.manual_seed(0)
        model = blocks.MetaFormer(model_cfg).to(device)
        cfg = model.cfg
        trainable, frozen = count_params(model)
        macs = count_macs(model, (cfg.in_chans, cfg.img_size, cfg.img_size))
        speed = throughput(model, args.batch_size, device, precision, args.warmup, args.repeats)
        del model
        if device.type == "cpu":
            speed["peak_mem_mb"] = cpu_peak_memory_mb(cfg, args.batch_size, max(args.warmup, 2),
                                                      torch.get_num_threads(), precision)
        row = {"spatial": spatial, "channel": channel, "preset": preset, "img_size": cfg.img_size,
               "tokens": tokens(cfg), "params": trainable, "params_frozen": frozen, "macs": macs,
               **rates("train_img_s", speed["train_img_s"]), **rates("infer_img_s", speed["infer_img_s"]),
               "warm": speed["stable"], "peak_mem_mb": round(speed["peak_mem_mb"], 1),
               "mfu": round(mfu(macs, speed["train_img_s"][0], peak), 5)}
        if args.match:
            row |= {"matched_to": f"{reference}/{channels[0]}", "dims": ",".join(map(str, cfg.dims)),
                    "ratio": channel_ratio(cfg, channel)}
        log(f"  {preset} {cfg.img_size}px {spatial}/{channel}: {trainable:,} params, {macs / 1e6:.2f} M MACs, "
            f"train {spread(row, 'train_img_s')} img/s, infer {spread(row, 'infer_img_s')} img/s"
            + ("" if row["warm"] else f" (not stable after {MAX_WARMUP_S:.0f} s of warm-up)"))
        rows.append(row)
    return {"device": str(device), "precision": precision, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "matmul_flops": peak, "rows": rows}


def significant(value: float, digits: int = 4) -> float:
    """Rounded to `digits` significant digits: a 224 px model trains at 0.5 img/s on a CPU, not at 0."""
    return float(f"{value:.{digits}g}")


def rates(key: str, median_low_high: tuple[float, float, float]) -> dict:
    """A throughput's median and its interquartile range as row columns: KEY, KEY_lo, KEY_hi."""
    median, low, high = (significant(v) for v in median_low_high)
    return {key: median, f"{key}_lo": low, f"{key}_hi": high}


def rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 10 else f"{images_per_s:.2g}"


def spread(row: dict, key: str) -> str:
    """"1,583 (1,540-1,610)": the median and the interquartile range of the timed steps."""
    return f"{rate(row[key])} ({rate(row[key + '_lo'])}-{rate(row[key + '_hi'])})"


def format_table(rows: list[dict]) -> str:
    table = pd.DataFrame(rows)
    for key in ("train_img_s", "infer_img_s"):  # median (interquartile range)
        table[key] = [spread(row, key) for row in rows]
        table = table.drop(columns=[f"{key}_lo", f"{key}_hi"])
    formats = {"params": lambda v: f"{v / 1e6:.3f} M", "params_frozen": lambda v: f"{v / 1e6:.3f} M",
               "macs": lambda v: f"{v / 1e6:.2f} M", "peak_mem_mb": "{:.0f}".format, "mfu": "{:.1%}".format}
    for key, fmt in formats.items():
        table[key] = table[key].map(fmt)
    return table.rename(columns={"macs": "MACs", "peak_mem_mb": "peak_MiB"}).to_string(index=False)


def write_csv(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda f: f.write(pd.DataFrame(rows).to_csv(index=False).encode()))


def plot_cost_vs_tokens(path: Path, rows: list[dict]) -> None:
    """MACs, params and training throughput against tokens, one line per mixer, log-log axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    table = pd.DataFrame(rows)
    table["model"] = table["spatial"] + "/" + table["channel"]
    many_presets = table["preset"].nunique() > 1
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, [("macs", "MACs per image"), ("params", "parameters (trainable)"),
                                       ("train_img_s", "training images / s")]):
        sns.lineplot(data=table, x="tokens", y=key, hue="model", style="preset" if many_presets else None,
                     marker="o", ax=ax, legend=ax is axes[-1])
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=label)
        ax.set_xticks(sorted(table["tokens"].unique()), [str(t) for t in sorted(table["tokens"].unique())])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the measured token counts
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def check_writable(flag: str, path: Path) -> None:
    """A file the command will write: its folder exists and takes files, and the path is not a folder."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: cannot write there (permission denied)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p, many=True)
    p.set_defaults(spatial=",".join(blocks.SPATIAL))  # profile compares every spatial mixer unless told otherwise
    p.add_argument("--img-size", default=None, metavar="N[,N..]",
                   help="image sizes in pixels (comma-separated); default: each preset's own")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--match", choices=MATCH_METRICS, default=None,
                   help="resize each model (width, then channel-MLP ratio) to the reference's params or MACs")
    p.add_argument("--match-to", default=None, metavar="SPATIAL",
                   help="the reference spatial mixer for --match (default: the first in --spatial)")
    p.add_argument("--warmup", type=positive_int, default=3,
                   help="untimed steps at the least before timing; then more until the step time is stable")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="timed steps; the median and the interquartile range are reported")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32, or bf16 autocast; auto = bf16 where the device has it in hardware (as `run`)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: the cores this process may use, as `run` does)")
    p.add_argument("--csv", default="profile.csv", help="where to write the rows as CSV (default: profile.csv)")
    p.add_argument("--plot", nargs="?", const="cost_vs_tokens.png", default=None, metavar="FILE",
                   help="write the cost-vs-tokens plot (default file: cost_vs_tokens.png)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON document on stdout")


def main(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    for flag, path in (("--csv", args.csv), ("--plot", args.plot)):  # before minutes of measuring, not after
        if path:
            check_writable(flag, Path(path))
    doc = profile(args, log)
    write_csv(Path(args.csv), doc["rows"])
    log(f"wrote {args.csv}")
    if args.plot:
        plot_cost_vs_tokens(Path(args.plot), doc["rows"])
        log(f"wrote {args.plot}")
    print(json.dumps(doc) if args.json else format_table(doc["rows"]))
    return 0
