"""Learnable audio / visual / shared tokens and their LSA re-parameterisation (docs/model.md#learnable-tokens-and-lsa).

Vocabulary: a *token group* is one set of learnable tokens (audio, visual or shared); its *LSA*
(learnable-token self-attention) is a small multi-head self-attention owned by that group; *group
attention* (`maavt_fast.ops.group_attention`) is the op that runs several groups' LSAs in one call.

The LSA input is the token matrix itself, identical for every sample, so the re-parameterised tokens
are computed once per step as `(n, D)` and broadcast over the batch (docs/architecture.md#lsa-once-per-step); groups of
equal size run in one `group_attention` call.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from maavt_fast.config import ModelConfig
from maavt_fast.ops import group_attention

GROUPS = ("audio", "visual", "shared")
# State-dict keys of older checkpoints: `tokens.<group>_attn.*` is now `tokens.lsa.<group>.*`.
_OLD_LSA_KEY = re.compile(r"^(audio|visual|shared)_attn\.")


class LSA(nn.Module):
    """The LSA of one token group: `qkv = Linear(D, 3D)`, `proj = Linear(D, D)`, `num_heads` heads; no norm,
    no residual."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"model.lsa_heads={num_heads} must divide the ViT width {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


def upgrade_lsa_keys(state_dict: dict, prefix: str = "") -> dict:
    """Rename, in place, the LSA keys of an older checkpoint below `prefix` (`<prefix><group>_attn.` ->
    `<prefix>lsa.<group>.`); returns `state_dict`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = _OLD_LSA_KEY.sub(r"lsa.\1.", key[len(prefix):])
        if new != key[len(prefix):]:
            state_dict[prefix + new] = state_dict.pop(key)
    return state_dict


class LearnableTokens(nn.Module):
    """Parameters `audio`, `visual`, `shared` `(n, D)` (the groups that are on) and their LSAs `lsa[group]`
    (None with `model.lsa=false`)."""

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        counts = {"audio": cfg.n_audio_tokens if cfg.unimodal_tokens else 0,
                  "visual": cfg.n_visual_tokens if cfg.unimodal_tokens else 0,
                  "shared": cfg.n_shared_tokens if cfg.shared_tokens else 0}
        self.groups = tuple(g for g in GROUPS if counts[g] > 0)
        self.counts = counts
        self.lsa = nn.ModuleDict() if cfg.lsa else None
        for g in self.groups:  # each group's tokens, then its LSA: the order the seeded initialisation draws them
            setattr(self, g, nn.Parameter(torch.randn(counts[g], dim)))
            if self.lsa is not None:
                self.lsa[g] = LSA(dim, cfg.lsa_heads)
        self.register_load_state_dict_pre_hook(_upgrade_hook)

    def forward(self) -> dict[str, torch.Tensor]:
        """Re-parameterised tokens per group that is on: `{group: (n_group, D)}`."""
        raw = {g: getattr(self, g) for g in self.groups}
        if self.lsa is None:
            return raw
        out: dict[str, torch.Tensor] = {}
        by_size: dict[int, list[str]] = {}
        for g in self.groups:
            by_size.setdefault(self.counts[g], []).append(g)
        for names in by_size.values():
            mods = [self.lsa[g] for g in names]
            y = group_attention(torch.stack([raw[g] for g in names]).unsqueeze(1),
                                torch.stack([m.qkv.weight for m in mods]), torch.stack([m.qkv.bias for m in mods]),
                                torch.stack([m.proj.weight for m in mods]), torch.stack([m.proj.bias for m in mods]),
                                mods[0].num_heads)
            out.update({g: y[i, 0] for i, g in enumerate(names)})
        return out


def _upgrade_hook(module, state_dict, prefix, *args) -> None:
    upgrade_lsa_keys(state_dict, prefix)
