"""Where and how a process computes: the device, the cores it may use, the precision (fp32 or bf16 autocast), a
clock that is right on CUDA, the cache folder and the code version."""
import contextlib
import functools
import os
import subprocess
import time
from pathlib import Path

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which `study --workers` splits), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), frozenset())


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices in hardware: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or
    AMX (twice the fp32 matmul rate on this project's 2-core machines: README, speed)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def pick_precision(name: str, device: torch.device) -> str:
    """fp32 or bf16 (autocast): `auto` is bf16 where the device has it in hardware, else fp32."""
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def precision_before_option(device: str) -> str:
    """What a run from before `--precision` trained in (its checkpoint and record do not say): bf16 autocast on
    CUDA, fp32 elsewhere."""
    return "bf16" if device.startswith("cuda") else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The precision of training, evaluation and timing (pick_precision's): bf16 autocast, or plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device, clock=time.perf_counter):
    """Starts a clock; the returned function gives the seconds since. On CUDA the clock is a pair of events on the
    device's stream, read once the work queued before the second has run; on CPU `clock` (wall time, or
    time.process_time for CPU time, which other load disturbs less)."""
    if device.type != "cuda":
        start = clock()
        return lambda: clock() - start
    begin = torch.cuda.Event(enable_timing=True)
    begin.record()

    def stop() -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000

    return stop


def cache_dir() -> Path:
    """~/.cache/ablate, or under $XDG_CACHE_HOME: downloaded datasets and counted preset costs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ablate"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
