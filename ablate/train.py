"""The training job: one model, one dataset, AdamW + warm-up/cosine, eval every epoch,
a checkpoint every epoch, and the run record."""
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

import blocks

from . import __version__, data, distributed, matching, stream
from .errors import RunFailed, UsageError
from .io import save_torch, write_json
from .profile import count_macs, count_params


@dataclass
class RunConfig:
    spatial: str = "mlp"                 # spatial mixer (blocks.SPATIAL)
    channel: str = "mlp"                 # channel mixer (blocks.CHANNEL)
    preset: str = "tiny"                 # backbone preset (blocks.PRESETS)
    model_options: dict = field(default_factory=dict)  # other backbone fields to override, e.g. {"norm": "batch"}
    match: str | None = None             # params | macs: resize the model to match_to's budget (ablate.matching)
    match_to: str | None = None          # the reference spatial mixer for `match`
    dataset: str = "fashion-mnist"       # see data.DATASETS
    img_size: int | None = None          # imagefolder: images resized and centre-cropped to this square; None = first's
    data_dir: str | None = None          # looked at before $ABLATE_DATA, ~/.cache/ablate and the Debian package
    train_size: int | None = None        # stratified, nested subset of the training set; None = all
    epochs: int = 5
    eval_every: int = 1                  # evaluate on the test set every k epochs (and always after the last)
    batch_size: int = 256                # the global batch: under torchrun each of N processes takes batch_size / N
    lr: float = 2e-3                     # peak learning rate after warm-up
    weight_decay: float = 0.05           # AdamW; not applied to norms, biases and embeddings (timm)
    warmup_epochs: float = 0.5           # linear warm-up, then cosine to 1% of lr, stepped every batch
    label_smoothing: float = 0.1
    augment: bool = False                # random crop (pad 2 at 28 px, 4 at 32 px) + horizontal flip; off by
                                         # default: it costs accuracy in the 5-minute default budget (README)
    shuffle: str = "none"                # none | patch | global: a fixed pixel permutation of train and test
    seed: int = 0                        # model init, data order, subset and shuffle
    device: str = "auto"                 # auto | cpu | cuda
    compile: bool = False                # torch.compile the model (pays off on GPU)
    out: str = "runs"                    # run folders go here

    def validate(self) -> None:
        """Numbers out of range are bad input (exit 2), caught before anything is loaded or written."""
        checks = {"lr": self.lr > 0, "weight_decay": self.weight_decay >= 0, "warmup_epochs": self.warmup_epochs >= 0,
                  "label_smoothing": 0 <= self.label_smoothing < 1, "epochs": self.epochs > 0,
                  "batch_size": self.batch_size > 0, "eval_every": self.eval_every > 0,
                  "train_size": self.train_size is None or self.train_size > 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UsageError(", ".join(f"{name} = {getattr(self, name)} is out of range" for name in bad) +
                             " (lr > 0, weight_decay >= 0, warmup_epochs >= 0, 0 <= label_smoothing < 1, "
                             "epochs, batch_size, eval_every and train_size > 0)")

    def key(self) -> str:
        """Identifies the experiment: everything but where and on what it runs."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "out", "data_dir", "compile")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def timer(device: torch.device):
    """Starts a clock; the returned function gives the seconds since. On CUDA the clock is a pair of events on the
    device's stream, read once the work queued before the second has run."""
    if device.type != "cuda":
        start = time.perf_counter()
        return lambda: time.perf_counter() - start
    begin = torch.cuda.Event(enable_timing=True)
    begin.record()

    def stop() -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000

    return stop


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_model(cfg: RunConfig, ds: data.Dataset) -> blocks.MetaFormer:
    return build_matched(cfg, ds)[0]


def build_matched(cfg: RunConfig, ds: data.Dataset) -> tuple[blocks.MetaFormer, dict | None]:
    """The run's model, and what --match resized it to (metric, reference, target), None without --match."""
    c, h, w = ds.shape
    if h != w:
        raise UsageError(f"{ds.name} images are {h}x{w}; the backbone needs square images")
    shape = {"in_chans": c, "img_size": h, "num_classes": ds.num_classes}
    resized, matched = matching.run_overrides(cfg.preset, cfg.spatial, cfg.channel, cfg.match, cfg.match_to,
                                              {**shape, **cfg.model_options})
    model = blocks.create(cfg.preset, spatial=cfg.spatial, channel=cfg.channel,
                          **{**shape, **cfg.model_options, **resized})
    if model.cfg.img_size != h:  # a model built for another size must say so now, not in the first batch
        model.check_grid(tuple(model.stem(torch.zeros(1, c, h, w)).shape[1:3]))
    return model, matched


def find_resumable(out: Path, key: str) -> Path | None:
    """The newest run folder under `out` with this config key whose record is not finished."""
    candidates = []
    for record in out.glob("*/record.json"):
        try:
            doc = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("config_key") == key and doc.get("status") != "done" and (record.parent / "checkpoint.pt").exists():
            candidates.append(record.parent)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def prepare_out(out: Path) -> None:
    """Fails before any training when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to output folder {out}: {e.strerror or e}") from None


class Trainer:
    def __init__(self, cfg: RunConfig, quiet: bool = False, log=None):
        self.device = distributed.device_for(pick_device(cfg.device), distributed.context())
        self.dist = distributed.setup(self.device)  # under torchrun: joins the job's process group
        self.cfg, self.quiet = cfg, quiet or not self.dist.main  # other ranks stay quiet
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if not self.dist.main:
            self.log = lambda msg: None
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, usable_cores() // self.dist.local_world))  # ranks on a node share its cores
        else:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times its kernels once, keeps the fastest
        batch_size = distributed.per_rank_batch(cfg.batch_size, self.dist.world)
        self.ds = data.load(cfg.dataset, cfg.data_dir, img_size=cfg.img_size)
        torch.manual_seed(cfg.seed)
        self.model, self.matched = build_matched(cfg, self.ds)
        if self.dist.active and self.device.type == "cuda":  # batch statistics over the global batch (GPU only)
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # NHWC on GPUs: cuDNN's convs (stem, downsampling) prefer it, and the blocks' (B, H, W, C) views are free
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.params, self.params_frozen = count_params(self.model)
        self.macs = count_macs(self.model, self.ds.shape)
        if self.dist.rank:  # dropout and drop-path draws differ per rank; rank 0 keeps a single process's stream
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        if self.matched:
            self.matched["value"] = self.params if cfg.match == "params" else self.macs
        subset = data.nested_subset(self.ds.train_y, cfg.train_size, cfg.seed)
        mean, std = (t.to(self.device) for t in self.ds.mean_std())
        side = self.ds.shape[1]
        perm = data.pixel_permutation(cfg.shuffle, side, side, self.model.cfg.patch_size, cfg.seed)
        perm = None if perm is None else perm.to(self.device)
        aug = dict(train=True, pad=side // 16 * 2 if cfg.augment else 0, flip=cfg.augment)  # 28 px: 2, 32 px: 4
        common = dict(mean=mean, std=std, perm=perm, seed=cfg.seed, rank=self.dist.rank, world=self.dist.world)
        if isinstance(self.ds, stream.FolderDataset):  # read from disk per batch; test batches as large as train's
            self.train_batches = stream.FolderBatches(self.ds.train, subset, batch_size, device=self.device, **aug,
                                                      **common)
            self.test_batches = stream.FolderBatches(self.ds.test, torch.arange(len(self.ds.test)), batch_size,
                                                     device=self.device, **common)
        else:
            self.train_batches = data.Batches(self.ds.train_x[subset].to(self.device),
                                              self.ds.train_y[subset].to(self.device), batch_size, **aug, **common)
            self.test_batches = data.Batches(self.ds.test_x.to(self.device), self.ds.test_y.to(self.device), 1000,
                                             **common)
        self.train_size, self.test_size = len(subset), len(self.ds.test_y)
        if len(self.train_batches) == 0:
            raise UsageError(f"--train-size {len(subset)} is smaller than one batch ({cfg.batch_size}); "
                             f"lower --batch-size")
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * len(self.train_batches)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=steps, lr_min=cfg.lr * 0.01,
                                           warmup_t=int(cfg.warmup_epochs * len(self.train_batches)),
                                           warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
        self.forward = torch.compile(self.model) if cfg.compile else self.model  # evaluation: each rank its shard
        self.train_forward = self.forward
        if self.dist.active:  # backward averages the gradients over ranks, so a step is the global batch's step
            ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            self.train_forward = torch.compile(ddp) if cfg.compile else ddp
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.history: list[dict] = []
        self.train_time = 0.0
        self.train_images = 0
        self.infer_img_s = None
        self.peak_mem_mb = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- state ------------------------------------------------------------------------------------------------
    def rng_state(self) -> dict:
        return {"torch_rng": torch.get_rng_state(), "augment_rng": self.train_batches.generator.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def state(self) -> dict:
        """The checkpoint. Under torchrun every rank calls it (it gathers each rank's random state); rank 0 saves."""
        rng = self.rng_state()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history, "train_time": self.train_time,
                "train_images": self.train_images, **rng,
                "rank_rng": distributed.gather(rng) if self.dist.active else None}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history, self.train_time, self.train_images = state["history"], state["train_time"], state["train_images"]
        ranks = state.get("rank_rng") or [state]
        if self.dist.rank < len(ranks):  # a rank the checkpoint did not have keeps its fresh seed
            rng = ranks[self.dist.rank]
            torch.set_rng_state(rng["torch_rng"])
            self.train_batches.generator.set_state(rng["augment_rng"])
            if rng.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda_rng"], self.device)

    # -- loops ------------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        steps = len(self.train_batches)
        total, count, last_finite = 0.0, 0, None
        bar = tqdm(self.train_batches.epoch(epoch), total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   leave=False, disable=self.quiet or not sys.stderr.isatty(), file=sys.stderr)
        stop = timer(self.device)
        for step, (x, y) in enumerate(bar):
            with self.autocast:
                loss = F.cross_entropy(self.train_forward(x.contiguous(memory_format=self.memory_format)), y,
                                       label_smoothing=self.cfg.label_smoothing)
            value = distributed.mean(loss.detach()).item()  # the global batch's loss: all ranks stop on divergence
            if not math.isfinite(value):
                raise RunFailed(f"diverged: loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps} "
                                f"(last finite loss: {last_finite}); lower --lr or check the data")
            last_finite = value
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step_update(epoch * steps + step + 1)
            total, count = total + value * len(y), count + len(y)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        self.train_time += stop()
        self.train_images += count * self.dist.world
        return total / count

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """Accuracy and mean loss on the test set; under torchrun each rank takes its shard and the sums are added."""
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, summed loss, images
        stop = timer(self.device)
        for x, y in self.test_batches.epoch(0):
            with self.autocast:
                logits = self.forward(x.contiguous(memory_format=self.memory_format))
            sums += torch.stack([(logits.argmax(1) == y).sum().double(),
                                 F.cross_entropy(logits.float(), y, reduction="sum").double(),
                                 torch.tensor(len(y), dtype=torch.float64, device=self.device)])
        correct, loss, n = distributed.total(sums).tolist()
        self.infer_img_s = n / stop()
        return correct / n, loss / n

    # -- the run ----------------------------------------------------------------------------------------------
    def record(self, run_dir: Path, status: str, error: str | None = None) -> dict:
        cfg, last = self.cfg, (self.history[-1] if self.history else {})
        return {
            "spatial": cfg.spatial, "channel": cfg.channel, "preset": cfg.preset, "dataset": cfg.dataset,
            "train_size": self.train_size, "test_size": self.test_size, "seed": cfg.seed,
            "epochs": cfg.epochs, "shuffle": cfg.shuffle, "params": self.params, "params_frozen": self.params_frozen,
            "macs": self.macs, "matched": self.matched, "test_acc": last.get("test_acc"),
            "test_loss": last.get("test_loss"),
            "train_time_s": round(self.train_time, 3),
            "train_img_s": round(self.train_images / self.train_time, 1) if self.train_time else None,
            "infer_img_s": round(self.infer_img_s, 1) if self.infer_img_s else None,
            "device": str(self.device), "world_size": self.dist.world, "history": self.history,
            **({"peak_mem_mb": self.peak_mem_mb} if self.device.type == "cuda" else {}),
            "config": {**dataclasses.asdict(cfg), "model": dataclasses.asdict(self.model.cfg)},
            "config_key": cfg.key(), "status": status, "error": error, "run_id": run_dir.name,
            "run_dir": str(run_dir), "version": __version__, "git_commit": git_commit(),
        }

    def run(self, run_dir: Path, on_epoch=None) -> dict:
        """Trains from the state in run_dir (if any) to the last epoch, writing checkpoint and record each epoch.

        `on_epoch(epoch, record)` is called after each epoch (studies report to optuna pruners there), on rank 0.
        Under torchrun every rank calls this with rank 0's run_dir; only rank 0 reads and writes files there.
        """
        ckpt = run_dir / "checkpoint.pt"
        # rank 0's checkpoint, sent to every rank (other nodes need not see rank 0's disk); CPU tensors, as
        # random states must be, until load_state_dict copies them to the device
        state = torch.load(ckpt, map_location="cpu", weights_only=False) if self.dist.main and ckpt.exists() else None
        state = distributed.broadcast(state)
        if state is not None:
            self.load_state(state)
            self.log(f"resuming {run_dir} after epoch {len(self.history)}")
        try:
            for epoch in range(len(self.history), self.cfg.epochs):
                t0 = time.perf_counter()
                train_loss = self.train_epoch(epoch)
                evaluated = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
                test_acc, test_loss = self.evaluate() if evaluated else (None, None)
                if self.device.type == "cuda":  # the allocator's peak on the busiest GPU
                    peak = distributed.maximum(torch.cuda.max_memory_allocated(self.device) / 2**20, self.device)
                    self.peak_mem_mb = round(peak, 1)
                self.history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 5), "test_acc": test_acc,
                                     "test_loss": test_loss and round(test_loss, 5),
                                     "lr": self.optimizer.param_groups[0]["lr"],
                                     "time_s": round(time.perf_counter() - t0, 2)})
                doc = self.record(run_dir, "running" if epoch + 1 < self.cfg.epochs else "done")
                state, error = self.state(), None
                if self.dist.main:
                    try:  # atomic: a kill or a full disk mid-write leaves the previous checkpoint and record intact
                        save_torch(ckpt, state)
                        write_json(run_dir / "record.json", doc)
                    except OSError as e:
                        error = (f"cannot save epoch {epoch + 1} in {run_dir}: {e.strerror or e}; the files of "
                                 f"epoch {epoch} are intact, free space and rerun with --resume")
                error = distributed.broadcast(error)  # all ranks stop when rank 0 could not save
                if error:
                    raise RunFailed(error)
                self.log(f"epoch {epoch + 1}/{self.cfg.epochs}  train_loss {train_loss:.4f}  "
                         + (f"test_acc {test_acc:.4f}  " if evaluated else "")
                         + f"({self.history[-1]['time_s']:.0f} s)")
                if on_epoch and evaluated and self.dist.main:
                    on_epoch(epoch + 1, doc)
        except RunFailed as e:
            if self.dist.main:
                try:
                    write_json(run_dir / "record.json", self.record(run_dir, "failed", str(e)))
                except OSError:
                    pass  # the disk is what failed; the error message already says where things stand
            raise
        return self.record(run_dir, "done")


def run(cfg: RunConfig, resume: str | bool = False, quiet: bool = False, on_epoch=None) -> dict:
    """Runs (or resumes) one training job and returns its record.

    Under torchrun every rank calls it: rank 0 picks the run folder and writes there, the others train and
    evaluate their shards; the process group is left at the end.
    """
    cfg.validate()
    out = Path(cfg.out)
    main = distributed.context().main
    run_dir = None
    if main:
        prepare_out(out)
        if isinstance(resume, str):
            run_dir = Path(resume)
            if not (run_dir / "checkpoint.pt").exists():
                raise UsageError(f"--resume {run_dir}: no checkpoint.pt there")
        elif resume:
            run_dir = find_resumable(out, cfg.key())
            if run_dir is None:
                print(f"no unfinished run of this config under {out}; starting a new one", file=sys.stderr)
    try:
        trainer = Trainer(cfg, quiet=quiet)
        if main and run_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            run_dir = out / f"{stamp}-{cfg.spatial}-{cfg.channel}-{cfg.preset}-s{cfg.seed}"
            run_dir.mkdir(parents=True)
            write_json(run_dir / "record.json", trainer.record(run_dir, "running"))
        run_dir = Path(distributed.broadcast(str(run_dir) if main else None))
        return trainer.run(run_dir, on_epoch)
    finally:
        distributed.teardown()
