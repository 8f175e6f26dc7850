"""Early stopping on the validation accuracy (`train.patience`); the count lives in `LoopState` (resumable)."""
from __future__ import annotations

from maavt_fast.train.checkpoint import LoopState


def record_validation(loop: LoopState, improved: bool) -> None:
    """Count the validations since the accuracy last improved (an improvement resets the count)."""
    loop.validations_since_best = 0 if improved else loop.validations_since_best + 1


def patience_spent(patience: int | None, loop: LoopState) -> bool:
    """Whether `patience` validations in a row have not improved the accuracy (never with None)."""
    return patience is not None and loop.validations_since_best >= patience


def stop_message(patience: int, loop: LoopState) -> str:
    return (f"early stop: no higher val accuracy in {loop.validations_since_best} validations "
            f"(train.patience={patience}); best.pt keeps accuracy {loop.best_acc:.4f}")
