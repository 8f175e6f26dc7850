"""What a training run checks before step 1, so that no error arrives after the training it should prevent.

The data is indexed once up front: the train split must have media, its classes must fit
`model.num_classes` (their names are stored as `data.classes`, so label k means the same class on
resume and in evaluation, whatever order another copy of the data sorts in), and the split evaluated
after training must exist and hold clips (classes without train clips in it are refused by the index,
naming the row).
"""
from __future__ import annotations

import dataclasses

from maavt_fast.config import Config, ConfigError, apply_overrides
from maavt_fast.train.logging_utils import print_status


def preflight(cfg: Config, test_split: str | None, adapt_num_classes: bool = False, verbose: bool = True) -> Config:
    """Check `cfg`'s data against its model; returns `cfg`, with `model.num_classes` set to the data's class
    count when `adapt_num_classes` (the user did not set it, the data defines it)."""
    from maavt_fast.data import DataError
    from maavt_fast.data.manifests import build_index

    check_vit(cfg)
    data, seed = cfg.data, cfg.train.seed
    train = build_index(data, "train", seed)
    if not train.clips:
        raise DataError(data.root, f"no media found: the {data.dataset} manifest lists no train clip whose frames "
                                   f"and audio exist under the root")
    if not data.classes and data.dataset in ("vggsound", "csv"):  # stored with the run: label k stays class k
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, classes=tuple(train.classes)))
    n = len(train.classes)
    if adapt_num_classes and n != cfg.model.num_classes:
        print_status(f"model.num_classes: {n}, the classes of the data (was {cfg.model.num_classes})", verbose)
        cfg = apply_overrides(cfg, {"model.num_classes": str(n)})
    if n > cfg.model.num_classes:
        raise ConfigError(f"the data has {n} classes ({', '.join(train.classes[:5])}{', ...' if n > 5 else ''}) but "
                          f"model.num_classes is {cfg.model.num_classes}: set --model.num_classes {n}")
    if test_split is not None and not build_index(data, test_split, seed).clips:
        raise DataError(data.root, f"the {test_split} split is empty or missing: add its clips, or train with "
                                   f"--no-test (or --test-split val)")
    return cfg


def check_vit(cfg: Config) -> None:
    """`model.vit` is a timm VisionTransformer (built on the meta device: no memory, no weights) and
    `model.depth` does not exceed its blocks."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            vit = timm.create_model(cfg.model.vit, num_classes=0)
    except Exception as e:  # noqa: BLE001 - unknown names and foreign constructors raise many types
        raise ConfigError(f"model.vit={cfg.model.vit!r}: timm cannot build it ({type(e).__name__}: {e})") from None
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"model.vit={cfg.model.vit!r} is a {type(vit).__name__}, not a timm VisionTransformer")
    if cfg.model.depth is not None and cfg.model.depth > len(vit.blocks):
        raise ConfigError(f"model.depth={cfg.model.depth} exceeds the {len(vit.blocks)} blocks of {cfg.model.vit}")
