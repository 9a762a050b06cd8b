"""Cost of a model, counted honestly: parameters, MACs (fvcore, with the handles it lacks), training and
inference throughput, peak training memory; and `python -m ablate profile`, one row per model."""
import argparse
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.forkserver
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import blocks

from .errors import UsageError
from .io import write_json

# -- params and MACs ------------------------------------------------------------------------------------------------

def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def sdpa_macs(inputs, outputs) -> int:
    """QK^T and AV of fused attention: B * heads * N_q * N_k * (d_qk + d_v) (fvcore counts it as 0)."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n_q, d = q
    n_k = k[-2]
    v_dim = get_shape(inputs[2])[-1]
    b = math.prod(batch)
    return b * n_q * n_k * d + b * n_q * n_k * v_dim


EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_macs}

# Ops fvcore has no handle for, checked on every mixer and published preset, left at 0 on purpose: they are
# elementwise or reductions (adds, activations, pooling windows), no multiply-accumulate work, and papers'
# "FLOPs" leave them out too. Anything else fvcore skips is reported (see count_macs).
UNCOUNTED = frozenset({
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::neg",
    "aten::gelu", "aten::silu", "aten::relu", "aten::relu_", "aten::square", "aten::pow", "aten::softmax",
    "aten::mean", "aten::avg_pool2d", "aten::dropout", "aten::expand", "aten::fill_", "aten::ones_like",
    "aten::zeros_like", "aten::abs", "aten::sigmoid", "aten::tanh",
})

# torch's FlopCounterMode has no formula for the CPU flash-attention kernel and counts it as 0.
FCM_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def mac_analysis(model: nn.Module, image: torch.Tensor) -> FlopCountAnalysis:
    """fvcore's analysis of one forward pass of `image` (1, C, H, W), with fused attention counted."""
    analysis = FlopCountAnalysis(model.eval(), image)
    for op, handle in EXTRA_HANDLES.items():
        analysis.set_op_handle(op, handle)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def count_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of one image of `shape` (C, H, W), fvcore's convention."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    device = next(model.parameters()).device
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore traces with torch.jit, which warns it is deprecated
        analysis = mac_analysis(model, torch.zeros(1, *shape, device=device))
        total = analysis.total()
    model.train(was_training)
    dropped = sorted(set(analysis.unsupported_ops()) - UNCOUNTED)
    if dropped:
        logging.getLogger(__name__).warning("MACs: fvcore has no handle for %s; those ops count as 0",
                                            ", ".join(dropped))
    return int(total)


def flop_counter_macs(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    """torch FlopCounterMode's count of one forward pass, in MACs per op (matmul and conv work only).

    Runs on the model's device; on "meta" it costs no compute, which budget matching relies on.
    """
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False, custom_mapping=FCM_MAPPING)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape, device=device))
    return {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}


COST_CACHE = Path.home() / ".cache" / "ablate" / "preset-costs.json"


@functools.cache
def code_fingerprint() -> str:
    """Hash of the model code, this file and the counting libraries: any change recounts every cached preset."""
    import fvcore
    digest = hashlib.sha256(f"{torch.__version__} {fvcore.__version__}".encode())
    for path in sorted(Path(blocks.__file__).parent.rglob("*.py")) + [Path(__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def preset_costs(cfg: blocks.MetaFormerConfig) -> dict:
    """Params and MACs of a config, counted once and cached in COST_CACHE: tracing the 224 px published
    presets takes minutes on a CPU. The key is the full config plus code_fingerprint(), never a name."""
    doc = json.dumps([code_fingerprint(), blocks.backbone.config_dict(cfg)], sort_keys=True, default=str)
    key = hashlib.sha256(doc.encode()).hexdigest()
    cache = json.loads(COST_CACHE.read_text()) if COST_CACHE.exists() else {}
    if key not in cache:
        with torch.device("meta"):
            model = blocks.MetaFormer(cfg)
        model = model.to_empty(device="cpu")  # counting needs shapes, not values: skip the weight init
        cache[key] = {"params": sum(count_params(model)),
                      "macs": count_macs(model, (cfg.in_chans, cfg.img_size, cfg.img_size))}
        COST_CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_json(COST_CACHE, cache)
    return cache[key]


def preset_table() -> list[dict]:
    """One row per preset as built without overrides: shape, image size, params and MACs."""
    return [{"preset": name, "shape": "isotropic" if len(cfg.depths) == 1 else "hierarchical",
             "img_size": cfg.img_size,
             "spatial": cfg.spatial if isinstance(cfg.spatial, str) else ",".join(cfg.spatial),
             **preset_costs(cfg)} for name, cfg in blocks.PRESETS.items()]


def tokens(cfg: blocks.MetaFormerConfig) -> int:
    """Tokens the first stage mixes: the grid after the stem, plus a class token."""
    side = cfg.img_size // cfg.patch_size
    return side * side + (cfg.head == "token")


# -- throughput, memory, MFU ----------------------------------------------------------------------------------------

def autocast(device: torch.device):
    """The precision training uses (ablate.train): bf16 autocast on CUDA, fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(step, warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` calls of step() after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch(cfg: blocks.MetaFormerConfig, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of the shape `cfg` takes."""
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    return x, torch.randint(0, max(cfg.num_classes, 1), (batch_size,), device=device)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step as ablate.train runs it: forward, cross-entropy, backward, AdamW step."""
    from timm.optim import create_optimizer_v2
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)
    model.train()

    def step():
        with autocast(x.device):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def infer_step(model: nn.Module, x: torch.Tensor):
    model.eval()

    @torch.inference_mode()
    def step():
        with autocast(x.device):
            model(x)
    return step


def throughput(model: nn.Module, batch_size: int, device: torch.device, warmup: int, repeats: int) -> dict:
    """Training and inference images/s (median step time), and peak CUDA memory of training on GPU."""
    x, y = batch(model.cfg, batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = median_seconds(train_step(model, x, y), warmup, repeats, device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    infer_s = median_seconds(infer_step(model, x), warmup, repeats, device)
    return {"train_img_s": batch_size / train_s, "infer_img_s": batch_size / infer_s, "peak_mem_mb": peak}


@functools.cache
def matmul_flops(device_name: str) -> float:
    """Peak matmul FLOP/s of this device in the precision training uses (fp32 on CPU), measured in this
    process: the best of repeated square matmuls."""
    device = torch.device(device_name)
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with autocast(device):
        best = min(median_seconds(lambda: a @ b, warmup=0, repeats=1, device=device) for _ in range(6))
    return 2 * n ** 3 / best


def memory_child(conn, preset: str, overrides: dict, batch_size: int, steps: int, threads: int) -> None:
    """In a fresh process: sends (peak RSS in KiB after imports, peak RSS after `steps` training steps)."""
    try:
        torch.set_num_threads(threads)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model = blocks.create(preset, **overrides)
        step = train_step(model, *batch(model.cfg, batch_size, torch.device("cpu")))
        for _ in range(steps):
            step()
        conn.send((base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except Exception as e:  # the parent built and ran this model already, so this is unexpected: pass it on
        conn.send(repr(e))


PRELOAD = ["torch", "blocks", "timm.optim", "ablate.profile"]


@functools.cache
def forkserver() -> multiprocessing.context.BaseContext:
    """Children forked from a server that has imported torch and blocks and done no work: each starts fast and
    with a fresh RSS high-water mark, unlike a fork of this process. (As with any multiprocessing start method
    but fork, a script calling this needs the `if __name__ == "__main__":` guard.)"""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def cpu_peak_memory_mb(preset: str, overrides: dict, batch_size: int, steps: int, threads: int) -> float:
    """Peak RSS growth of a child process that builds the model and runs `steps` training steps on CPU:
    parameters, gradients, AdamW state, activations, and what the allocator and math libraries keep around."""
    ctx = forkserver()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=memory_child, args=(send, preset, overrides, batch_size, steps, threads))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # died without a word: killed (out of memory?) or crashed
        result = None
    child.join()
    result = f"it exited with code {child.exitcode}" if result is None else result
    if isinstance(result, str):
        raise RuntimeError(f"measuring the training memory of {preset} {overrides} in a child process failed: "
                           f"{result}")
    base, peak = result
    return (peak - base) / 1024  # ru_maxrss is in KiB on Linux


# -- the command ----------------------------------------------------------------------------------------------------

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
        raise UsageError(f"--img-size expects comma-separated whole numbers, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise UsageError(f"--img-size expects positive sizes, got {text!r}")
    return sizes


def profile(args: argparse.Namespace, log) -> dict:
    """The command's JSON document: device, batch size, the peak matmul FLOP/s behind `mfu`, and the rows."""
    from tqdm import tqdm

    from .matching import channel_ratio, match_overrides, reference_target
    from .train import pick_device, usable_cores
    spatials = names(args.spatial, blocks.SPATIAL, "spatial mixer")
    channels = names(args.channel, blocks.CHANNEL, "channel mixer")
    presets = names(args.preset, blocks.PRESETS, "preset")
    if args.match_to and args.match_to not in blocks.SPATIAL:
        raise UsageError(f"unknown --match-to {args.match_to!r}; valid: {', '.join(blocks.SPATIAL)}")
    if args.match_to and not args.match:
        raise UsageError("--match-to needs --match params|macs")
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or usable_cores())
        forkserver()
        multiprocessing.forkserver.ensure_running()  # it imports torch while this process counts MACs
    peak_flops = matmul_flops(str(device))
    log(f"profile: {device}, peak matmul {peak_flops / 1e9:.1f} GFLOP/s, batch {args.batch_size}")
    jobs = [(p, s, sp, ch) for p in presets for s in img_sizes(args.img_size) for sp in spatials for ch in channels]
    rows, targets = [], {}
    for preset, size, spatial, channel in tqdm(jobs, desc="profile", file=sys.stderr,
                                               disable=args.json or not sys.stderr.isatty()):
        base = dict(args.model_opt) | ({"img_size": size} if size else {})
        overrides = {"spatial": spatial, "channel": channel, **base}
        reference = args.match_to or spatials[0]
        if args.match and (spatial, channel) != (reference, channels[0]):
            if (preset, size) not in targets:
                targets[preset, size] = reference_target(preset, reference, channels[0], args.match, base)
            overrides |= match_overrides(preset, spatial, channel, args.match, targets[preset, size], base)
        torch.manual_seed(0)
        model = blocks.create(preset, **overrides).to(device)
        cfg = model.cfg
        trainable, frozen = count_params(model)
        macs = count_macs(model, (cfg.in_chans, cfg.img_size, cfg.img_size))
        speed = throughput(model, args.batch_size, device, args.warmup, args.repeats)
        del model
        if device.type == "cpu":
            speed["peak_mem_mb"] = cpu_peak_memory_mb(preset, overrides, args.batch_size, max(args.warmup, 2),
                                                      torch.get_num_threads())
        row = {"spatial": spatial, "channel": channel, "preset": preset, "img_size": cfg.img_size,
               "tokens": tokens(cfg), "params": trainable, "params_frozen": frozen, "macs": macs,
               "train_img_s": significant(speed["train_img_s"]), "infer_img_s": significant(speed["infer_img_s"]),
               "peak_mem_mb": round(speed["peak_mem_mb"], 1),
               "mfu": round(3 * 2 * macs * speed["train_img_s"] / peak_flops, 5)}
        if args.match:
            row |= {"matched_to": f"{reference}/{channels[0]}", "dims": ",".join(map(str, cfg.dims)),
                    "ratio": channel_ratio(cfg, channel)}
        log(f"  {preset} {cfg.img_size}px {spatial}/{channel}: {trainable:,} params, {macs / 1e6:.2f} M MACs, "
            f"train {rate(row['train_img_s'])} img/s, infer {rate(row['infer_img_s'])} img/s")
        rows.append(row)
    return {"device": str(device), "batch_size": args.batch_size, "matmul_flops": peak_flops, "rows": rows}


def significant(value: float, digits: int = 4) -> float:
    """Rounded to `digits` significant digits: a 224 px model trains at 0.5 img/s on a CPU, not at 0."""
    return float(f"{value:.{digits}g}")


def rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 10 else f"{images_per_s:.2g}"


def format_table(rows: list[dict]) -> str:
    import pandas as pd
    table = pd.DataFrame(rows)
    formats = {"params": lambda v: f"{v / 1e6:.3f} M", "params_frozen": lambda v: f"{v / 1e6:.3f} M",
               "macs": lambda v: f"{v / 1e6:.2f} M", "train_img_s": rate,
               "infer_img_s": rate, "peak_mem_mb": "{:.0f}".format, "mfu": "{:.1%}".format}
    for key, fmt in formats.items():
        table[key] = table[key].map(fmt)
    return table.rename(columns={"macs": "MACs", "peak_mem_mb": "peak_MiB"}).to_string(index=False)


def write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from .io import atomic_write
    atomic_write(path, lambda f: f.write(pd.DataFrame(rows).to_csv(index=False).encode()))


def plot_cost_vs_tokens(path: Path, rows: list[dict]) -> None:
    """MACs, params and training throughput against tokens, one line per mixer, log-log axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from .io import atomic_write
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_model_args, positive_int
    add_model_args(p, many=True)
    p.set_defaults(spatial=",".join(blocks.SPATIAL))  # profile compares every spatial mixer unless told otherwise
    p.add_argument("--img-size", default=None, metavar="N[,N..]",
                   help="image sizes in pixels (comma-separated); default: each preset's own")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--match", choices=("params", "macs"), default=None,
                   help="resize each model (width, then channel-MLP ratio) to the reference's params or MACs")
    p.add_argument("--match-to", default=None, metavar="SPATIAL",
                   help="the reference spatial mixer for --match (default: the first in --spatial)")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps before timing")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed steps; the median is reported")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: the cores this process may use, as `run` does)")
    p.add_argument("--csv", default="profile.csv", help="where to write the rows as CSV (default: profile.csv)")
    p.add_argument("--plot", nargs="?", const="cost_vs_tokens.png", default=None, metavar="FILE",
                   help="write the cost-vs-tokens plot (default file: cost_vs_tokens.png)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON document on stdout")


def main(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    doc = profile(args, log)
    write_csv(Path(args.csv), doc["rows"])
    log(f"wrote {args.csv}")
    if args.plot:
        plot_cost_vs_tokens(Path(args.plot), doc["rows"])
        log(f"wrote {args.plot}")
    print(json.dumps(doc) if args.json else format_table(doc["rows"]))
    return 0
