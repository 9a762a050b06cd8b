"""Warm timings: a row's throughput does not depend on which row the process measured first, and the matmul peak
is warm, so an MFU above 100% can only be a bug, which fails loudly."""
import math
import random

import pytest
import torch

from ablate.commands import main as cli_main
from ablate.foundations import timing
from ablate.foundations.timing import MeasurementBug, Timing, matmul_flops, mfu, warm_times

CPU = torch.device("cpu")


class ColdProcess:
    """A synthetic cost model of one process: each call of a row's step costs that row's time, times a cold-start
    factor that decays with the calls the process has made so far (thread pools, first-touch memory, caches), with
    a few percent of seeded noise. The clock is simulated: the test times nothing real."""

    def __init__(self, seed: int):
        self.now, self.calls, self.noise = 0.0, 0, random.Random(seed)

    def clock(self) -> float:
        return self.now

    def step(self, cost: float):
        def call():
            cold = 1 + 3 * math.exp(-self.calls / 10)  # the first calls 4x slow, like a fresh process's first row
            self.now += cost * cold * self.noise.uniform(0.97, 1.03)
            self.calls += 1
        return call


def measure(order: list[str], costs: dict, **options) -> dict[str, Timing]:
    process = ColdProcess(seed=len(order))
    return {name: warm_times(process.step(costs[name]), CPU, repeats=10, clock=process.clock, **options)
            for name in order}


def within_spread(a: Timing, b: Timing) -> bool:
    """Whether two timings of one step agree: each median inside the other's interquartile range, widened by the
    noise's own reach."""
    (a1, a3), (b1, b3) = a.quartiles, b.quartiles
    return a1 * 0.97 <= b.median <= a3 * 1.03 and b1 * 0.97 <= a.median <= b3 * 1.03


def test_reversing_the_rows_changes_no_rows_throughput_beyond_its_spread():
    costs = {"mlp": 0.10, "attention": 0.14, "conv": 0.08}
    forward, backward = measure(list(costs), costs), measure(list(costs)[::-1], costs)
    for name in costs:
        assert within_spread(forward[name], backward[name]), (name, forward[name], backward[name])
        assert forward[name].stable and backward[name].stable
        assert forward[name].median == pytest.approx(costs[name], rel=0.05)


def test_a_fixed_warm_up_would_fail_that_test():
    """The old method, 3 untimed calls whatever the times do, measures the first row cold: the check above sees it."""
    costs = {"mlp": 0.10, "attention": 0.14}
    forward = measure(list(costs), costs, max_warmup_s=0)  # stops warming up after min_warmup calls
    backward = measure(list(costs)[::-1], costs, max_warmup_s=0)
    assert not within_spread(forward["mlp"], backward["mlp"])
    assert forward["mlp"].median > 1.5 * backward["mlp"].median
    assert not forward["mlp"].stable


def test_a_step_that_never_settles_is_timed_and_says_so():
    process = ColdProcess(seed=0)
    drift = iter(range(10**6))

    def slower_each_call():
        process.now += 0.01 * (1.2 ** next(drift))
    t = warm_times(slower_each_call, CPU, repeats=3, max_warmup_s=1.0, clock=process.clock)
    assert not t.stable and len(t.times) == 3 and t.warmup >= timing.MIN_WARMUP


def test_rate_is_the_median_with_its_interquartile_range():
    t = Timing(times=(1.0, 2.0, 2.0, 4.0, 8.0), warmup=3, stable=True)
    median, low, high = t.rate(100)
    assert median == 50 and low == pytest.approx(100 / 4.0) and high == pytest.approx(100 / 2.0)


def test_matmul_peak_is_warm_per_thread_count_and_precision(monkeypatch):
    """The peak is measured warm (past the cold first calls) and anew for each thread count and precision: the
    one a step runs with."""
    calls = []
    real = timing.warm_times
    monkeypatch.setattr(timing, "warm_times", lambda *a, **k: calls.append(k) or real(*a, **k))
    timing.peak_flops.cache_clear()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        peak = matmul_flops(CPU, "fp32")
        torch.set_num_threads(1)
        matmul_flops(CPU, "fp32")
        assert peak > 1e9 and len(calls) == 2  # one measurement per thread count, each through warm_times
        torch.set_num_threads(2)
        assert matmul_flops(CPU, "fp32") == peak and len(calls) == 2  # cached for the same threads and precision
    finally:
        torch.set_num_threads(threads)
        timing.peak_flops.cache_clear()


def test_mfu_above_100_percent_fails_loudly():
    assert mfu(1e6, 100, 1e9) == pytest.approx(0.6)
    with pytest.raises(MeasurementBug, match=r"MFU 120% .* above 100%: .* bug"):
        mfu(1e6, 200, 1e9)


def test_profile_refuses_a_too_low_peak_as_a_bug(capsys, tmp_path, monkeypatch):
    """With a matmul peak 1000x too low every MFU is above 100%: profile exits 1 naming the bug, writes nothing."""
    monkeypatch.setattr("ablate.commands.profile.matmul_flops", lambda device, precision: 1e6)
    code = cli_main(["profile", "--spatial", "conv", "--batch-size", "8", "--repeats", "2", "--threads", "1",
                     "--device", "cpu", "--csv", str(tmp_path / "p.csv"), "--json"])
    assert code == 1 and "above 100%" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("flag,path,message", [
    ("--csv", "{tmp}", "is a folder"), ("--csv", "{tmp}/nowhere/p.csv", "does not exist"),
    ("--plot", "{tmp}/nowhere/c.png", "does not exist"), ("--plot", "{tmp}", "is a folder")])
def test_profile_checks_its_output_paths_before_it_measures(capsys, tmp_path, monkeypatch, flag, path, message):
    monkeypatch.setattr("ablate.commands.profile.profile", lambda *a: pytest.fail("measured before checking"))
    args = {"--csv": str(tmp_path / "ok.csv"), flag: path.format(tmp=tmp_path)}
    assert cli_main(["profile", "--spatial", "conv", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert flag in err and message in err and "Traceback" not in err
