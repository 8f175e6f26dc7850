"""The model an official MA-AVT checkpoint holds, read from its tensors alone.

The file decides the ViT (from its width and number of blocks), the input size (from `ViT.v.pos_embed`),
the classes, the token groups and counts, LSA on/off, the BG token, the contrastive heads and their width.
It does not record the LSA head count (the release uses 8) nor tell `blockwise_cmn` from `final` (both
have one projection head); those come from the base config. A file that fits no supported model raises
`WeightsError` naming the file's own keys and the likely cause.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from maavt_fast.config import PATCH_SIZE
from maavt_fast.model.backbone import WeightsError, tensors_in


@dataclass(frozen=True)
class VitSize:
    name: str  # what people call it
    timm_name: str  # the timm architecture (no pretrained tag: the weights come from the file)
    width: int
    blocks: int  # blocks of the full model


VIT_SIZES = {s.width: s for s in (  # width -> the patch-16 ViT of that width
    VitSize("ViT-Tiny", "vit_tiny_patch16_224", 192, 12),
    VitSize("ViT-Small", "vit_small_patch16_224", 384, 12),
    VitSize("ViT-Base", "vit_base_patch16_224", 768, 12),
    VitSize("ViT-Large", "vit_large_patch16_224", 1024, 24))}
_GROUPS = ("audio", "visual", "shared")  # token groups: `<group>_tokens`, `<group>_attn.*` in the file
SINGLE_HEAD_MODES = ("blockwise_cmn", "final")


@dataclass
class OfficialModel:
    """What the file decides: `fields` are `ModelConfig` fields, `evidence[field]` the file's key and what it
    says (for messages), `vit` the ViT's size."""

    fields: dict[str, object]
    evidence: dict[str, str]
    vit: VitSize

    def allows(self, name: str, value) -> bool:
        """Whether the file fits `model.<name>=value` (one projection head fits both single-head modes)."""
        if name not in self.fields:
            return True
        if name == "contrastive" and self.fields[name] in SINGLE_HEAD_MODES:
            return value in SINGLE_HEAD_MODES
        if name == "depth":
            return (value or self.vit.blocks) == (self.fields[name] or self.vit.blocks)
        return value == self.fields[name]

    def check(self, cfg, what: str) -> None:
        """Raise `WeightsError` naming, in the file's keys, every file-decided field `cfg` (a ModelConfig)
        sets otherwise."""
        wrong = [f"{self.evidence[n]}, but model.{n}={getattr(cfg, n)!r}" for n in self.fields
                 if n != "weights" and not self.allows(n, getattr(cfg, n))]
        if wrong:
            raise WeightsError(f"{what} does not fit the config: " + "; ".join(wrong))


def _size_name(width: int) -> str:
    size = VIT_SIZES.get(width)
    return f"width {width}: a {size.name}" if size else f"width {width}: no supported ViT"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def _numbered(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted indices i of keys `<prefix>.<i>.…`."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m[1]) for k in sd if (m := pattern.match(k))})


def infer_official_model(official: dict, what: str) -> OfficialModel:
    """Read the model of an official checkpoint dict (or its `state_dict`); `what` names the file in errors."""
    sd = {k.removeprefix("module."): v for k, v in tensors_in(official, what).items()}
    fields: dict[str, object] = {}
    evidence: dict[str, str] = {}

    def fail(msg: str) -> WeightsError:
        return WeightsError(f"{what}: {msg}")

    def need(key: str, why: str) -> torch.Tensor:
        if key not in sd:
            raise fail(f"no {key} ({why}); its keys start {', '.join(sorted(sd)[:6]) or '(none)'}")
        return sd[key]

    def decide(name: str, value, key: str, says: str) -> None:
        fields[name], evidence[name] = value, f"{key} {says}"

    width = need("ViT.v.cls_token", "the ViT's class token: not an MA-AVT checkpoint?").shape[-1]
    size = VIT_SIZES.get(width)
    if size is None:
        raise fail(f"ViT.v.cls_token has width {width}; supported ViTs are "
                   + ", ".join(f"{w} ({s.name})" for w, s in VIT_SIZES.items()))
    decide("vit", size.timm_name, "ViT.v.cls_token", f"has {_size_name(width)}")
    fields["weights"] = None  # the file holds the ViT
    patch = need("ViT.v.patch_embed.proj.weight", "the ViT's patch embedding")
    if tuple(patch.shape) != (width, 3, PATCH_SIZE, PATCH_SIZE):
        raise fail(f"ViT.v.patch_embed.proj.weight is {_shape(patch)}: patch {patch.shape[-1]}; only patch-{PATCH_SIZE} "
                   "ViTs on RGB input are supported")
    numbers = _numbered(sd, "ViT.v.blocks")
    blocks = len(numbers)
    if numbers != list(range(blocks)) or blocks == 0:
        raise fail(f"ViT.v.blocks.<i> numbered {numbers[:6]}: expected 0..L-1")
    if blocks > size.blocks:
        raise fail(f"ViT.v.blocks.0..{blocks - 1}: {blocks} blocks of width {width}, but a {size.name} has "
                   f"{size.blocks}")
    decide("depth", None if blocks == size.blocks else blocks, "ViT.v.blocks", f"has {blocks} blocks")
    fc1 = need("ViT.v.blocks.0.mlp.fc1.weight", "the first block's MLP")
    if tuple(fc1.shape) != (4 * width, width):
        raise fail(f"ViT.v.blocks.0.mlp.fc1.weight is {_shape(fc1)}; a {size.name} has ({4 * width}, {width})")
    pos = need("ViT.v.pos_embed", "the ViT's positional embedding")
    side = math.isqrt(max(pos.shape[1] - 1, 0)) if pos.dim() == 3 else 0
    if side < 1 or side * side != pos.shape[1] - 1:
        raise fail(f"ViT.v.pos_embed is {_shape(pos)}: not 1 class token + a square grid of patches")
    decide("img_size", PATCH_SIZE * side, "ViT.v.pos_embed", f"is {_shape(pos)}: {PATCH_SIZE * side}x{PATCH_SIZE * side} input")
    fg = need("fg_class.weight", "the classifier")
    decide("num_classes", fg.shape[0], "fg_class.weight", f"is {_shape(fg)}: {fg.shape[0]} classes")
    widths = {"fg_class.weight": 2 * width, "bg_class.weight": 2 * width, "bg_cls_token": width}

    has_bg = {k: k in sd for k in ("bg_cls_token", "bg_class.weight")}
    if len(set(has_bg.values())) > 1:
        have, lack = sorted(has_bg, key=has_bg.get, reverse=True)
        raise fail(f"{have} without {lack}: the background token and its head come together")
    decide("bg_token", has_bg["bg_cls_token"], "bg_cls_token", "is there" if has_bg["bg_cls_token"] else "is absent")

    present = {g: f"{g}_tokens" in sd for g in _GROUPS}
    if present["audio"] != present["visual"]:
        have, lack = ("audio_tokens", "visual_tokens") if present["audio"] else ("visual_tokens", "audio_tokens")
        raise fail(f"{have} without {lack}: unimodal tokens come in pairs")
    for name, key, on in (("unimodal_tokens", "audio_tokens", present["audio"]),
                          ("shared_tokens", "shared_tokens", present["shared"])):
        decide(name, on, key, "is there" if on else "is absent")
    groups = [g for g in _GROUPS if present[g]]
    with_lsa = [g for g in groups if f"{g}_attn.qkv.weight" in sd]
    if with_lsa and with_lsa != groups:
        lack = [f"{g}_attn" for g in groups if g not in with_lsa]
        raise fail(f"LSA weights {', '.join(g + '_attn' for g in with_lsa)} but none for {', '.join(lack)}: "
                   "LSA is all or nothing")
    if groups:
        decide("lsa", bool(with_lsa), f"{groups[0]}_attn.*", "is there" if with_lsa else "is absent")
    for g in groups:
        tokens = sd[f"{g}_tokens"]
        decide(f"n_{g}_tokens", tokens.shape[0], f"{g}_tokens", f"is {_shape(tokens)}")
        widths[f"{g}_tokens"] = width
        if with_lsa:
            widths[f"{g}_attn.qkv.weight"] = width

    heads = {name: _numbered(sd, name) for name in ("audio_proj", "vis_proj")}
    single = {name: f"{name}.weight" in sd for name in heads}
    if heads["audio_proj"] != heads["vis_proj"] or single["audio_proj"] != single["vis_proj"]:
        raise fail(f"audio_proj and vis_proj differ (per-block heads {heads['audio_proj']} vs {heads['vis_proj']}): "
                   "both streams have the same heads")
    if heads["audio_proj"]:
        if heads["audio_proj"] != list(range(blocks)):
            raise fail(f"audio_proj.<i> for blocks {heads['audio_proj']} but ViT.v.blocks has {blocks}: "
                       "per-block heads need one per block")
        decide("contrastive", "blockwise_sep", "audio_proj.<i>", f"holds {blocks} per-block heads")
        head = "audio_proj.0.weight"
    elif single["audio_proj"]:
        decide("contrastive", SINGLE_HEAD_MODES[0], "audio_proj.weight", "is one head (blockwise_cmn or final)")
        head = "audio_proj.weight"
    else:
        decide("contrastive", "none", "audio_proj", "is absent")
        head = None
    if head is not None:
        decide("proj_dim", sd[head].shape[0], head, f"is {_shape(sd[head])}")
        widths[head] = widths[head.replace("audio_proj", "vis_proj")] = width

    for key, expected in widths.items():
        if key in sd and sd[key].shape[-1] != expected:
            factor = expected // width
            raise fail(f"{key} is {_shape(sd[key])} ({_size_name(sd[key].shape[-1] // factor)}) but ViT.v.cls_token "
                       f"has {_size_name(width)}: weights of two different models?")
    return OfficialModel(fields, evidence, size)


def describe(cfg, vit: VitSize) -> str:
    """One line for the user about the model `cfg` (a ModelConfig the file fits)."""
    tokens = "/".join(str(n) if on else "-" for n, on in (
        (cfg.n_audio_tokens, cfg.unimodal_tokens), (cfg.n_visual_tokens, cfg.unimodal_tokens),
        (cfg.n_shared_tokens, cfg.shared_tokens)))
    lsa = f"LSA with {cfg.lsa_heads} heads (a count the file does not record)" if cfg.lsa else "no LSA"
    head = f" (projection width {cfg.proj_dim})" if cfg.contrastive != "none" else ""
    return (f"{vit.name} ({vit.timm_name}, width {vit.width}, {cfg.depth or vit.blocks} of {vit.blocks} blocks), "
            f"{cfg.img_size}x{cfg.img_size} input, {cfg.num_classes} classes, tokens audio/visual/shared {tokens}, "
            f"{lsa}, BG token {'on' if cfg.bg_token else 'off'}, contrastive {cfg.contrastive}{head}")
