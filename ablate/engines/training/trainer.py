"""The training loop: one model, one dataset, AdamW + warm-up/cosine, and at every evaluation point (every k
epochs, or k steps) an evaluation, a checkpoint and the run record."""
import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import blocks
from blocks.errors import ConfigError

from ... import __version__
from ...foundations import distributed
from ...foundations.config import RunConfig, resolve
from ...foundations.errors import Diverged, RunFailed, UsageError
from ...foundations.io import save_torch, write_json
from ...foundations.runtime import (autocast, git_commit, pick_device, pick_precision, precision_before_option, timer,
                                   usable_cores)
from .. import data
from ..cost import count_macs, count_params
from ...foundations.timing import matmul_flops
from ..data.subsets import split
from ..data.transforms import Transform, pixel_permutation
from .plan import ModelPlan, plan_model
from .regularize import BatchRegularizer, host_rng_state, make_ema, seed_host_rngs, set_host_rng_state
from .step import Step, make_optimizer, memory_format


class Trainer:
    def __init__(self, cfg: RunConfig, plan: ModelPlan | None, quiet: bool = False):
        """`plan`: plan.check(cfg)'s model plan, or None where the dataset's shape comes from its files."""
        cfg = resolve(cfg)
        self.device = distributed.device_for(pick_device(cfg.device), distributed.context())
        self.dist = distributed.setup(self.device)  # under torchrun: joins the job's process group
        self.precision = pick_precision(cfg.precision, self.device)
        self.cfg, self.quiet = cfg, quiet or not self.dist.main  # other ranks stay quiet
        self.log = lambda msg: print(msg, file=sys.stderr, flush=True)
        if not self.dist.main:
            self.log = lambda msg: None
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, usable_cores() // self.dist.local_world))  # ranks on a node share its cores
        else:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times its kernels once, keeps the fastest
        batch_size = distributed.per_rank_batch(cfg.batch_size, self.dist.world)
        if (cfg.mixup or cfg.cutmix) and batch_size % 2:  # timm's Mixup pairs within each process's batch
            raise UsageError(f"Mixup/CutMix pair images within each process's batch: --batch-size {cfg.batch_size} "
                             f"over {self.dist.world} processes gives {batch_size}, which must be even")
        self.ds = data.load(cfg.dataset, cfg.data_dir, img_size=cfg.img_size)
        plan = plan or plan_model(cfg, self.ds.shape, self.ds.num_classes)
        # beside every time in the record (times compare only so), in the precision the run trains in
        self.matmul_flops = matmul_flops(self.device, self.precision)
        torch.manual_seed(cfg.seed)  # after the peak's (cached) random matrices: every run of a process draws alike
        self.model, self.matched = build(plan.config), plan.matched and dict(plan.matched)
        if self.dist.active and self.device.type == "cuda":  # batch statistics over the global batch (GPU only)
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=memory_format(self.device))
        self.params, self.params_frozen = count_params(self.model)
        self.macs = count_macs(self.model, self.ds.shape)
        if self.dist.rank:  # dropout and drop-path draws differ per rank; rank 0 keeps a single process's stream
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        seed_host_rngs(cfg.seed + 1_000_003 * self.dist.rank)
        self.regularize = BatchRegularizer(cfg, self.ds.num_classes, self.device)
        self.ema = make_ema(cfg, self.model)
        if self.matched:
            self.matched["value"] = self.params if cfg.match == "params" else self.macs
        train_idx, val_idx = split(self.ds.train_y, data.val_size(cfg.dataset, cfg.val_size), cfg.train_size, cfg.seed)
        mean, std = (t.to(self.device) for t in self.ds.mean_std())
        side = self.ds.shape[1]
        perm = pixel_permutation(cfg.shuffle, side, side, self.model.cfg.patch_size, cfg.seed)
        perm = None if perm is None else perm.to(self.device)
        pad = side // 16 * 2 if cfg.augment else 0  # 28 px: 2, 32 px: 4
        shard = dict(device=self.device, seed=cfg.seed, rank=self.dist.rank, world=self.dist.world)
        unit, size = cfg.budget
        self.train_batches = self.ds.batches("train", train_idx, batch_size, Transform(mean, std, perm, pad, cfg.augment),
                                             train=True, rollover=unit == "steps", **shard)
        evaluation = dict(batch_size=self.ds.eval_batch_size(batch_size), transform=Transform(mean, std, perm), **shard)
        self.val_batches = self.ds.batches("train", val_idx, **evaluation) if len(val_idx) else None
        self.test_batches = self.ds.batches("test", torch.arange(len(self.ds.test_y)), **evaluation)
        self.train_size, self.val_size, self.test_size = len(train_idx), len(val_idx), len(self.ds.test_y)
        if len(self.train_batches) == 0:
            raise UsageError(f"--train-size {len(train_idx)} is smaller than one batch ({cfg.batch_size}); "
                             f"lower --batch-size")
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = size if unit == "steps" else size * self.steps_per_epoch
        every = cfg.eval_every or (1 if unit == "epochs" else max(1, self.total_steps // 10))
        period = every * (self.steps_per_epoch if unit == "epochs" else 1)
        self.eval_points = sorted({*range(period, self.total_steps, period), self.total_steps})
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=self.total_steps, lr_min=cfg.lr * 0.01,
                                           warmup_t=round(cfg.warmup * self.total_steps),
                                           warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
        self.forward = torch.compile(self.model) if cfg.compile else self.model  # evaluation: each rank its shard
        train_forward = self.forward
        if self.dist.active:  # backward averages the gradients over ranks, so a step is the global batch's step
            ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            train_forward = torch.compile(ddp) if cfg.compile else ddp
        self.step = Step(train_forward, self.optimizer, self.device, self.precision, self.regularize.label_smoothing)
        self.history: list[dict] = []
        self.saved = 0  # entries of the history in the last saved checkpoint
        self.done_steps = 0
        self.train_time = 0.0
        self.train_images = 0
        self.infer_img_s = None
        self.peak_mem_mb = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- state ------------------------------------------------------------------------------------------------
    def rng_state(self) -> dict:
        return {"torch_rng": torch.get_rng_state(), "augment_rng": self.train_batches.generator.get_state(),
                **host_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def state(self) -> dict:
        """The checkpoint. Under torchrun every rank calls it (it gathers each rank's random state); rank 0 saves."""
        rng = self.rng_state()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history, "steps": self.done_steps,
                "ema": self.ema and self.ema.state_dict(), "precision": self.precision,
                "train_time": self.train_time,
                "train_images": self.train_images, **rng,
                "rank_rng": distributed.gather(rng) if self.dist.active else None}

    def load_state(self, state: dict, path: Path) -> None:
        """Continues from the checkpoint `path`, whose structure runs.read_checkpoint checked; one that does not fit
        this run (another model's weights, optimizer or schedule) is bad input that names the file."""
        # a checkpoint from before the option: where it trained (its CUDA random state) says which precision
        trained_in = state.get("precision") or precision_before_option("cuda" if state.get("cuda_rng") is not None
                                                                         else "cpu")
        if trained_in != self.precision:
            raise UsageError(f"the checkpoint was trained in {trained_in} and this process would go on in "
                             f"{self.precision}: resume with --precision {trained_in}")
        if not 0 <= state["steps"] <= self.total_steps:
            raise unusable_checkpoint(path, f"it stopped at step {state['steps']}, and this run has "
                                            f"{self.total_steps} steps")
        # the schedule is a function of the config: a checkpoint of this config holds the same fields
        if type_map(state["scheduler"]) != type_map(self.scheduler.state_dict()):
            raise unusable_checkpoint(path, "its 'scheduler' is not the state of this run's learning-rate schedule")
        try:
            self.restore(state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:  # what load_state_dict & co raise
            raise unusable_checkpoint(path, f"it does not fit this run ({one_line(e)})") from None
        self.saved = len(self.history)

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.history, self.done_steps = state["history"], state["steps"]
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        ranks = state.get("rank_rng") or [state]
        if self.dist.rank < len(ranks):  # a rank the checkpoint did not have keeps its fresh seed
            rng = ranks[self.dist.rank]
            torch.set_rng_state(rng["torch_rng"])
            self.train_batches.generator.set_state(rng["augment_rng"])
            set_host_rng_state(rng)
            if rng.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda_rng"], self.device)

    # -- loops ------------------------------------------------------------------------------------------------
    def where(self, step: int) -> str:
        """A step as the budget counts it: "epoch 2" (the epoch that step ends) or "step 200"."""
        if self.cfg.steps is not None:
            return f"step {step}"
        return f"epoch {-(-step // self.steps_per_epoch)}"

    def train_until(self, stop_step: int) -> float:
        """Trains from the current step to `stop_step`; returns the mean training loss over those steps."""
        self.model.train()
        first = self.done_steps
        total, count, last_finite = 0.0, 0, None
        bar = tqdm(self.train_batches.stream(first, stop_step), total=stop_step - first,
                   desc=f"{self.where(stop_step)}/{self.cfg.budget[1]}", leave=False,
                   disable=self.quiet or not sys.stderr.isatty(), file=sys.stderr)
        stop = timer(self.device)
        for step, (x, y) in enumerate(bar, start=first):
            loss = self.step.loss(*self.regularize(x, y))
            value = distributed.mean(loss.detach()).item()  # the global batch's loss: all ranks stop on divergence
            if not math.isfinite(value):
                within = step % self.steps_per_epoch + 1 if self.cfg.steps is None else step + 1
                of = self.steps_per_epoch if self.cfg.steps is None else self.total_steps
                raise Diverged(f"diverged: loss is {value} at {self.where(step + 1)}, step {within}/{of} "
                                f"(last finite loss: {last_finite}); lower --lr or check the data")
            last_finite = value
            self.step.update(loss)
            self.done_steps = step + 1
            if self.ema:
                self.ema.update(self.model, step=self.done_steps)
            self.scheduler.step_update(self.done_steps)
            total, count = total + value * len(y), count + len(y)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        self.train_time += stop()
        self.train_images += count * self.dist.world
        return total / count

    @torch.inference_mode()
    def evaluate(self, batches) -> tuple[float, float, float]:
        """Accuracy, mean loss and images/s on a held-out split; under torchrun each rank takes its shard and the
        sums are added."""
        forward = self.ema.module if self.ema else self.forward
        forward.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, summed loss, images
        stop = timer(self.device)
        for x, y in batches.epoch(0):
            with autocast(self.device, self.precision):
                logits = forward(x.contiguous(memory_format=self.step.memory_format))
            sums += torch.stack([(logits.argmax(1) == y).sum().double(),
                                 F.cross_entropy(logits.float(), y, reduction="sum").double(),
                                 torch.tensor(len(y), dtype=torch.float64, device=self.device)])
        correct, loss, n = distributed.total(sums).tolist()
        return correct / n, loss / n, n / stop()

    # -- the run ----------------------------------------------------------------------------------------------
    def record(self, run_dir: Path, status: str, error: str | None = None) -> dict:
        cfg, last = self.cfg, (self.history[-1] if self.history else {})
        return {
            "spatial": cfg.spatial, "channel": cfg.channel, "preset": cfg.preset, "dataset": cfg.dataset,
            "train_size": self.train_size, "val_size": self.val_size, "test_size": self.test_size, "seed": cfg.seed,
            "budget": cfg.budget[0], "epochs": round(self.total_steps / self.epoch_steps, 3) if cfg.steps else
            cfg.budget[1], "steps": self.total_steps, "images_seen": self.total_steps * cfg.batch_size,
            "shuffle": cfg.shuffle, "params": self.params, "params_frozen": self.params_frozen,
            "macs": self.macs, "matched": self.matched, "val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"),
            "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
            "train_time_s": round(self.train_time, 3),
            "train_img_s": round(self.train_images / self.train_time, 1) if self.train_time else None,
            "infer_img_s": round(self.infer_img_s, 1) if self.infer_img_s else None,
            "device": str(self.device), "precision": self.precision, "world_size": self.dist.world,
            "threads": torch.get_num_threads(),
            "matmul_flops": round(self.matmul_flops), "matmul_flops_warm": True, "history": self.history,
            **({"peak_mem_mb": self.peak_mem_mb} if self.device.type == "cuda" else {}),
            "config": {**dataclasses.asdict(cfg), "model": dataclasses.asdict(self.model.cfg)},
            "config_key": cfg.key(), "status": status, "error": error, "run_id": run_dir.name,
            "run_dir": str(run_dir), "version": __version__, "git_commit": git_commit(),
        }

    @property
    def epoch_steps(self) -> float:
        """Steps per pass over the training subset (a fraction with a budget in steps, whose epochs roll over)."""
        return self.train_size / self.cfg.batch_size if self.cfg.steps else self.steps_per_epoch

    def run(self, run_dir: Path, state: dict | None = None, on_eval=None) -> dict:
        """Trains from `state` (a checkpoint of run_dir, on the CPU; None: from scratch) to the last step,
        evaluating, checkpointing and writing the record at every evaluation point.

        `on_eval(point, record)` is called after each evaluation on rank 0, with point = the epoch (a budget in
        epochs) or the step (in steps): studies report to optuna's pruners there. Under torchrun every rank calls
        this with rank 0's run_dir and state; only rank 0 writes files there.
        """
        if state is not None:  # before anything is written: a checkpoint that does not fit leaves the folder as it is
            self.load_state(state, run_dir / "checkpoint.pt")
            self.log(f"resuming {run_dir} after {self.where(self.done_steps)}")
        points = [p for p in self.eval_points if p > self.done_steps]
        if not points and self.dist.main:  # killed between its last checkpoint and record: it had finished
            write_json(run_dir / "record.json", self.record(run_dir, "done"))
        for point in points:
            with self.ends_record(run_dir):
                doc, epoch = self.advance(run_dir, point)
            if on_eval and self.dist.main:
                # the caller's exceptions (a pruned or lost study trial) stop a run that is saved and can go on: its
                # record stays as saved (the retry of a lost trial may be writing it by now); a Ctrl-C still ends it
                with self.ends_record(run_dir, (KeyboardInterrupt, SystemExit)):
                    on_eval(point if self.cfg.steps else epoch, doc)
        return self.record(run_dir, "done")

    def advance(self, run_dir: Path, point: int) -> tuple[dict, float]:
        """Trains to `point`, evaluates, saves the checkpoint and the record; returns the record and the epoch."""
        t0 = time.perf_counter()
        previous = self.where(self.done_steps)
        train_loss = self.train_until(point)
        val_acc, val_loss, _ = self.evaluate(self.val_batches) if self.val_batches else (None, None, None)
        looks_at_test = self.cfg.test_each_eval or not self.val_batches or point == self.total_steps
        test_acc, test_loss, rate = self.evaluate(self.test_batches) if looks_at_test else (None, None, None)
        self.infer_img_s = rate or self.infer_img_s
        if self.device.type == "cuda":  # the allocator's peak on the busiest GPU
            peak = distributed.maximum(torch.cuda.max_memory_allocated(self.device) / 2**20, self.device)
            self.peak_mem_mb = round(peak, 1)
        epoch = point // self.steps_per_epoch if self.cfg.steps is None else round(point / self.epoch_steps, 3)
        self.history.append({"epoch": epoch, "step": point, "train_loss": round(train_loss, 5),
                             "val_acc": val_acc, "val_loss": val_loss and round(val_loss, 5),
                             "test_acc": test_acc, "test_loss": test_loss and round(test_loss, 5),
                             "lr": self.optimizer.param_groups[0]["lr"],
                             "time_s": round(time.perf_counter() - t0, 2)})
        doc = self.record(run_dir, "running" if point < self.total_steps else "done")
        state, error = self.state(), None
        if self.dist.main:
            try:  # atomic: a kill or a full disk mid-write leaves the previous checkpoint and record intact
                save_torch(run_dir / "checkpoint.pt", state)
                self.saved = len(self.history)
                write_json(run_dir / "record.json", doc)
            except OSError as e:
                error = (f"cannot save {self.where(point)} in {run_dir}: {e.strerror or e}; the files of "
                         f"{previous} are intact, free space and rerun with --resume")
        error = distributed.broadcast(error)  # all ranks stop when rank 0 could not save
        if error:
            raise RunFailed(error)
        self.log(f"{self.where(point)}/{self.cfg.budget[1]}  train_loss {train_loss:.4f}  "
                 + (f"val_acc {val_acc:.4f}  " if val_acc is not None else "")
                 + (f"test_acc {test_acc:.4f}  " if test_acc is not None else "")
                 + f"({self.history[-1]['time_s']:.0f} s)")
        return doc, epoch

    @contextlib.contextmanager
    def ends_record(self, run_dir: Path, stops=BaseException):
        """A run stopped by one of `stops` says so in its record (not "running"), with the history of its last
        checkpoint, which --resume continues: "interrupted" by Ctrl-C or a signal, else "failed", and why."""
        try:
            yield
        except stops as e:
            if self.dist.main:
                self.history = self.history[:self.saved]
                status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
                try:
                    write_json(run_dir / "record.json", self.record(run_dir, status, stop_reason(e)))
                except OSError:
                    pass  # the disk is what failed; the error message already says where things stand
            raise


def stop_reason(e: BaseException) -> str:
    """What a run record's `error` says about the exception that stopped the run."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(e, SystemExit):
        return f"stopped by a signal (exit {e.code})"
    return str(e) if isinstance(e, (ConfigError, RunFailed)) else f"{type(e).__name__}: {e}"


def unusable_checkpoint(path: Path, why: str) -> UsageError:
    """The one message for a checkpoint that cannot be continued: the file, what is wrong, and what to do."""
    return UsageError(f"--resume: cannot continue from {path}: {why}; nothing was changed: move {path.parent} "
                      f"away to start this run anew")


def one_line(e: BaseException) -> str:
    """An exception's first problem on one line: load_state_dict lists them one a line under a header."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{type(e).__name__}: {lines[0].rstrip('.')[:200] if lines else ''}{more}"


def type_map(state: dict) -> dict:
    return {key: type(value) for key, value in state.items()}


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict checks the parameter counts only: a moment of another shape would fail mid-run."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"optimizer state {name!r} of shape {tuple(value.shape)} for a parameter of "
                                     f"shape {tuple(param.shape)}")


def build(model_cfg: blocks.MetaFormerConfig) -> blocks.MetaFormer:
    """The real model; one that does not fit in memory after all is bad input (exit 2), not a crash."""
    try:
        return blocks.MetaFormer(model_cfg)
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise UsageError(f"cannot allocate the model: {str(e).splitlines()[0]}; lower img_size, the width or the "
                         f"depth") from None
