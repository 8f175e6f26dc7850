"""Loading checkpoints written by the official MA-AVT code (docs/model.md#official-checkpoints) into `MAAVT`.

The official `model_{best,latest}.pth.tar` is `{"state_dict": {"module.<name>": tensor}, ...}` with
`ViT.v.*` backbone keys, per-block `audio_proj.{i}` / `vis_proj.{i}` heads and unused `logit_scale`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from maavt_fast.model.backbone import WeightsError, check_state_dict_fits, read_state_dict, tensors_in
from maavt_fast.model.maavt import MAAVT

_RENAMES = (  # official prefix -> ours
    ("ViT.v.", "vit."),
    ("audio_tokens", "tokens.audio"),
    ("visual_tokens", "tokens.visual"),
    ("shared_tokens", "tokens.shared"),
    ("audio_attn.", "tokens.lsa.audio."),
    ("visual_attn.", "tokens.lsa.visual."),
    ("shared_attn.", "tokens.lsa.shared."),
    ("vis_proj", "visual_proj"),
)
_DROPPED = re.compile(r"^(logit_scale(\.\d+)?|ViT\.v\.head\..*)$")
_PER_BLOCK_HEAD = re.compile(r"^(audio_proj|visual_proj)\.(\d+)\.(weight|bias)$")


def official_to_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names/layout -> `MAAVT.state_dict()` names/layout (per-block heads stacked to `(L, P, D)`)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        key = key.removeprefix("module.")
        if _DROPPED.match(key):
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    out: dict[str, torch.Tensor] = {}
    heads: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in renamed.items():
        m = _PER_BLOCK_HEAD.match(key)
        if m:
            heads.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = value
        elif key in ("audio_proj.weight", "audio_proj.bias", "visual_proj.weight", "visual_proj.bias"):
            out[key] = value.unsqueeze(0)  # one head shared by all blocks ('final', 'blockwise_cmn')
        else:
            out[key] = value
    for key, per_block in heads.items():
        if sorted(per_block) != list(range(len(per_block))):
            raise WeightsError(f"official checkpoint has heads {key} for blocks {sorted(per_block)}: not 0..L-1")
        out[key] = torch.stack([per_block[i] for i in range(len(per_block))])
    return out


def load_official_state_dict(official: dict, model: MAAVT, what: str) -> None:
    """Load an official checkpoint dict (or its `state_dict`) into `model`; a clear error mentioning `what`
    names every key/shape that does not fit."""
    sd = official_to_state_dict(tensors_in(official, what))
    check_state_dict_fits(model, sd, what)
    model.load_state_dict(sd)


def load_official_checkpoint(path: str | Path, model: MAAVT) -> None:
    """Load an official checkpoint file into `model`."""
    load_official_state_dict(read_state_dict(path), model, f"official checkpoint {path}")
