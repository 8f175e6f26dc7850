"""The training loop: steps, logging, validation, `best`/`latest` checkpoints and exact resume.

The loop owns no data or model construction: it receives the bare `MAAVT` and a `make_loader(split,
epoch, start_batch)` callable, so tests can drive it with small stand-ins. Data order and
augmentation depend only on (seed, epoch, index) and the lr only on the step, so a run resumed
from a checkpoint taken after batch k of epoch e continues with batch k of epoch e exactly as the
uninterrupted run would.
"""
from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from maavt_fast._extras import require_found

# Checked before the imports below, so a missing package names this extra: the backbone's timm, the curves' matplotlib.
require_found("train", __name__, ("timm", "matplotlib"))

from maavt_fast.config import Config, ConfigError
from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.train.accumulate import AccumulatingTrainStep
from maavt_fast.train.checkpoint import LoopState, read_checkpoint, restore_training, save_checkpoint
from maavt_fast.train.distributed import DistInfo, all_reduce_sum, barrier
from maavt_fast.train.early_stop import patience_spent, record_validation, stop_message
from maavt_fast.train.evaluate import EvalResult, evaluate
from maavt_fast.train.interrupt import NoStop, RunInterrupted, StopSignals
from maavt_fast.train.logging_utils import Progress, RunLogger, format_duration, print_status
from maavt_fast.train.metrics import summarize
from maavt_fast.train.schedule import lr_at, set_lr, total_steps
from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision
from maavt_fast.train.tensorboard import NoBoard, open_board
from maavt_fast.train.visualize import plot_curves

MakeLoader = Callable[..., object]  # (split, epoch=0, start_batch=0) -> re-iterable of batches with len()


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `step` is the first offending optimizer step (1-based)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"the training loss is {value} at step {step}: training stopped. Lower train.lr, use "
                         f"train.precision=fp32, or check the inputs of that step")
        self.step = step


@dataclass
class TrainResult:
    loop: LoopState
    out_dir: Path
    latest: Path
    best: Path | None  # None when there was no validation data
    val: EvalResult | None  # the last validation
    train_seconds: float
    samples_per_s: float


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python; every rank uses the same seed so replicas start identical."""
    random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """(latest, best) checkpoint paths of a run directory."""
    d = Path(out_dir) / "checkpoints"
    return d / "latest.pt", d / "best.pt"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepResultWindow:
    """Step results since the last flush, kept on the device (no host sync per step)."""

    def __init__(self):
        self.results: list[dict[str, torch.Tensor]] = []
        self.first_step = 0

    def add(self, step: int, result: dict[str, torch.Tensor]) -> None:
        if not self.results:
            self.first_step = step
        self.results.append(result)

    def reduce(self, world_size: int) -> dict[str, float] | None:
        """Mean losses over the window and ranks plus accuracy ratios; raises on a non-finite loss."""
        if not self.results:
            return None
        names = [k for k in self.results[0] if k != "counts"]
        losses = torch.stack([torch.stack([r[k] for k in names]) for r in self.results]).double()  # (steps, k)
        counts = torch.stack([r["counts"] for r in self.results]).sum(dim=0)
        packed = all_reduce_sum(torch.cat([losses.flatten(), counts])).cpu()
        losses = packed[:losses.numel()].view_as(losses) / world_size
        bad = ~torch.isfinite(losses[:, 0])
        if bad.any():
            i = int(bad.nonzero()[0])
            raise NonFiniteLossError(self.first_step + i, float(losses[i, 0]))
        out = {k: float(v) for k, v in zip(names, losses.mean(dim=0))}
        out.update(summarize(packed[losses.numel():]))
        self.results = []
        return out


class Trainer:
    """Trains the bare `model` as `cfg.train` says, on `dist`'s device and process group."""

    def __init__(self, cfg: Config, dist: DistInfo, model: torch.nn.Module, make_loader: MakeLoader):
        tc = cfg.train
        if tc.batch_size % (dist.world_size * tc.accum_steps):
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the world size "
                              f"{dist.world_size} x train.accum_steps={tc.accum_steps}")
        if cfg.data.skip_bad and dist.world_size > 1:  # a skipped sample would give ranks unequal batches
            raise ConfigError("data.skip_bad=true needs a single process: under torchrun a skipped sample leaves the "
                              "ranks with unequal batches (the contrastive all-gather and DDP need equal ones)")
        self.cfg, self.dist, self.make_loader = cfg, dist, make_loader
        self.out_dir = Path(tc.out_dir)
        self.latest_path, self.best_path = checkpoint_paths(self.out_dir)
        self.model = model.to(dist.device)
        self.precision = choose_precision(tc.precision, dist.device)
        self.optimizer = build_optimizer(self.model, tc.lr, tc.weight_decay, dist.device, tc.optimizer)
        self.loop = LoopState()
        self.logger = RunLogger(self.out_dir, enabled=dist.is_main)
        self.steps_per_epoch = len(make_loader("train", 0, 0))
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the train split has fewer samples than one batch per rank "
                              f"(train.batch_size={tc.batch_size}, {dist.world_size} rank(s))")
        self.total_steps = total_steps(tc, self.steps_per_epoch)
        self.val_loader = make_loader("val", 0, 0)
        self.last_val: EvalResult | None = None
        self.skipped = {"train": 0, "val": 0}  # samples skipped as bad (data.skip_bad) in this process
        self._skipped_seen: dict[int, int] = {}
        self.board = NoBoard()

    def resume_from(self, path: str | Path) -> None:
        """Load weights, optimizer, RNG and loop position (call before `fit`)."""
        self.loop = restore_training(read_checkpoint(path), self.model, self.optimizer, path, self.cfg)
        print_status(f"resumed from {path} at step {self.loop.step} (epoch {self.loop.epoch + 1}, "
                     f"batch {self.loop.batch_in_epoch})", self.dist.is_main)

    def _network(self) -> torch.nn.Module:
        if not self.dist.distributed:
            return self.model
        ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=False)

    def fit(self, stop: StopSignals | NoStop = NoStop()) -> TrainResult:
        """Train to the end; on a signal `stop` reports, save `latest` after the step and raise RunInterrupted.
        The TensorBoard writer (rank 0, `train.tensorboard`) is closed however the run ends."""
        self.board = open_board(self.cfg, self.dist.device, self.dist.is_main, self.loop.step)
        try:
            return self._fit(stop)
        finally:
            self.board.close()

    def _fit(self, stop: StopSignals | NoStop) -> TrainResult:
        tc, dist, loop = self.cfg.train, self.dist, self.loop
        loss_fn = MAAVTLoss(self.cfg.model, torch.distributed.group.WORLD if dist.distributed else None)
        step_kwargs = dict(grad_mod_alpha=tc.grad_mod_alpha if tc.grad_mod else None, compile=tc.compile,
                           seed=tc.seed, clip_grad_norm=tc.clip_grad_norm, loss_fn=loss_fn)
        if tc.accum_steps == 1:
            step_fn = TrainStep(self._network(), self.model, self.optimizer, self.precision, dist.device, **step_kwargs)
        else:
            step_fn = AccumulatingTrainStep(self._network(), self.model, self.optimizer, self.precision, dist.device,
                                            tc.accum_steps, **step_kwargs)
        if loop.step == 0:
            self.logger.reset()  # a fresh run in an existing folder starts a new log; a resumed one appends
        else:
            self.logger.drop_after(loop.step)  # records logged after the checkpoint are logged again
        n_train = sum(p.numel() for _, p in self.model.named_trainable_parameters())
        print_status(f"training {n_train:,} parameters on {dist.world_size} x {dist.device} | "
                     f"{self.precision.reason} | compile={'on' if tc.compile else 'off'} | {self.steps_per_epoch} "
                     f"steps/epoch, {self.total_steps} steps, global batch {tc.batch_size}"
                     + (f" in {tc.accum_steps} micro-batches" if tc.accum_steps > 1 else "") + f" | {self.board.status}",
                     dist.is_main)
        self.logger.log("start", loop.step, precision=self.precision.name, compile=tc.compile,
                        world_size=dist.world_size, device=str(dist.device), trainable_params=n_train,
                        steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        progress = Progress(self.total_steps, tc.batch_size, loop.step)
        window, started, first_step = StepResultWindow(), time.perf_counter(), loop.step
        lr = lr_at(loop.step, tc, self.steps_per_epoch)
        while loop.step < self.total_steps and loop.epoch < tc.epochs and not patience_spent(tc.patience, loop):
            train_batches = self.make_loader("train", loop.epoch, loop.batch_in_epoch)
            for batch in train_batches:
                batch = batch.to(dist.device)
                lr = lr_at(loop.step, tc, self.steps_per_epoch)
                set_lr(self.optimizer, lr)
                result = step_fn(batch.audio, batch.image, batch.label, loop.step)
                loop.step += 1
                progress.tick(loop.step)
                loop.batch_in_epoch = train_batches.position  # wholly skipped (unreadable) batches count too
                window.add(loop.step, result)
                if loop.step % tc.log_every == 0 or loop.step % tc.ckpt_every == 0:
                    self._log_train(window.reduce(dist.world_size), progress, lr)
                if loop.step % tc.ckpt_every == 0:
                    self._save(self.latest_path, progress)
                signum = stop.requested(loop.step)
                if signum:
                    self._log_train(window.reduce(dist.world_size), progress, lr)
                    if loop.step % tc.ckpt_every:  # not saved just above
                        self._save(self.latest_path, progress)
                    self.logger.close()
                    raise RunInterrupted(signum, loop.step, self.latest_path)
                if loop.step >= self.total_steps:
                    break
            else:  # the loader is exhausted: the epoch is complete (even if it skipped unreadable batches)
                loop.batch_in_epoch = self.steps_per_epoch
            self._count_skipped("train", train_batches)
            self._log_train(window.reduce(dist.world_size), progress, lr)
            if loop.batch_in_epoch >= self.steps_per_epoch:
                loop.epoch, loop.batch_in_epoch = loop.epoch + 1, 0
            finished = loop.step >= self.total_steps or loop.epoch >= tc.epochs
            if finished or (loop.batch_in_epoch == 0 and loop.epoch % tc.eval_every == 0):
                self._validate(progress)
            self._save(self.latest_path, progress)
        seconds = time.perf_counter() - started
        steps_run = loop.step - first_step
        rate = steps_run * tc.batch_size / seconds if seconds > 0 else float("nan")
        mem = peak_memory_mb(dist.device)
        skipped = "".join(f", {n} bad {split} samples skipped" for split, n in self.skipped.items() if n)
        print_status(f"done: {steps_run} steps in {format_duration(seconds)} ({rate:.1f} samples/s incl. validation), "
                     f"peak memory {mem:.0f} MB{skipped}", dist.is_main)
        self.logger.log("end", loop.step, seconds=seconds, samples_per_s=rate, peak_memory_mb=mem,
                        skipped=self.skipped)
        if dist.is_main:
            plot_curves(loop.history, self.out_dir / "curves.png")
        self.logger.close()
        best = self.best_path if math.isfinite(loop.best_acc) else None  # not a stale file of an earlier run
        return TrainResult(loop, self.out_dir, self.latest_path, best, self.last_val, seconds, rate)

    def _log_train(self, stats: dict[str, float] | None, progress: Progress, lr: float) -> None:
        if stats is None:
            return
        loop = self.loop
        speed = progress.update(loop.step)
        record = {"event": "train", "step": loop.step, "epoch": loop.epoch, "lr": lr, **stats, **speed}
        loop.history.append(record)
        self.logger.log("train", loop.step, **{k: v for k, v in record.items() if k not in ("event", "step")})
        norm = f" | grad norm {stats['grad_norm']:.3g}" if "grad_norm" in stats else ""
        print_status(progress.line(loop.step, loop.epoch, stats["loss"], stats["total_acc"], lr, speed) + norm,
                     self.dist.is_main)
        self.board.train(loop.step, stats, lr, speed["samples_per_s"])

    def _validate(self, progress: Progress) -> None:
        if len(self.val_loader) == 0:
            print_status("no validation data: `best` is not written; `latest` is the final model", self.dist.is_main)
            return
        progress.pause()
        started = time.perf_counter()
        result = evaluate(self.model, self.val_loader, self.dist.device, self.precision,
                          self.cfg.model.num_classes, self.cfg.train.eval_batches,
                          progress_label=f"val @ step {self.loop.step}" if self.dist.is_main else None)
        seconds = time.perf_counter() - started
        self._count_skipped("val", self.val_loader)
        self.last_val, loop, m = result, self.loop, result.metrics
        loop.history.append({"event": "val", "step": loop.step, "epoch": loop.epoch, **m})
        self.logger.log("val", loop.step, epoch=loop.epoch, seconds=seconds, **m)
        improved = math.isfinite(m["total_acc"]) and m["total_acc"] > loop.best_acc
        print_status(f"val @ step {loop.step}: loss {m['loss']:.4f} acc {m['total_acc']:.4f} (bg-aware "
                     f"{m['pred_acc']:.4f}) on {m['samples']} samples in {seconds:.1f} s"
                     + (" -> new best" if improved else ""), self.dist.is_main)
        self.board.validation(loop.step, m, result.confusion, loop.history, self.model, self.val_loader,
                              self.precision.autocast(self.dist.device))
        if improved:
            loop.best_acc = m["total_acc"]
            self._save(self.best_path, None)
        record_validation(loop, improved)
        if patience_spent(self.cfg.train.patience, loop):
            print_status(stop_message(self.cfg.train.patience, loop), self.dist.is_main)
            self.logger.log("early_stop", loop.step, validations_since_best=loop.validations_since_best)
        progress.resume()

    def _count_skipped(self, split: str, loader) -> None:
        """Add the samples `loader` skipped as bad since it was last counted (not the manifest rows its index
        left out, warned about when indexed) to the totals and log them."""
        dataset = getattr(loader, "dataset", None)
        seen = self._skipped_seen.get(id(loader), getattr(dataset, "bad_rows", 0))
        new = getattr(loader, "skipped", seen) - seen
        self._skipped_seen[id(loader)] = seen + new
        if new:
            self.skipped[split] += new
            self.logger.log("skipped", self.loop.step, split=split, samples=new, total=self.skipped[split])

    def _save(self, path: Path, progress: Progress | None) -> None:
        if progress is not None:
            progress.pause()
        if self.dist.is_main:
            save_checkpoint(path, model=self.model, cfg=self.cfg, optimizer=self.optimizer, loop=self.loop)
            self.logger.log("checkpoint", self.loop.step, path=str(path), epoch=self.loop.epoch,
                            batch_in_epoch=self.loop.batch_in_epoch)
        barrier()
        if progress is not None:
            progress.resume()
