"""Scale-out: torchrun DDP on CPU (gloo) against one process, data sharding, and the CUDA path.

The DDP runs use --no-augment and the tiny preset's drop_path 0: augmentation and drop-path draw from per-rank
random streams, so with them a 2-process run is a different (equally valid) sample than one process, and the
comparison could only be loose. Without them the only difference left is the order of floating-point sums.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablate.engines.data import transforms
from ablate.engines.data.memory import Batches
from ablate.engines.data.transforms import Transform
from ablate.foundations import distributed
from ablate.foundations.errors import UsageError
from conftest import ROOT, run_cli, wait_for_first_epoch

NO_CUDA = not torch.cuda.is_available()
SKIP_CUDA = "no CUDA device on this machine: the CUDA path runs only where a GPU is"
ARGS = ["--dataset", "synthetic", "--train-size", "1000", "--batch-size", "100", "--epochs", "2", "--no-augment",
        "--seed", "3", "--device", "cpu"]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m ablate ...`: a free port on localhost, one thread per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ablate",
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, **popen)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def one_process(*args: str) -> subprocess.CompletedProcess:
    """`python -m ablate ...` pinned to one core, so it runs one thread like each torchrun rank (and does not
    thrash when the machine's other cores are busy)."""
    one_core = {min(os.sched_getaffinity(0))}
    return subprocess.run([sys.executable, "-m", "ablate", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, one_core))


def kill_job(pid: int) -> None:
    """SIGKILL a torchrun job as a crash would: its workers (torchrun starts them in sessions of their own, so
    they are not in its process group) and torchrun itself."""
    workers = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    assert workers, "torchrun has not started its workers"
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


# -- sharding and helpers (no processes) ----------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_take_the_single_process_batches(world):
    n, global_batch = 1030, 40  # n not a multiple of the batch or the world
    x = torch.arange(n).view(n, 1, 1, 1).to(torch.uint8)  # pixel values are irrelevant; labels identify images
    y, mean, std = torch.arange(n), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    one = Batches(x, y, global_batch, Transform(mean, std), train=True, seed=5)
    ranks = [Batches(x, y, global_batch // world, Transform(mean, std), train=True, seed=5, rank=r, world=world)
             for r in range(world)]
    assert all(len(b) == len(one) == n // global_batch for b in ranks)  # same steps, so the same lr schedule
    for epoch in (0, 1):
        together = zip(*(b.epoch(epoch) for b in ranks))
        for (_, expected), parts in zip(one.epoch(epoch), together):
            assert sorted(torch.cat([p[1] for p in parts]).tolist()) == sorted(expected.tolist())


def test_evaluation_shards_cover_every_image_once():
    n, world = 1003, 4
    x, y = torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n)
    shards = [Batches(x, y, 100, Transform(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)), rank=r, world=world)
              for r in range(world)]
    seen = torch.cat([b for s in shards for _, b in s.epoch(0)])
    assert sorted(seen.tolist()) == list(range(n))


def test_global_batch_must_divide_over_ranks():
    assert distributed.per_rank_batch(256, 4) == 64
    with pytest.raises(UsageError, match="--batch-size 100 is the global batch.*3 processes.*e.g. 99"):
        distributed.per_rank_batch(100, 3)


def test_context_from_torchrun_environment(monkeypatch):
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.context() == distributed.Context() and distributed.context().main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    ctx = distributed.context()
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.local_world, ctx.main, ctx.active) == (3, 4, 1, 2, False, True)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match="inconsistent torchrun variables"):
        distributed.context()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UsageError, match="whole numbers"):
        distributed.context()


def test_single_process_reductions_are_identity():
    t = torch.tensor([1.5, 2.0])
    assert distributed.mean(t) is t and distributed.total(t) is t
    assert distributed.broadcast("x") == "x" and distributed.gather(7) == [7]


# -- torchrun with gloo ---------------------------------------------------------------------------------------
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = one_process(*ARGS, "--out", str(tmp_path / "one"), "--json")
    assert single.returncode == 0, single.stderr
    ddp = torchrun(*ARGS, "--out", str(tmp_path / "ddp"), "--json")
    assert ddp.returncode == 0, ddp.stderr
    one, two = json.loads(single.stdout), json.loads(ddp.stdout)  # one JSON document: only rank 0 printed
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(list((tmp_path / "ddp").glob("*/record.json"))) == 1  # rank 0 alone writes
    assert ddp.stderr.count("epoch 1/2") == 1  # and alone logs
    assert two["train_size"] == one["train_size"] == 1000 and two["test_size"] == one["test_size"]
    for a, b in zip(one["history"], two["history"]):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)  # same steps: same schedule
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.01)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=0.01)
        assert abs(b["test_acc"] - a["test_acc"]) <= 0.02
    assert two["history"][-1]["train_loss"] < two["history"][0]["train_loss"]  # and it did learn


@pytest.mark.slow
def test_ddp_divergence_stops_every_rank(tmp_path):
    out = torchrun("--dataset", "synthetic", "--epochs", "1", "--lr", "1e12", "--warmup", "0",
                   "--device", "cpu", "--out", str(tmp_path))
    assert out.returncode != 0  # torchrun reports a failed job as 1 whatever its workers' codes were
    assert out.stderr.count("failed: diverged: loss is") == 2, out.stderr  # both ranks saw the same loss
    record = json.loads(next(tmp_path.glob("*/record.json")).read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]


@pytest.mark.slow
def test_ddp_sigkill_then_resume_matches_uninterrupted_ddp_run(tmp_path):
    args = ["--dataset", "synthetic", "--train-size", "1000", "--batch-size", "100", "--epochs", "3", "--seed", "3",
            "--device", "cpu", "--augment"]  # every rank's own augmentation stream must come back from the checkpoint
    reference = torchrun(*args, "--out", str(tmp_path / "ref"), "--json")
    assert reference.returncode == 0, reference.stderr
    expected = json.loads(reference.stdout)

    out = tmp_path / "killed"
    proc = torchrun(*args, "--out", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = wait_for_first_epoch(out)  # then kill at once
    kill_job(proc.pid)
    proc.wait()
    killed = json.loads(record.read_text())
    assert killed["status"] == "running" and 1 <= len(killed["history"]) < 3

    resumed = torchrun(*args, "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)
    assert got["run_id"] == killed["run_id"] and "resuming" in resumed.stderr
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in expected["history"]]
    assert got["test_acc"] == expected["test_acc"] and got["test_loss"] == expected["test_loss"]


# -- the CUDA path --------------------------------------------------------------------------------------------
def test_augment_runs_on_the_images_device():
    """Random draws come from a CPU generator; the crop and flip must still index on the batch's device (meta
    stands in for a GPU here: a CPU index or mask meeting it fails just as on CUDA)."""
    x = torch.empty(8, 3, 32, 32, device="meta")
    out = transforms.augment(x, pad=4, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.slow
def test_compile_trains_on_cpu(cli, tmp_path):
    out = cli("--dataset", "synthetic", "--train-size", "200", "--batch-size", "100", "--epochs", "1", "--compile",
              "--device", "cpu", "--out", str(tmp_path), "--json", timeout=900)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["config"]["compile"] and record["history"][0]["train_loss"] > 0


@pytest.mark.skipif(NO_CUDA, reason=SKIP_CUDA)
@pytest.mark.parametrize("extra", [[], ["--compile"]])
def test_cuda_run_records_peak_memory(cli, tmp_path, extra):
    out = cli("--dataset", "synthetic", "--epochs", "2", "--batch-size", "100", "--device", "auto", *extra,
              "--out", str(tmp_path), "--json", timeout=900)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["device"] == "cuda:0" and record["peak_mem_mb"] > 0
    assert record["train_img_s"] > 0 and record["test_acc"] > 0.5  # bf16 autocast still learns the templates


@pytest.mark.skipif(NO_CUDA, reason=SKIP_CUDA)
def test_cuda_resume_restores_random_state(cli, tmp_path):
    first = cli("--dataset", "synthetic", "--epochs", "2", "--batch-size", "100", "--device", "cuda",
                "--out", str(tmp_path), "--json")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / json.loads(first.stdout)["run_id"]
    record = json.loads((run_dir / "record.json").read_text())
    record["status"] = "running"
    (run_dir / "record.json").write_text(json.dumps(record))
    again = cli("--dataset", "synthetic", "--epochs", "2", "--batch-size", "100", "--device", "cuda",
                "--out", str(tmp_path), "--json", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 CUDA devices on this machine")
def test_nccl_two_gpus_match_one(tmp_path):
    args = [a if a != "cpu" else "cuda" for a in ARGS]
    single = run_cli(*args, "--out", str(tmp_path / "one"), "--json")
    ddp = torchrun(*args, "--out", str(tmp_path / "ddp"), "--json")
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr
    one, two = json.loads(single.stdout), json.loads(ddp.stdout)
    assert two["device"] == "cuda:0" and two["world_size"] == 2 and two["peak_mem_mb"] > 0
    for a, b in zip(one["history"], two["history"]):  # bf16: looser than fp32 on CPU
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
