"""A training process killed with SIGKILL mid-epoch, or stopped by SIGTERM (a scheduler's preemption),
and resumed with --resume ends with the parameters of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from maavt_fast.config import preset
from maavt_fast.data import synthesize
from maavt_fast.train.checkpoint import read_checkpoint
from maavt_fast.train.run import run_train

OVERRIDES = {"data.num_workers": "0", "train.batch_size": "4", "train.epochs": "4", "train.precision": "fp32",
             "train.compile": "false", "train.lr": "1e-3", "train.schedule": "cosine", "train.warmup_epochs": "0.5",
             "train.log_every": "1", "train.ckpt_every": "2", "train.grad_mod": "true"}


def _cli_args(overrides):
    return [a for k, v in overrides.items() for a in (f"--{k}", v)]


def _signal_after_mid_epoch_checkpoint(proc, log, signum, timeout=240.0):
    """Send `signum` to `proc` as soon as its log shows a checkpoint taken inside an epoch; returns that record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # a line still being written
                rec = json.loads(line)
                if rec["event"] == "checkpoint" and rec["batch_in_epoch"] > 0:
                    os.killpg(proc.pid, signum)  # as a scheduler or Ctrl-C does: the process and its workers
                    proc.wait(timeout=120)
                    return rec
        if proc.poll() is not None:
            raise AssertionError(f"training ended (status {proc.returncode}) before it could be signalled:\n"
                                 f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data and the uninterrupted run."""
    tmp = tmp_path_factory.mktemp("resume_kill")
    root = synthesize(tmp / "data", num_classes=5, clips_per_class=8, seed=2, image_size=32)
    base = {**OVERRIDES, "data.root": str(root)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): same reduction order, bitwise results
    try:
        result, _ = run_train(preset("tiny", {**base, "train.out_dir": str(tmp / "ref")}), test_split=None)
    finally:
        torch.set_num_threads(threads)
    return base, result


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_stop_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference, signum):
    base, reference = reference
    out = tmp_path / "stopped"
    workers = "2" if signum == signal.SIGTERM else "0"  # decode workers leave the signal to the main process
    cmd = [sys.executable, "-m", "maavt_fast", "train", "--preset", "tiny", "--no-test",
           *_cli_args({**base, "train.out_dir": str(out), "data.num_workers": workers})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    record = _signal_after_mid_epoch_checkpoint(proc, out / "log.jsonl", signum)
    latest = out / "checkpoints" / "latest.pt"
    stopped_at = read_checkpoint(latest)["loop"]
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert stopped_at["step"] >= record["step"]
    else:  # the step in flight is finished and saved, said in one line, exit 128 + 15
        stderr = proc.stderr.read()
        assert proc.returncode == 143, stderr[-3000:]
        assert stopped_at["step"] >= record["step"]
        assert (f"maavt train: stopped by SIGTERM after step {stopped_at['step']} with {latest} saved; continue with: "
                f"maavt train --config {out / 'config.json'} --resume auto") in stderr.splitlines()
    assert stopped_at["step"] < reference.loop.step
    proc.stderr.close()

    resumed = subprocess.run([sys.executable, "-m", "maavt_fast", "train", "--resume", str(latest), "--no-test"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest} at step {stopped_at['step']}" in resumed.stdout
    final = read_checkpoint(latest)
    assert final["loop"]["step"] == reference.loop.step
    ref = read_checkpoint(reference.latest)
    for name, p in ref["model"].items():
        assert torch.equal(final["model"][name], p), name
    assert final["loop"]["best_acc"] == ref["loop"]["best_acc"]
