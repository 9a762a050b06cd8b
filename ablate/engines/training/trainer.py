"""The training loop: one model, one dataset, AdamW + warm-up/cosine, evaluation every k epochs, a checkpoint
and the run record after every epoch."""
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

from ... import __version__
from ...foundations import distributed
from ...foundations.config import RunConfig
from ...foundations.errors import RunFailed, UsageError
from ...foundations.io import save_torch, write_json
from ...foundations.runtime import autocast, git_commit, pick_device, timer, usable_cores
from .. import data
from ..cost import count_macs, count_params
from ..data.subsets import nested_subset
from ..data.transforms import Transform, pixel_permutation
from .plan import ModelPlan, plan_model
from .step import Step, make_optimizer, memory_format


class Trainer:
    def __init__(self, cfg: RunConfig, plan: ModelPlan | None, quiet: bool = False, log=None):
        """`plan`: plan.check(cfg)'s model plan, or None where the dataset's shape comes from its files."""
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
        plan = plan or plan_model(cfg, self.ds.shape, self.ds.num_classes)
        torch.manual_seed(cfg.seed)
        self.model, self.matched = build(plan.config), plan.matched and dict(plan.matched)
        if self.dist.active and self.device.type == "cuda":  # batch statistics over the global batch (GPU only)
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=memory_format(self.device))
        self.params, self.params_frozen = count_params(self.model)
        self.macs = count_macs(self.model, self.ds.shape)
        if self.dist.rank:  # dropout and drop-path draws differ per rank; rank 0 keeps a single process's stream
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        if self.matched:
            self.matched["value"] = self.params if cfg.match == "params" else self.macs
        subset = nested_subset(self.ds.train_y, cfg.train_size, cfg.seed)
        mean, std = (t.to(self.device) for t in self.ds.mean_std())
        side = self.ds.shape[1]
        perm = pixel_permutation(cfg.shuffle, side, side, self.model.cfg.patch_size, cfg.seed)
        perm = None if perm is None else perm.to(self.device)
        pad = side // 16 * 2 if cfg.augment else 0  # 28 px: 2, 32 px: 4
        shard = dict(device=self.device, seed=cfg.seed, rank=self.dist.rank, world=self.dist.world)
        self.train_batches = self.ds.batches("train", subset, batch_size, Transform(mean, std, perm, pad, cfg.augment),
                                             train=True, **shard)
        self.test_batches = self.ds.batches("test", torch.arange(len(self.ds.test_y)),
                                            self.ds.eval_batch_size(batch_size), Transform(mean, std, perm), **shard)
        self.train_size, self.test_size = len(subset), len(self.ds.test_y)
        if len(self.train_batches) == 0:
            raise UsageError(f"--train-size {len(subset)} is smaller than one batch ({cfg.batch_size}); "
                             f"lower --batch-size")
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        steps = cfg.epochs * len(self.train_batches)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=steps, lr_min=cfg.lr * 0.01,
                                           warmup_t=int(cfg.warmup_epochs * len(self.train_batches)),
                                           warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
        self.forward = torch.compile(self.model) if cfg.compile else self.model  # evaluation: each rank its shard
        train_forward = self.forward
        if self.dist.active:  # backward averages the gradients over ranks, so a step is the global batch's step
            ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            train_forward = torch.compile(ddp) if cfg.compile else ddp
        self.step = Step(train_forward, self.optimizer, self.device, cfg.label_smoothing)
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
            loss = self.step.loss(x, y)
            value = distributed.mean(loss.detach()).item()  # the global batch's loss: all ranks stop on divergence
            if not math.isfinite(value):
                raise RunFailed(f"diverged: loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps} "
                                f"(last finite loss: {last_finite}); lower --lr or check the data")
            last_finite = value
            self.step.update(loss)
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
            with autocast(self.device):
                logits = self.forward(x.contiguous(memory_format=self.step.memory_format))
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

    def run(self, run_dir: Path, state: dict | None = None, on_epoch=None) -> dict:
        """Trains from `state` (a checkpoint of run_dir, on the CPU; None: from scratch) to the last epoch, writing
        checkpoint and record each epoch.

        `on_epoch(epoch, record)` is called after each epoch (studies report to optuna pruners there), on rank 0.
        Under torchrun every rank calls this with rank 0's run_dir and state; only rank 0 writes files there.
        """
        ckpt = run_dir / "checkpoint.pt"
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


def build(model_cfg: blocks.MetaFormerConfig) -> blocks.MetaFormer:
    """The real model; one that does not fit in memory after all is bad input (exit 2), not a crash."""
    try:
        return blocks.MetaFormer(model_cfg)
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise UsageError(f"cannot allocate the model: {str(e).splitlines()[0]}; lower img_size, the width or the "
                         f"depth") from None
