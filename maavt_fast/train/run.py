"""What the `train` and `eval` commands do, end to end: build data and model, train, report.

A report (`<out>/report_<split>/`) holds metrics JSON, confusion CSV/PNG and an attention-map
gallery (`attention/index.html`); a training run also writes `config.json`, `log.jsonl`,
`curves.png` and `checkpoints/{latest,best}.pt` under `train.out_dir`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from maavt_fast.config import Config
from maavt_fast.train.checkpoint import checkpoint_config, is_official, load_weights, read_checkpoint, supplies_vit
from maavt_fast.train.distributed import DistInfo, all_reduce_sum, process_group
from maavt_fast.train.evaluate import EvalResult, evaluate, write_report
from maavt_fast.train.interrupt import StopSignals
from maavt_fast.train.logging_utils import print_status
from maavt_fast.train.loop import (MakeLoader, Trainer, TrainResult, checkpoint_paths, peak_memory_mb,
                                   seed_everything)
from maavt_fast.train.preflight import preflight
from maavt_fast.train.run_folder import RunFolder, RunFolderError, check_new_run
from maavt_fast.train.step import choose_precision
from maavt_fast.train.visualize import attention_gallery, gallery_batch


@dataclass
class Report:
    split: str
    result: EvalResult
    paths: dict[str, Path]  # metrics, confusion_csv, confusion_png, attention (index.html)


def write_config(cfg: Config, out_dir: str | Path, name: str = "config.json") -> Path:
    """The resolved config as JSON next to the outputs."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path


def loader_factory(cfg: Config, dist: DistInfo) -> MakeLoader:
    """`make_loader(split, epoch=0, start_batch=0)` over `cfg.data`, this rank's share of the global batch."""
    from maavt_fast.data import build_loader

    per_rank = max(cfg.train.batch_size // dist.world_size, 1)
    device_id = dist.device.index if dist.device.type == "cuda" else None

    def make(split: str, epoch: int = 0, start_batch: int = 0):
        return build_loader(cfg.data, split, cfg.model.img_size, per_rank, cfg.train.seed, rank=dist.rank,
                            world_size=dist.world_size, epoch=epoch, start_batch=start_batch, device_id=device_id)

    return make


def build_model(cfg: Config, vit_weights_follow: bool = False):
    """A fresh `MAAVT` for `cfg.model`, initialised from `cfg.train.seed` (identical on every rank);
    `vit_weights_follow`: a checkpoint supplies the frozen ViT next."""
    from maavt_fast.model import MAAVT

    seed_everything(cfg.train.seed)
    return MAAVT(cfg.model, vit_weights_follow)


def report(cfg: Config, dist: DistInfo, model, make_loader: MakeLoader, split: str, out_dir: str | Path,
           n_attention: int = 8) -> Report:
    """Evaluate the bare `model` on `split` and write the report files (rank 0)."""
    from maavt_fast.data import DataError, class_names

    out_dir = Path(out_dir)
    precision = choose_precision(cfg.train.precision, dist.device)
    loader = make_loader(split)
    if len(loader) == 0:
        raise DataError(cfg.data.root or "<data.root unset>", f"the {split!r} split is empty")
    started = time.perf_counter()
    result = evaluate(model.to(dist.device), loader, dist.device, precision, cfg.model.num_classes,
                      progress_label=f"{split} evaluation" if dist.is_main else None)
    seconds = time.perf_counter() - started
    paths: dict[str, Path] = {}
    if dist.is_main:
        names = class_names(cfg.data)
        names += [f"class_{k}" for k in range(len(names), cfg.model.num_classes)]  # classes absent from the data
        paths = write_report(result, out_dir, split, names)
        if n_attention > 0:
            batch = gallery_batch(loader, n_attention).to(dist.device)  # one clip per class where it can
            paths["attention"] = attention_gallery(model, batch, out_dir / "attention", names, cfg.data.image_mean,
                                                   cfg.data.image_std, limit=n_attention,
                                                   autocast=precision.autocast(dist.device), audio_cfg=cfg.data.audio)
        m = result.metrics
        print_status(f"{split}: accuracy {m['total_acc']:.4f} (bg-aware {m['pred_acc']:.4f}) on {m['samples']} "
                     f"samples, loss {m['loss']:.4f}; {seconds:.1f} s ({m['samples'] / seconds:.1f} samples/s, "
                     f"{precision.name}), peak memory {peak_memory_mb(dist.device):.0f} MB")
    return Report(split, result, paths)


def run_train(cfg: Config, resume: str | Path | None = None, test_split: str | None = "test",
              overwrite: bool = False, adapt_num_classes: bool = False) -> tuple[TrainResult, Report | None]:
    """Train per `cfg` (single process or under torchrun), then evaluate the best checkpoint on `test_split`.

    Everything that can be checked before step 1 is (preflight.py); rank 0 holds the run folder for the
    run (run_folder.py); a fresh run into a folder holding one needs `overwrite`; SIGTERM/SIGINT stop the
    run after the current step with `latest` written (interrupt.py)."""
    if resume == "auto":  # latest.pt if there is one, else a fresh run
        latest = checkpoint_paths(cfg.train.out_dir)[0]
        resume = latest if latest.is_file() else None
    with process_group(cfg.train.device, cfg.train.dist_timeout_s) as dist:
        cfg = preflight(with_checkpoint_classes(cfg, resume), test_split, adapt_num_classes, dist.is_main)
        with ExitStack() as folder:
            failure = None
            if dist.is_main:
                try:
                    folder.enter_context(RunFolder(cfg.train.out_dir))
                    if resume is None:
                        check_new_run(cfg.train.out_dir, overwrite)
                except RunFolderError as e:
                    failure = e
            if int(all_reduce_sum(torch.tensor([int(failure is not None)], device=dist.device)).item()):
                raise failure or RunFolderError(f"rank 0 could not take train.out_dir {cfg.train.out_dir}")
            return _fit_and_report(cfg, dist, resume, test_split)


def with_checkpoint_classes(cfg: Config, path: str | Path | None, ckpt: dict | None = None) -> Config:
    """`cfg` with the class names stored in our checkpoint at `path` when `cfg` names none, so label k means
    the class it meant in training whatever order this copy of the data sorts in. `ckpt`: the file's
    contents when the caller has read it already (else it is read here)."""
    if cfg.data.classes or path is None or not Path(path).is_file():
        return cfg
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    saved = () if is_official(ckpt) else checkpoint_config(ckpt, path).data.classes
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes=saved)) if saved else cfg


def _fit_and_report(cfg: Config, dist: DistInfo, resume: str | Path | None,
                    test_split: str | None) -> tuple[TrainResult, Report | None]:
    """The body of `run_train`; the trainer (and its DDP wrapper) dies with this frame, before the group."""
    out_dir = Path(cfg.train.out_dir)
    model = build_model(cfg)
    make_loader = loader_factory(cfg, dist)
    trainer = Trainer(cfg, dist, model, make_loader)
    if resume is not None:
        trainer.resume_from(resume)
    if dist.is_main:  # only now: a refused command changes nothing on disk
        write_config(cfg, out_dir)
    with StopSignals(dist.device, dist.distributed, cfg.train.log_every) as stop:
        result = trainer.fit(stop)
    final = None
    if test_split is not None:
        chosen = result.best or result.latest
        load_weights(read_checkpoint(chosen), model, chosen)
        print_status(f"evaluating {chosen} on the {test_split} split", dist.is_main)
        final = report(cfg, dist, model, make_loader, test_split, out_dir / f"report_{test_split}")
    return result, final


def run_eval(cfg: Config, checkpoint: str | Path | None, split: str, out_dir: str | Path,
             n_attention: int = 8) -> Report:
    """Evaluate a checkpoint (ours or official; None = the untrained model) on `split`; write the report."""
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None  # read once: classes, ViT, weights
    cfg = with_checkpoint_classes(cfg, checkpoint, ckpt)
    with process_group(cfg.train.device, cfg.train.dist_timeout_s) as dist, torch.no_grad():
        model = build_model(cfg, vit_weights_follow=supplies_vit(ckpt))
        if ckpt is not None:
            load_weights(ckpt, model, checkpoint)
        if dist.is_main:
            write_config(cfg, out_dir)
        return report(cfg, dist, model, loader_factory(cfg, dist), split, out_dir, n_attention)
