"""Our checkpoint format: atomic writes, exact resume, and conversion of official checkpoints.

A checkpoint is a dict saved with `torch.save`:

    format          "maavt_fast.checkpoint", format_version 1, library_version
    config          the resolved `Config.to_dict()`
    model           trainable parameters only (`MAAVT.trainable_state_dict()`); the frozen ViT comes
                    from `config.model` (random init or `model.weights`)
    optimizer       optimizer state (None in a converted, weights-only checkpoint)
    loop            step, epoch, batch_in_epoch, best_acc, validations_since_best, history (see `LoopState`)
    rng             torch CPU (+ CUDA) and Python RNG states

`save_checkpoint` writes to a temporary file in the same directory, fsyncs it and `os.replace`s it
over the target, so a crash leaves either the old or the new file, never a torn one.
"""
from __future__ import annotations

import errno
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import maavt_fast
from maavt_fast.config import Config
from maavt_fast.safe_load import load_data_only

FORMAT = "maavt_fast.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not in a format we know."""


@dataclass
class LoopState:
    """Where the training loop is: enough, with the weights, optimizer and RNG, to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_acc: float = float("-inf")  # best validation accuracy so far
    validations_since_best: int = 0  # validations since best_acc last improved (train.patience)
    history: list[dict] = field(default_factory=list)  # one record per log/validation event (for curves)


class NonFiniteStateError(RuntimeError):
    """The weights or optimizer state to be saved hold NaN/inf; the file on disk is left as it was."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path: str | Path) -> Path:
    """`torch.save` to a temp file beside `path`, fsync, then rename over `path` (mode 0666 less the umask).

    A full disk raises CheckpointError ("no space left writing ...") with the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left writing {path}; the previous checkpoint is intact") from None
        raise
    return path


def _float_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of the floating tensors in a nested dict/list `state`."""
    if isinstance(state, torch.Tensor):
        return {prefix: state} if state.is_floating_point() else {}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {n: t for k, v in items for n, t in _float_tensors(v, f"{prefix}.{k}".lstrip(".")).items()}


def nonfinite_tensors(state) -> list[str]:
    """Dotted names of the floating tensors in a nested dict/list `state` that hold NaN or inf (one fused check)."""
    tensors = _float_tensors(state)
    if not tensors or bool(torch.isfinite(torch.cat([t.detach().reshape(-1).float() for t in tensors.values()])).all()):
        return []
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: str | Path, *, model, cfg: Config, optimizer: torch.optim.Optimizer | None = None,
                    loop: LoopState | None = None, with_backbone: bool = False) -> Path:
    """Write our format atomically. `model` is the unwrapped `MAAVT` (not the DDP wrapper).

    The frozen ViT is rebuilt from `cfg.model` on load; `with_backbone` also stores its weights, for a
    backbone that no config can rebuild (one that came out of an official checkpoint).
    """
    trainable = model.trainable_state_dict()
    opt_state = optimizer.state_dict() if optimizer is not None else None
    bad = nonfinite_tensors({"model": trainable, "optimizer": (opt_state or {}).get("state", {})})
    if bad:
        raise NonFiniteStateError(f"{len(bad)} weight/optimizer tensor(s) hold NaN or inf (first: {bad[0]}): not "
                                  f"written over {path}, which keeps the last good state. Lower train.lr or use "
                                  f"train.precision=fp32")
    backbone = {"backbone": model.vit.state_dict()} if with_backbone else {}
    return atomic_save(backbone | {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": getattr(maavt_fast, "__version__", "unknown"),
        "config": cfg.to_dict(),
        "model": trainable,
        "optimizer": opt_state,
        "loop": asdict(loop) if loop is not None else None,
        "rng": capture_rng(),
    }, path)


def is_official(obj) -> bool:
    """An official `model_{latest,best}.pth.tar` (docs/model.md#official-checkpoints): `state_dict`, `epoch`, ..."""
    return isinstance(obj, dict) and "state_dict" in obj and "format" not in obj


def read_checkpoint(path: str | Path) -> dict:
    """Load any checkpoint file to CPU with clear errors; our format is validated, official ones pass through."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = load_data_only(path)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is reported with the file name
        raise CheckpointError(f"checkpoint {path} could not be read: {type(e).__name__}: {e}") from e
    if is_official(obj):
        return obj
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is neither a maavt_fast checkpoint nor an official MA-AVT one "
                              f"(top-level keys: {sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {obj.get('format_version')}; this library reads "
                              f"{FORMAT_VERSION}")
    return obj


def checkpoint_config(ckpt: dict, path: str | Path) -> Config:
    """The config a checkpoint of our format was trained with."""
    if is_official(ckpt):
        raise CheckpointError(f"{path} is an official checkpoint and carries no maavt_fast config; pass --preset "
                              "(and overrides) describing its model, or run `maavt convert` first")
    return Config.from_dict(ckpt["config"])


def supplies_vit(ckpt: dict | None) -> bool:
    """Whether loading `ckpt` sets the frozen ViT's weights (official files and converted ones hold it)."""
    return ckpt is not None and (is_official(ckpt) or "backbone" in ckpt)


def load_weights(ckpt: dict, model, path: str | Path) -> None:
    """Load the weights of `ckpt` (either format; a stored backbone too) into the unwrapped `model`."""
    if is_official(ckpt):
        from maavt_fast.model.official import load_official_state_dict

        load_official_state_dict(ckpt, model, f"official checkpoint {path}")
        return
    if "backbone" in ckpt:
        from maavt_fast.model.backbone import check_state_dict_fits

        check_state_dict_fits(model.vit, ckpt["backbone"], f"the ViT stored in {path}")
        model.vit.load_state_dict(ckpt["backbone"])
    model.load_trainable_state_dict(ckpt["model"])


# Fields a resumed run may change without leaving the uninterrupted run's trajectory.
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.max_steps", "train.log_every", "train.ckpt_every",
                               "train.eval_every", "train.eval_batches", "train.out_dir", "train.device",
                               "train.patience", "train.accum_steps",
                               "train.dist_timeout_s", "train.tensorboard",
                               "data.root", "data.num_workers"})


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_resume_config(saved: dict, cfg: Config, path: str | Path) -> None:
    """Refuse to resume under a config that changes the run (model, data order, optimisation), naming the keys."""
    old, new = _flatten(Config.from_dict(saved).to_dict()), _flatten(cfg.to_dict())
    if not old["data.classes"]:  # a run from before class names were stored: its labels came from the data
        new["data.classes"] = ()
    changed = sorted(k for k in old if old[k] != new[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(f"cannot resume {path} exactly: the config differs in " +
                              ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in changed) +
                              "; resume with the saved config (--config <run>/config.json) or start a new run")


def restore_training(ckpt: dict, model, optimizer: torch.optim.Optimizer, path: str | Path,
                     cfg: Config) -> LoopState:
    """Resume: weights, optimizer state, RNG and the loop position of a checkpoint of our format."""
    if is_official(ckpt) or ckpt.get("optimizer") is None or ckpt.get("loop") is None:
        raise CheckpointError(f"{path} holds weights only (official or converted); it cannot be resumed. "
                              "Use it with `maavt eval --checkpoint`, or start a new run with it as init")
    check_resume_config(ckpt["config"], cfg, path)
    model.load_trainable_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt["rng"])
    loop = dict(ckpt["loop"], history=[_renamed_log_keys(r) for r in ckpt["loop"]["history"]])
    return LoopState(**loop)


# Log keys renamed since checkpoints were first written: old name -> current name.
RENAMED_LOG_KEYS = {"loss_cnt": "loss_contrastive"}


def _renamed_log_keys(record: dict) -> dict:
    """A history record of an older checkpoint with today's key names."""
    return {RENAMED_LOG_KEYS.get(k, k): v for k, v in record.items()}


def read_official(path: str | Path) -> dict:
    """An official checkpoint file, or a `CheckpointError` saying the file is something else."""
    official = read_checkpoint(path)
    if not is_official(official):
        raise CheckpointError(f"{path} is not an official MA-AVT checkpoint (no `state_dict` key)")
    return official


def convert(official: dict, official_path: str | Path, out_path: str | Path, cfg: Config) -> Path:
    """An official checkpoint (read by `read_official`) -> our weights-only format, for the model `cfg` describes."""
    from maavt_fast.model import MAAVT

    model = MAAVT(cfg.model, vit_weights_follow=True)
    load_weights(official, model, official_path)
    return save_checkpoint(out_path, model=model, cfg=cfg, with_backbone=True)
