"""Warm timings and the matmul peak they are compared with.

A step is timed only once it is warm: the first calls of a process (and of a new model) are 2-4x slow while thread
pools start, memory is first touched and caches fill, so a fixed count of untimed calls leaves whichever row runs
first slow. `warm_times` calls the step until the medians of its last three windows of calls agree, then times
it; the result carries its spread. `matmul_flops` measures the peak the same way, with the threads and
precision of the step it divides, so an MFU means something; `mfu` refuses one above 100%.
"""
import functools
import statistics
import time
from dataclasses import dataclass

import torch

from .errors import RunFailed
from .runtime import sync, timer

WINDOW = 5            # calls per window: warm once the medians of the last WINDOWS windows are within TOLERANCE
WINDOWS = 3           # of their mean (two would pass a slow decay whose every step is under TOLERANCE)
TOLERANCE = 0.05
MIN_WARMUP = 3        # untimed calls at the least, even for a step that looks stable from its first call
MAX_WARMUP_S = 60.0   # a step still drifting after this long is timed anyway, and says it was not stable


@dataclass(frozen=True)
class Timing:
    times: tuple[float, ...]  # seconds of each timed call
    warmup: int               # untimed calls before them
    stable: bool              # whether the warm-up ended by agreement (False: by MAX_WARMUP_S)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The first and third quartile of the times (both the one time when there is one)."""
        if len(self.times) < 2:
            return self.times[0], self.times[0]
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q3

    def rate(self, work: float) -> tuple[float, float, float]:
        """`work` per second: (median, low, high), low and high from the quartiles of the times (the IQR)."""
        q1, q3 = self.quartiles
        return work / self.median, work / q3, work / q1


def warm_times(step, device: torch.device, repeats: int, min_warmup: int = MIN_WARMUP,
               max_warmup_s: float = MAX_WARMUP_S, clock=time.perf_counter) -> Timing:
    """Calls step() untimed until warm (at least `min_warmup` calls, then until WINDOWS windows of WINDOW calls agree
    within TOLERANCE, or `max_warmup_s` has passed), then times `repeats` calls (runtime.timer: CUDA events on GPU,
    `clock` on CPU)."""
    warm, start = [], clock()
    stable = False
    while not stable and (len(warm) < min_warmup or clock() - start <= max_warmup_s):
        warm.append(timed(step, device, clock))
        stable = len(warm) >= min_warmup and agrees(warm[-WINDOWS * WINDOW:])
    return Timing(tuple(timed(step, device, clock) for _ in range(repeats)), len(warm), stable)


def timed(step, device: torch.device, clock) -> float:
    sync(device)
    stop = timer(device, clock)
    step()
    return stop()


def agrees(times: list[float]) -> bool:
    """WINDOWS full windows whose medians are all within TOLERANCE of their mean."""
    if len(times) < WINDOWS * WINDOW:
        return False
    medians = [statistics.median(times[i:i + WINDOW]) for i in range(0, len(times), WINDOW)]
    mean = statistics.fmean(medians)
    return all(abs(m - mean) <= TOLERANCE * mean for m in medians)


def matmul_flops(device: torch.device | str, precision: str) -> float:
    """Peak matmul FLOP/s of this device in `precision` (fp32, or bf16 as autocast computes it) on the threads this
    process uses now: the fastest warm call of a square matmul of matrices already in that precision (autocast
    would time its casts too). Measured once per device, precision and thread count in a process."""
    return peak_flops(str(device), precision, torch.get_num_threads())


@functools.cache
def peak_flops(device_name: str, precision: str, threads: int) -> float:
    device = torch.device(device_name)
    n = 4096 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device).manual_seed(0)  # the global generator stays as the caller seeded it
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
    timing = warm_times(lambda: a @ b, device, repeats=10)
    return 2 * n ** 3 / min(timing.times)


class MeasurementBug(RunFailed):
    """A measured number that cannot be true (an MFU above 100%): a bug in the measurement, not a result."""


def mfu(macs: float, img_s: float, peak: float) -> float:
    """Model FLOP utilisation of training: 3 x 2 x MACs per image (forward + backward) x images/s over the peak."""
    value = 6 * macs * img_s / peak
    if value > 1:
        raise MeasurementBug(f"MFU {value:.0%} (6 x {macs:,.0f} MACs x {img_s:,.1f} img/s over a peak of "
                             f"{peak / 1e9:,.1f} GFLOP/s) is above 100%: the peak was measured too low or the step "
                             f"too fast; this is a bug in the measurement, please report it")
    return value
