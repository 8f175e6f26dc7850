"""OGM-GE gradient modulation (docs/model.md#ogm-ge), with the classifier halves the right way round.

Coefficients: per modality m, score_m = sum over non-background rows (of all ranks) of
softmax(logits_m)[i, y_i], where logits_m are the FG classifier's half for modality m (the model's
`modality_logits`, visual half applied to v_cls and audio half to a_cls: the release swaps them).
With ratio = score_v / score_a: if ratio > 1 the visual gradients are damped by
coeff_v = 1 - tanh(alpha * relu(ratio)), else the audio ones by coeff_a = 1 - tanh(alpha * relu(1/ratio)).
`relu(ratio)` rather than `relu(ratio - 1)` is the release's (and the official OGM-GE code's) formula.

Modulation, as the release does it: every modality parameter with more than one element gets
grad <- grad * coeff + N(0, std(grad)); the Gaussian noise is added even when coeff = 1. The noise
comes from a dedicated generator that the trainer seeds from (seed, step) before every step, so it is
the same on every rank (replicas stay in sync after the DDP gradient average) and a resumed run draws
exactly the noise of an uninterrupted one, whatever else consumed torch's global RNG.
"""
from __future__ import annotations

import torch

from maavt_fast.config import BG_LABEL
from maavt_fast.train.distributed import all_reduce_sum


def modality_scores(audio_logits: torch.Tensor, visual_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Local score sums: logits (N, C) each, label (N,) -> (2,) [score_a, score_v] over non-background rows."""
    label = label.reshape(-1)
    keep = (label != BG_LABEL).to(audio_logits.dtype)
    target = label.clamp(min=0).unsqueeze(1)
    scores = [(torch.softmax(x.float(), dim=1).gather(1, target).squeeze(1) * keep).sum()
              for x in (audio_logits, visual_logits)]
    return torch.stack(scores)


def ogm_coefficients(audio_logits: torch.Tensor, visual_logits: torch.Tensor, label: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(coeff_audio, coeff_visual), 0-dim tensors in (0, 1], from the score sums over all ranks.

    Without any foreground row (all scores 0) both coefficients are 1.
    """
    scores = all_reduce_sum(modality_scores(audio_logits.detach(), visual_logits.detach(), label))
    score_a, score_v = scores[0], scores[1]
    one = torch.ones((), dtype=scores.dtype, device=scores.device)
    tiny = torch.finfo(scores.dtype).tiny
    ratio_v = score_v / score_a.clamp(min=tiny)
    ratio_a = score_a / score_v.clamp(min=tiny)
    visual_dominates = ratio_v > 1
    coeff_v = torch.where(visual_dominates, 1 - torch.tanh(alpha * torch.relu(ratio_v)), one)
    coeff_a = torch.where(visual_dominates, one, 1 - torch.tanh(alpha * torch.relu(ratio_a)))
    no_fg = scores.sum() == 0
    return torch.where(no_fg, one, coeff_a), torch.where(no_fg, one, coeff_v)


def noise_seed(seed: int, step: int) -> int:
    """The gradient-noise seed of optimizer step `step` of a run seeded with `seed`."""
    return (seed * 1_000_003 + step) % 2 ** 63


def modulate_gradients(params: dict[str, list[torch.nn.Parameter]], coeff_audio: torch.Tensor,
                       coeff_visual: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """In place: grad <- grad * coeff + N(0, std(grad)) for the "audio" and "visual" parameters with numel > 1."""
    for name, coeff in (("audio", coeff_audio), ("visual", coeff_visual)):
        for p in params[name]:
            if p.grad is None or p.numel() <= 1:
                continue
            g = p.grad
            noise = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype) * g.std()
            p.grad.mul_(coeff.to(p.grad.dtype)).add_(noise)
