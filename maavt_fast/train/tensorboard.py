"""TensorBoard logs of a training run, in `<out_dir>/tensorboard/` (rank 0 only; `train.tensorboard`).

Scalars: `train/<name>` (the losses, accuracies and `grad_norm` of each log window), `val/<name>` (the
validation metrics), `lr` and `throughput` (samples/s). Images at each validation: `val/curves` (loss and
accuracy so far), `val/confusion` (row-normalised) and `val/attention/<k>` (frame, last-block CLS
attention overlay and spectrogram of a few fixed validation clips, one per class where the data allows).
`open_board` returns a `NoBoard` (every method does nothing) when TensorBoard is off.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from maavt_fast._extras import MissingExtraError
from maavt_fast.config import Config, ConfigError
from maavt_fast.train.visualize import attention_figures, confusion_figure, curves_figure, gallery_batch

ATTENTION_CLIPS = 4  # clips of the attention images at each validation
IMAGE_DPI = 80  # resolution of the images (as the report's attention gallery)
INSTALL = "pip install 'maavt_fast[tensorboard]'"


class NoBoard:
    """TensorBoard off (or not rank 0): the same methods, doing nothing."""

    def __init__(self, status: str = "tensorboard off"):
        self.status = status  # for the run's first status line

    def train(self, step: int, stats: dict[str, float], lr: float, samples_per_s: float) -> None:
        pass

    def validation(self, step: int, metrics: dict[str, float], confusion: torch.Tensor, history: list[dict],
                   model=None, val_loader=None, autocast=None) -> None:
        pass

    def close(self) -> None:
        pass


class Board(NoBoard):
    """A `SummaryWriter` on `<out_dir>/tensorboard/` and what the loop logs to it."""

    def __init__(self, out_dir: str | Path, cfg: Config, device: torch.device, start_step: int = 0):
        """`start_step` > 0 (a resumed run): events of later steps in the folder are dropped, as they are
        logged again (TensorBoard's `purge_step`)."""
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(out_dir) / "tensorboard"
        super().__init__(f"tensorboard: {self.dir}")
        self.cfg, self.device = cfg, device
        names = list(cfg.data.classes)  # the data's class names, stored in the config before training
        self.class_names = names + [f"class_{k}" for k in range(len(names), cfg.model.num_classes)]
        self._gallery = None  # the clips of the attention images, chosen at the first validation
        self.writer = SummaryWriter(str(self.dir), purge_step=start_step + 1 if start_step else None)

    def _scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def train(self, step: int, stats: dict[str, float], lr: float, samples_per_s: float) -> None:
        self._scalars("train/", stats, step)
        self._scalars("", {"lr": lr, "throughput": samples_per_s}, step)
        self.writer.flush()

    def validation(self, step: int, metrics: dict[str, float], confusion: torch.Tensor, history: list[dict],
                   model=None, val_loader=None, autocast=None) -> None:
        """The val scalars, the curves and confusion images, and (given `model` and `val_loader`) attention images."""
        self._scalars("val/", metrics, step)
        self._figure("val/curves", curves_figure(history), step)
        self._figure("val/confusion", confusion_figure(confusion, self.class_names), step)
        if model is not None and val_loader is not None:
            self._attention(step, model, val_loader, autocast)
        self.writer.flush()

    def _attention(self, step: int, model, val_loader, autocast) -> None:
        if self._gallery is None:  # the same clips at every validation
            self._gallery = gallery_batch(val_loader, ATTENTION_CLIPS, max_batches=2).to(self.device)
        data = self.cfg.data
        figures = attention_figures(model, self._gallery, self.class_names, data.image_mean, data.image_std,
                                    ATTENTION_CLIPS, autocast, data.audio)
        for i, (_, _, fig) in enumerate(figures):
            self._figure(f"val/attention/{i}", fig, step)

    def _figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_image(tag, figure_pixels(fig), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def figure_pixels(fig, dpi: int = IMAGE_DPI) -> np.ndarray:
    """A matplotlib Figure rendered at `dpi` to a (H, W, 3) uint8 array (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def open_board(cfg: Config, device: torch.device, is_main: bool, start_step: int = 0) -> NoBoard:
    """The run's board per `cfg.train.tensorboard`: auto (on when installed) | true (a one-line
    MissingExtraError naming the extra when not installed) | false. Ranks other than 0 get a `NoBoard`."""
    mode = cfg.train.tensorboard
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"train.tensorboard={mode!r} is not one of auto, true, false")
    installed = importlib.util.find_spec("tensorboard") is not None
    if mode == "true" and not installed:
        raise MissingExtraError(f"train.tensorboard=true needs tensorboard, which is not installed: {INSTALL}",
                                name="tensorboard")
    if mode == "false":
        return NoBoard("tensorboard off (train.tensorboard=false)")
    if not installed:
        return NoBoard(f"tensorboard off (not installed: {INSTALL})")
    if not is_main:
        return NoBoard()
    return Board(cfg.train.out_dir, cfg, device, start_step)
