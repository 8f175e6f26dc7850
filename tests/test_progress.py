"""Progress display (bars on a terminal, a line per N% elsewhere) and the training ETA, with a fake clock."""
from __future__ import annotations

import io
import math

import pytest

from maavt_fast.progress import progress
from maavt_fast.train.logging_utils import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_ten_percent_with_the_count_and_eta():
    clock, out = FakeClock(), io.StringIO()
    seen = []
    for x in progress(range(20), 20, "eval", stream=out, clock=clock):
        clock.now += 0.5
        seen.append(x)
    lines = out.getvalue().splitlines()
    assert seen == list(range(20))
    assert len(lines) == 10
    assert lines[0] == "eval: 10% (2/20) in 1.0 s, ETA 9 s"
    assert lines[4] == "eval: 50% (10/20) in 5.0 s, ETA 5 s"
    assert lines[-1] == "eval: 100% (20/20) in 10.0 s, ETA 0 s"


def test_plain_lines_with_fewer_items_than_steps_and_a_coarser_step():
    out = io.StringIO()
    list(progress(range(3), 3, "prepare", every_percent=25, stream=out, clock=FakeClock()))
    percents = [line.split(":")[1].split("%")[0].strip() for line in out.getvalue().splitlines()]
    assert percents == ["33", "66", "100"]  # one line per item crossing a 25% mark, none repeated
    out = io.StringIO()
    list(progress(range(200), 200, "synth", every_percent=25, stream=out, clock=FakeClock()))
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["25%", "50%", "75%", "100%"]


def test_disabled_or_empty_progress_prints_nothing():
    out = io.StringIO()
    assert list(progress(range(4), 4, "x", enabled=False, stream=out)) == [0, 1, 2, 3]
    assert list(progress([], 0, "x", stream=out)) == []
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_not_lines():
    out = Terminal()
    assert list(progress(range(5), 5, "eval", stream=out)) == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert "eval:" in text and "/5 [" in text and "\r" in text  # a bar drawn in place (cleared at the end)
    assert "% (" not in text  # not the plain lines


def test_eta_leaves_out_the_warm_up_steps_and_paused_time():
    clock = FakeClock()
    p = Progress(total_steps=100, global_batch=8, warmup_steps=2, clock=clock)
    clock.now += 60.0  # step 1: torch.compile
    p.tick(1)
    clock.now += 5.0  # step 2: a recompile
    p.tick(2)
    first = p.update(2)
    assert math.isnan(first["eta_s"])  # nothing steady yet: no estimate rather than a wrong one
    assert first["samples_per_s"] == pytest.approx(2 * 8 / 65.0)
    for step in range(3, 11):  # 8 steady steps of 0.5 s
        clock.now += 0.5
        p.tick(step)
    stats = p.update(10)
    assert stats["eta_s"] == pytest.approx(0.5 * 90)
    assert stats["samples_per_s"] == pytest.approx(8 * 8 / 4.0)
    p.pause()
    clock.now += 30.0  # validation and a checkpoint
    p.resume()
    for step in range(11, 21):
        clock.now += 0.5
        p.tick(step)
    stats = p.update(20)
    assert stats["eta_s"] == pytest.approx(0.5 * 80)
    assert stats["samples_per_s"] == pytest.approx(10 * 8 / 5.0)
    line = p.line(20, 0, 1.0, 0.5, 1e-3, stats)
    assert "ETA 0:40" in line


def test_eta_after_a_resume_counts_from_the_resumed_step():
    clock = FakeClock()
    p = Progress(total_steps=50, global_batch=4, start_step=30, warmup_steps=1, clock=clock)
    clock.now += 20.0
    p.tick(31)
    for step in range(32, 36):
        clock.now += 1.0
        p.tick(step)
    stats = p.update(35)
    assert stats["eta_s"] == pytest.approx(1.0 * 15)
    assert "ETA -- (warm-up)" in p.line(31, 0, 1.0, 0.5, 1e-3, {"samples_per_s": 1.0, "eta_s": float("nan")})


def test_synth_and_prepare_print_plain_lines_when_not_on_a_terminal(capsys, tmp_path):
    from maavt_fast.data import prepare_videos, synthesize

    synthesize(tmp_path / "d", num_classes=2, clips_per_class=5, image_size=16, show_progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"synth: {p}%" for p in range(10, 101, 10)]
    assert lines[-1].startswith("synth: 100% (10/10) in ")
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(4):  # unreadable files: each fails, and the progress still counts it
        (videos / f"v{k}.mp4").write_bytes(b"not a video")
    summary = prepare_videos(videos, tmp_path / "out", workers=1, show_progress=True)
    assert len(summary.failed) == 4
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["prepare: 25% (1/4)", "prepare: 50% (2/4)",
                                                         "prepare: 75% (3/4)", "prepare: 100% (4/4)"]
