"""MA-AVT with the fast path (docs/model.md, docs/architecture.md#the-fast-path).

Both streams run through each frozen block in one pass over a flat token matrix; the learnable
tokens are computed once per step; the blockwise contrastive loss is one projection + one loss call.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from maavt_fast.config import PATCH_SIZE, ModelConfig
from maavt_fast.model.backbone import build_vit, check_state_dict_fits, embed_patches, position_embedding
from maavt_fast.model.blocks import Layout, resolve_backend, run_block, stream_views
from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.model.outputs import MAAVTOutput
from maavt_fast.model.tokens import LearnableTokens, upgrade_lsa_keys
from maavt_fast.ops import blockwise_projection

log = logging.getLogger(__name__)


class BlockProjection(nn.Module):
    """`n` stacked `Linear(D, P)` heads: weight `(n, P, D)`, bias `(n, P)`, nn.Linear's initialisation."""

    def __init__(self, n: int, dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_dim, dim))
        self.bias = nn.Parameter(torch.empty(n, out_dim))
        for i in range(n):
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -dim ** -0.5, dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(L, B, D)` -> `(L, B, P)`; a single head is shared by all L blocks."""
        w, b = self.weight, self.bias
        if w.shape[0] != x.shape[0]:
            w, b = w.expand(x.shape[0], -1, -1), b.expand(x.shape[0], -1)
        return blockwise_projection(x, w, b)


class MAAVT(nn.Module):
    """Frozen timm ViT shared by audio and visual streams + trainable tokens, LSA and heads.

    The model holds no distributed state and calls no collective: the loss of a batch split over ranks
    is `MAAVTLoss(cfg, group)` applied to the output of `model(audio, image)`.

    `vit_weights_follow`: the caller loads the ViT's weights from a checkpoint next (no random-init warning).
    """

    def __init__(self, cfg: ModelConfig, vit_weights_follow: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vit = build_vit(cfg, vit_weights_follow)
        dim, depth = self.vit.embed_dim, len(self.vit.blocks)
        self.vit.cls_token.requires_grad_(cfg.release_quirks)  # trained in the release: docs/model.md#release-quirks
        self.tokens = LearnableTokens(cfg, dim)
        self.bg_cls_token = nn.Parameter(torch.randn(1, dim)) if cfg.bg_token else None
        n_heads = {"blockwise_sep": depth, "blockwise_cmn": 1, "final": 1}.get(cfg.contrastive, 0)
        self.audio_proj = BlockProjection(n_heads, dim, cfg.proj_dim) if n_heads else None
        self.visual_proj = BlockProjection(n_heads, dim, cfg.proj_dim) if n_heads else None
        # The sigmoid loss's logit scale (as its log) and bias: one each per block the loss covers, as SigLIP
        # initialises them (scale 10, bias -10). None with InfoNCE or without a contrastive loss.
        n_blocks = {"blockwise_sep": depth, "blockwise_cmn": depth, "final": 1}.get(cfg.contrastive, 0)
        sigmoid = n_blocks > 0 and cfg.contrastive_loss == "sigmoid"
        self.contrastive_log_scale = nn.Parameter(torch.full((n_blocks,), math.log(10.0))) if sigmoid else None
        self.contrastive_bias = nn.Parameter(torch.full((n_blocks,), -10.0)) if sigmoid else None
        self.fg_class = nn.Linear(2 * dim, cfg.num_classes)  # input [v_cls; a_cls]
        self.bg_class = nn.Linear(2 * dim, 1) if cfg.bg_token else None  # input [v_bg; a_bg]
        self.num_patches = self.vit.patch_embed.num_patches
        rule = " (SDPA; explicit math on CPU under bf16 autocast)" if cfg.attention == "auto" else ""
        log.info("MAAVT: %s, %d blocks, attention backend %r%s", cfg.vit, depth, cfg.attention, rule)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, 3, S, S)` image or `(N, S, S)` spectrogram -> `[CLS, patches(, BG)] + pos` `(N, 1+P(+1), D)`."""
        p = embed_patches(self.vit, x)
        parts = [self.vit.cls_token.expand(p.shape[0], -1, -1), p]
        if self.bg_cls_token is not None:
            parts.append(self.bg_cls_token.expand(p.shape[0], -1, -1))
        return torch.cat(parts, dim=1) + position_embedding(self.vit, self.cfg.bg_token, self.cfg.release_quirks)

    def _with_tokens(self, base: list[torch.Tensor], tok: dict[str, torch.Tensor]) -> torch.Tensor:
        """Append each stream's unimodal + shared tokens and flatten: -> `(T, D)` stream-major."""
        rows = []
        for x, group in zip(base, ("audio", "visual")):
            tail = [tok[g] for g in (group, "shared") if g in tok]
            if tail:
                tail_t = torch.cat(tail).to(x.dtype)
                x = torch.cat([x, tail_t.expand(x.shape[0], -1, -1)], dim=1)
            rows.append(x.reshape(-1, x.shape[-1]))
        return torch.cat(rows)

    def forward(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor | None = None,
                return_attn: bool = False) -> MAAVTOutput:
        """audio `(B, T, S, S)`, image `(B, T, 3, S, S)`, label `(B, T)` or `(B*T,)` (-1 = background) or None.

        With a label the losses of this batch alone are set, as `MAAVTLoss(cfg)` (no process group) computes them.
        """
        check_inputs(audio, image, label, self.cfg.img_size)
        if self.cfg.attention == "xformers" and not audio.is_cuda:
            raise RuntimeError("model.attention='xformers' needs CUDA tensors; use 'sdpa' on CPU")
        n = audio.shape[0] * audio.shape[1]
        base = [self._embed(audio.flatten(0, 1)), self._embed(image.flatten(0, 1))]
        tok = self.tokens()
        x = self._with_tokens(base, tok)
        n_tail = [sum(tok[g].shape[0] for g in (s, "shared") if g in tok) for s in ("audio", "visual")]
        layout: Layout = tuple((n, base[0].shape[1] + t) for t in n_tail)
        n_shared = tok["shared"].shape[0] if "shared" in tok else 0
        depth, shared_means, attn = len(self.vit.blocks), [], None
        backend = resolve_backend(self.cfg.attention, x)
        for i, blk in enumerate(self.vit.blocks):
            if i > 0 and self.cfg.layerwise_token == "common":  # fresh LSA tokens before every block
                x = self._with_tokens([v[:, :base[0].shape[1]] for v in stream_views(x, layout)], tok)
            last = i == depth - 1
            x, amap = run_block(blk, x, layout, backend, 1 if (last and return_attn) else None,
                                self.num_patches)
            attn = amap if amap is not None else attn
            if self.audio_proj is not None and (self.cfg.contrastive != "final" or last):
                shared_means.append(torch.stack([v[:, -n_shared:].mean(dim=1) for v in stream_views(x, layout)]))
        a, v = stream_views(x, layout)
        a_cls, v_cls = self.vit.norm(a[:, 0]), self.vit.norm(v[:, 0])
        fg_logits = self.fg_class(torch.cat([v_cls, a_cls], dim=-1))
        bg_logits = None
        if self.bg_class is not None:
            bg = 1 + self.num_patches
            bg_logits = self.bg_class(torch.cat([self.vit.norm(v[:, bg]), self.vit.norm(a[:, bg])], dim=-1))[:, 0]
        out = MAAVTOutput(fg_logits=fg_logits, bg_logits=bg_logits, modality_logits=self._modality_logits(a_cls, v_cls))
        if shared_means:
            means = torch.stack(shared_means, dim=1)  # (2, L, N, D): streams [audio, visual]
            out.contrastive_features = (self.audio_proj(means[0]), self.visual_proj(means[1]))
            if self.contrastive_log_scale is not None:
                out.contrastive_scale_bias = (self.contrastive_log_scale.exp(), self.contrastive_bias)
        if attn is not None:
            side = self.cfg.img_size // PATCH_SIZE
            out.attn = attn.view(n, side, side)
        if label is not None:
            MAAVTLoss(self.cfg)(out, label)
        return out

    def _modality_logits(self, a_cls: torch.Tensor, v_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality FG logits from the classifier halves the right way round (visual half first)."""
        dim, w, b = a_cls.shape[-1], self.fg_class.weight, self.fg_class.bias
        return F.linear(a_cls, w[:, dim:], b / 2), F.linear(v_cls, w[:, :dim], b / 2)

    def named_trainable_parameters(self):
        return ((k, p) for k, p in self.named_parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.named_trainable_parameters()}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Strict: every trainable parameter, nothing else, matching shapes (older LSA key names are upgraded)."""
        own = dict(self.named_trainable_parameters())
        sd = upgrade_lsa_keys(dict(sd), "tokens.")
        check_state_dict_fits(own, sd, "the trainable state")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(sd[k])

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """What OGM-GE gradient modulation scales: each modality's tokens, LSA, projections (docs/model.md#ogm-ge)."""
        out: dict[str, list[nn.Parameter]] = {"audio": [], "visual": []}
        for m, proj in (("audio", self.audio_proj), ("visual", self.visual_proj)):
            if m in self.tokens.groups:
                out[m].append(getattr(self.tokens, m))
                if self.tokens.lsa is not None:
                    out[m].extend(self.tokens.lsa[m].parameters())
            if proj is not None:
                out[m].extend(proj.parameters())
        return out


def check_inputs(audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor | None, size: int) -> None:
    """Clear errors for tensors that do not have the shapes the model needs."""
    if audio.dim() != 4 or audio.shape[-2:] != (size, size):
        raise ValueError(f"audio must be (B, T, {size}, {size}); got {tuple(audio.shape)}")
    if image.dim() != 5 or image.shape[2:] != (3, size, size) or image.shape[:2] != audio.shape[:2]:
        raise ValueError(f"image must be (B, T, 3, {size}, {size}) with the audio's (B, T)={tuple(audio.shape[:2])}; "
                         f"got {tuple(image.shape)}")
    if label is not None and label.numel() != audio.shape[0] * audio.shape[1]:
        raise ValueError(f"label must hold B*T={audio.shape[0] * audio.shape[1]} entries; got {tuple(label.shape)}")
