"""Plots: a confusion matrix that says what its cells are and stays readable at 309 classes; an attention
gallery over different classes with colour bars and labelled spectrogram axes; matplotlib imported lazily."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from maavt_fast.config import preset
from maavt_fast.data.loader import Batch
from maavt_fast.train.metrics import top_confusions
from maavt_fast.train.run import build_model
from maavt_fast.train.visualize import (CELL_VALUES_UP_TO, TOP_PAIRS, attention_figure, attention_gallery,
                                        confusion_figure, gallery_batch, plot_confusion)


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, maavt_fast.train.visualize; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_confusions_are_the_largest_off_diagonal_cells():
    cm = torch.tensor([[5, 3, 0], [1, 2, 6], [0, 0, 4]])
    assert top_confusions(cm, 2) == [(1, 2, 6, 6 / 9), (0, 1, 3, 3 / 8)]
    assert top_confusions(cm, 10)[-1] == (1, 0, 1, 1 / 9)  # empty cells are left out
    assert top_confusions(torch.eye(3, dtype=torch.long), 5) == []


def _axes(fig):
    matrix, table = fig.axes[0], fig.axes[1]
    bars = [ax for ax in fig.axes if ax not in (matrix, table)]
    return matrix, table, bars


def test_a_small_confusion_matrix_prints_row_normalised_values_with_a_colour_bar():
    cm = torch.tensor([[3, 1, 0], [0, 4, 0], [2, 0, 2]])
    fig = confusion_figure(cm, ["cat", "dog", "bird"])
    matrix, table, bars = _axes(fig)
    assert "row-normalised" in matrix.get_title() and "12 samples" in matrix.get_title()
    assert sorted(t.get_text() for t in matrix.texts) == sorted(["0.75", "0.25", "1.00", "0.50", "0.50"])
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["cat", "dog", "bird"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "fraction of the true class's samples"
    cells = [c.get_text().get_text() for c in table.tables[0].get_celld().values()]
    assert {"bird", "cat", "2", "50%"} <= set(cells)  # bird -> cat, 2 of 4


def test_309_classes_stay_readable(tmp_path):
    g = torch.Generator().manual_seed(0)
    cm = torch.diag(torch.randint(20, 40, (309,), generator=g)) + torch.randint(0, 2, (309, 309), generator=g)
    cm[17, 250] = 90  # the most confused pair
    fig = confusion_figure(cm, [f"class number {i}" for i in range(309)])
    matrix, table, bars = _axes(fig)
    assert 309 > CELL_VALUES_UP_TO and len(matrix.texts) == 0  # no per-cell numbers
    fig.canvas.draw()
    ticks = [t.get_text() for t in matrix.get_xticklabels() + matrix.get_yticklabels()]
    assert 0 < len(ticks) < 40 and not any("class" in t for t in ticks)  # a few indices, not 309 names
    assert matrix.get_xlabel() == "predicted class index" and len(bars) == 1
    cells = table.tables[0].get_celld()
    assert max(r for r, _ in cells) == TOP_PAIRS  # header + the top pairs
    assert [cells[1, k].get_text().get_text() for k in range(3)] == ["class number 17", "class number 250", "90"]
    path = plot_confusion(cm, [f"class number {i}" for i in range(309)], tmp_path / "cm.png")
    width, height = Image.open(path).size
    assert width <= 2200 and height <= 1600


def _batches(labels_per_batch, size=32, valid=None):
    out = []
    for k, labels in enumerate(labels_per_batch):
        n = len(labels)
        out.append(Batch(audio=torch.randn(n, 1, size, size), image=torch.randn(n, 1, 3, size, size),
                         label=torch.tensor(labels).view(n, 1), index=torch.arange(n) + 10 * k,
                         valid=torch.ones(n, dtype=torch.bool) if valid is None else valid[k]))
    return out


def test_the_gallery_takes_one_clip_per_class_then_fills_and_skips_padding():
    batches = _batches([[0, 0, 0, 0], [0, 1, 1, 2], [3, 4, 4, 4]],
                       valid=[torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool),
                              torch.tensor([False, True, True, True])])
    picked = gallery_batch(batches, limit=4)
    assert picked.label.view(-1).tolist() == [0, 1, 2, 4] and picked.index.tolist() == [0, 11, 13, 21]
    filled = gallery_batch(batches, limit=7)
    assert filled.label.view(-1).tolist() == [0, 1, 2, 4, 0, 0, 0]
    assert gallery_batch(batches, limit=8, max_batches=1).label.view(-1).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("dataset,xlabel,ylabel,top", [("vggsound", "time (s)", "frequency (kHz)", 8.0),
                                                       ("ave", "time (s)", "mel bin", 224.0)])
def test_the_attention_figure_has_colour_bars_and_labelled_spectrogram_axes(dataset, xlabel, ylabel, top):
    data = preset(dataset).data
    fig = attention_figure(torch.randn(3, 224, 224), torch.rand(14, 14), torch.randn(224, 224), data.image_mean,
                           data.image_std, data.audio, title="true: a | predicted: b")
    frame, overlay, spec, *bars = fig.axes
    assert spec.get_xlabel() == xlabel and spec.get_ylabel() == ylabel and spec.get_ylim()[1] == pytest.approx(top)
    assert [b.get_ylabel() for b in bars] == ["attention (min-max per clip)", "log magnitude (standardised)"]


def test_the_gallery_shows_different_classes(tmp_path):
    cfg = tiny_config()
    model = build_model(cfg)
    batch = gallery_batch(_batches([[0, 0, 0, 0], [1, 1, 2, 2], [3, 4, 0, 1]]), limit=4)
    names = [f"c{i}" for i in range(cfg.model.num_classes)]
    index = attention_gallery(model, batch, tmp_path, names, cfg.data.image_mean, cfg.data.image_std, limit=4,
                              audio_cfg=cfg.data.audio)
    page = index.read_text()
    assert [f"<td>c{k}</td>" in page for k in range(4)] == [True] * 4
    assert all((tmp_path / f"{i:03d}.png").stat().st_size > 0 for i in range(4))
