"""The optimizer (`train.optimizer`: Adam, the release's, or AdamW) and gradient-norm clipping.

Adam adds `weight_decay * param` to the gradient (L2, as the release); AdamW decays the weights directly
(decoupled). The learning rate is a tensor, so a schedule changes it without recompiling the step.
"""
from __future__ import annotations

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(raw_model, lr: float, weight_decay: float, device: torch.device,
                    kind: str = "adam") -> torch.optim.Optimizer:
    """`kind` ("adam" | "adamw", betas 0.9, 0.999) over the trainable parameters only, with a tensor lr.

    On CUDA `capturable=True` keeps the multi-tensor (foreach) update, which a tensor lr otherwise disables.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer {kind!r} is not one of {', '.join(OPTIMIZERS)}")
    params = [p for _, p in raw_model.named_trainable_parameters()]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return OPTIMIZERS[kind](params, lr=torch.tensor(lr, device=device), weight_decay=weight_decay,
                            capturable=device.type == "cuda")


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale the gradients of `optimizer`'s parameters to a total L2 norm of at most `max_norm`; returns the
    norm before clipping (0-dim fp32)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm).detach().float()
