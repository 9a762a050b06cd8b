"""Measured cost: training and inference throughput (warm steps' median and spread, on the device the run uses, with
run's own training step) and peak training memory. The matmul peak behind MFU is foundations.timing's."""
import functools
import multiprocessing
import multiprocessing.forkserver
import resource

import torch
from torch import nn

import blocks

from ..foundations.config import RunConfig
from ..foundations.runtime import autocast
from ..foundations.timing import warm_times
from .training.step import Step, make_optimizer, memory_format


def batch(cfg: blocks.MetaFormerConfig, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of the shape `cfg` takes."""
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    return x, torch.randint(0, max(cfg.num_classes, 1), (batch_size,), device=device)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str):
    """One training step as `run` takes it (training.step.Step with the default recipe's label smoothing and
    AdamW): channels-last on CUDA, `precision` (runtime.pick_precision's), cross-entropy, backward, optimizer step."""
    defaults = RunConfig()
    model.to(memory_format=memory_format(x.device)).train()
    step = Step(model, make_optimizer(model, defaults.lr, defaults.weight_decay), x.device, precision,
                defaults.label_smoothing)
    return lambda: step.update(step.loss(x, y))


def infer_step(model: nn.Module, x: torch.Tensor, precision: str):
    """A forward pass in eval mode, as `run` evaluates."""
    model.to(memory_format=memory_format(x.device)).eval()
    x = x.contiguous(memory_format=memory_format(x.device))

    @torch.inference_mode()
    def step():
        with autocast(x.device, precision):
            model(x)
    return step


def throughput(model: nn.Module, batch_size: int, device: torch.device, precision: str, min_warmup: int,
               repeats: int) -> dict:
    """Training and inference images/s, each (median, low, high) over `repeats` warm steps (timing.warm_times:
    warmed up until stable, so no row is measured cold), whether both warm-ups settled, and peak CUDA memory of
    training on GPU."""
    x, y = batch(model.cfg, batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train = warm_times(train_step(model, x, y, precision), device, repeats, min_warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    infer = warm_times(infer_step(model, x, precision), device, repeats, min_warmup)
    return {"train_img_s": train.rate(batch_size), "infer_img_s": infer.rate(batch_size),
            "stable": train.stable and infer.stable, "peak_mem_mb": peak}


def memory_child(conn, cfg: blocks.MetaFormerConfig, mixers: dict, batch_size: int, steps: int, threads: int,
                 precision: str) -> None:
    """In a fresh process: sends (peak RSS in KiB after imports, peak RSS after `steps` training steps)."""
    try:
        torch.set_num_threads(threads)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        blocks.SPATIAL.update(mixers["spatial"])  # mixers registered at run time in the parent (a user's own)
        blocks.CHANNEL.update(mixers["channel"])
        model = blocks.MetaFormer(cfg)
        step = train_step(model, *batch(model.cfg, batch_size, torch.device("cpu")), precision)
        for _ in range(steps):
            step()
        conn.send((base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except Exception as e:  # the parent built and ran this model already, so this is unexpected: pass it on
        conn.send(repr(e))


PRELOAD = ["torch", "blocks", "timm.optim", "ablate.engines.measure"]


@functools.cache
def forkserver() -> multiprocessing.context.BaseContext:
    """Children forked from a server that has imported torch and blocks and done no work: each starts fast and
    with a fresh RSS high-water mark, unlike a fork of this process. Returns once the server has finished its
    imports (a first child has run), so that they do not compete with a timing. (As with any multiprocessing start
    method but fork, a script calling this needs the `if __name__ == "__main__":` guard.)"""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    first = ctx.Process(target=int)  # forked only after the preload
    first.start()
    first.join()
    return ctx


def cpu_peak_memory_mb(cfg: blocks.MetaFormerConfig, batch_size: int, steps: int, threads: int,
                       precision: str) -> float:
    """Peak RSS growth of a child process that builds the model and runs `steps` training steps on CPU:
    parameters, gradients, AdamW state, activations, and what the allocator and math libraries keep around.
    The child gets the mixer classes the config names, so a mixer registered in this process works there too."""
    ctx = forkserver()
    receive, send = ctx.Pipe(duplex=False)
    mixers = {kind: {name: registry[name] for name in cfg.per_stage(getattr(cfg, kind))}
              for kind, registry in (("spatial", blocks.SPATIAL), ("channel", blocks.CHANNEL))}
    child = ctx.Process(target=memory_child, args=(send, cfg, mixers, batch_size, steps, threads, precision))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # died without a word: killed (out of memory?) or crashed
        result = None
    child.join()
    result = f"it exited with code {child.exitcode}" if result is None else result
    if isinstance(result, str):
        raise RuntimeError(f"measuring the training memory of {cfg} in a child process failed: {result}")
    base, peak = result
    return (peak - base) / 1024  # ru_maxrss is in KiB on Linux
