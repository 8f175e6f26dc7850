"""The release's computation order (docs/model.md#release-order-reference): the tests' oracle, the benchmarks' baseline.

`ReferenceMAAVT` has exactly `MAAVT`'s parameters (it subclasses it, so one state dict loads into
both) but computes like the official code: the spectrogram copied to 3 channels, two separate passes
per block, explicit softmax attention with the full matrix in every block, the LSA run on N copies of
the tokens, and a Python loop over blocks for the contrastive loss with boolean indexing. The
release's clear bugs stay fixed (docs/model.md#bugs-we-fix: batch size 1, explicit index ranges, correct token counts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maavt_fast.config import BG_LABEL, PATCH_SIZE, ModelConfig
from maavt_fast.model.maavt import MAAVT, check_inputs
from maavt_fast.model.outputs import MAAVTOutput
from maavt_fast.ops.release import release_block_contrastive, release_self_attention


def _explicit_attention(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Attention computed explicitly: returns output `(N, L, D)` and scaled pre-softmax logits `(N, H, L, L)`."""
    return release_self_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, attn.num_heads)


def _lsa_on_copies(module, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """One LSA over `n` copies of the `(k, D)` tokens, as the release runs it -> `(n, k, D)`."""
    x = tokens.unsqueeze(0).repeat(n, 1, 1)
    return release_self_attention(x, module.qkv.weight, module.qkv.bias, module.proj.weight, module.proj.bias,
                                  module.num_heads)[0]


class ReferenceMAAVT(MAAVT):
    """MA-AVT in the release's computation order; same parameters and outputs as `MAAVT` (InfoNCE only)."""

    def __init__(self, cfg: ModelConfig, vit_weights_follow: bool = False):
        if cfg.contrastive_loss != "infonce":
            raise ValueError(f"ReferenceMAAVT computes the release's InfoNCE loss only; "
                             f"got model.contrastive_loss={cfg.contrastive_loss!r}")
        super().__init__(cfg, vit_weights_follow)

    def _embed_release(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        p = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        if self.bg_cls_token is not None:
            p = torch.cat([p, self.bg_cls_token.unsqueeze(0).repeat(p.shape[0], 1, 1)], dim=1)
        x = torch.cat([vit.cls_token.repeat(p.shape[0], 1, 1), p], dim=1)
        pos = vit.pos_embed
        if x.shape[1] != pos.shape[1]:
            if self.cfg.release_quirks:
                pos = F.interpolate(pos.permute(0, 2, 1), size=x.shape[1], mode="linear").permute(0, 2, 1)
            else:
                pos = F.pad(pos, (0, 0, 0, 1))
        return x + pos

    def _append_tokens(self, fa: torch.Tensor, fv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, n = self.tokens, fa.shape[0]

        def make(group: str) -> torch.Tensor:
            raw = getattr(t, group)
            return _lsa_on_copies(t.lsa[group], raw, n) if t.lsa is not None else raw.unsqueeze(0).repeat(n, 1, 1)

        shared = make("shared") if "shared" in t.groups else None
        for group in ("audio", "visual"):
            parts = [make(group)] if group in t.groups else []
            parts += [shared] if shared is not None else []
            if group == "audio":
                fa = torch.cat([fa, *parts], dim=1)
            else:
                fv = torch.cat([fv, *parts], dim=1)
        return fa, fv

    def _block_contrastive(self, i: int, fa, fv, keep: torch.Tensor) -> torch.Tensor:
        n_s = self.tokens.shared.shape[0]
        j = i if self.cfg.contrastive == "blockwise_sep" else 0
        z_v = F.linear(fv[:, -n_s:].mean(dim=1), self.visual_proj.weight[j], self.visual_proj.bias[j])
        z_a = F.linear(fa[:, -n_s:].mean(dim=1), self.audio_proj.weight[j], self.audio_proj.bias[j])
        return release_block_contrastive(z_a, z_v, keep, self.cfg.temperature)

    def forward(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor | None = None,
                return_attn: bool = False) -> MAAVTOutput:
        check_inputs(audio, image, label, self.cfg.img_size)
        n = audio.shape[0] * audio.shape[1]
        fa = self._embed_release(audio.flatten(0, 1).unsqueeze(1).repeat(1, 3, 1, 1))
        fv = self._embed_release(image.flatten(0, 1))
        base_len = fa.shape[1]
        keep = label.reshape(-1) != BG_LABEL if label is not None else None
        blocks, cnt, vis_attn = self.vit.blocks, [], None
        for i, blk in enumerate(blocks):
            if i == 0 or self.cfg.layerwise_token == "common":
                fa, fv = self._append_tokens(fa[:, :base_len], fv[:, :base_len])
            y, logits_v = _explicit_attention(blk.attn, blk.norm1(fv))
            vis_attn = logits_v[:, :, 0, 1:1 + self.num_patches].mean(dim=1).softmax(dim=-1)
            fv = fv + y
            y, _ = _explicit_attention(blk.attn, blk.norm1(fa))
            fa = fa + y
            fv = fv + blk.mlp(blk.norm2(fv))
            fa = fa + blk.mlp(blk.norm2(fa))
            if keep is not None and self.audio_proj is not None:
                if self.cfg.contrastive != "final" or i == len(blocks) - 1:
                    cnt.append(self._block_contrastive(i, fa, fv, keep))
        fv, fa = self.vit.norm(fv), self.vit.norm(fa)
        v_cls, a_cls = fv[:, 0], fa[:, 0]
        out = MAAVTOutput(fg_logits=self.fg_class(torch.cat([v_cls, a_cls], dim=1)))
        dim, w, b = v_cls.shape[1], self.fg_class.weight, self.fg_class.bias
        out.modality_logits = (a_cls @ w[:, dim:].t() + b / 2, v_cls @ w[:, :dim].t() + b / 2)
        if self.bg_class is not None:
            bg = 1 + self.num_patches
            out.bg_logits = self.bg_class(torch.cat([fv[:, bg], fa[:, bg]], dim=1))[:, 0]
        if return_attn:
            side = self.cfg.img_size // PATCH_SIZE
            out.attn = vis_attn.reshape(n, side, side)
        if keep is not None:
            y = label.reshape(-1)
            out.loss_fg = F.cross_entropy(out.fg_logits[keep], y[keep]) if keep.any() else out.fg_logits.sum() * 0
            out.loss = out.loss_fg
            if out.bg_logits is not None:
                out.loss_bg = F.binary_cross_entropy_with_logits(out.bg_logits, (~keep).to(out.bg_logits.dtype))
                out.loss = out.loss + out.loss_bg
            if cnt:
                out.loss_contrastive = sum(cnt) / len(cnt)
                out.loss = out.loss + out.loss_contrastive
        return out
