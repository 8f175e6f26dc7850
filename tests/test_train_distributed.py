"""`torchrun --nproc_per_node=2` on CPU (gloo) ends where one process on the same global batches ends."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from maavt_fast.config import Config, preset
from maavt_fast.data import synthesize
from maavt_fast.train.checkpoint import read_checkpoint
from maavt_fast.train.run import build_model, run_train

# Background pairs stay on (bg_prob 0.3): the FG loss is normalised by the global FG count and the contrastive
# loss gathers with autograd, so the two ranks' averaged gradients equal the one-process gradient.
OVERRIDES = {"data.bg_prob": "0.3", "data.num_workers": "0", "train.batch_size": "4", "train.max_steps": "3",
             "train.precision": "fp32", "train.compile": "false", "train.lr": "1e-3", "train.log_every": "1",
             "train.schedule": "cosine"}


def _train_two_ranks(root, out_dir, overrides):
    args = [a for k, v in {**overrides, "data.root": str(root), "train.out_dir": str(out_dir)}.items()
            for a in (f"--{k}", v)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "maavt_fast", "train", "--preset", "tiny", "--no-test", *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 x cpu" in proc.stdout
    return read_checkpoint(out_dir / "checkpoints" / "latest.pt")


@pytest.mark.parametrize("contrastive_loss", ["infonce", "sigmoid"])
def test_two_ranks_on_gloo_equal_one_process(tmp_path, contrastive_loss):
    overrides = OVERRIDES | {"model.contrastive_loss": contrastive_loss}
    root = synthesize(tmp_path / "data", num_classes=5, clips_per_class=8, seed=1, image_size=32)
    cfg = preset("tiny", {**overrides, "data.root": str(root), "train.out_dir": str(tmp_path / "single")})
    single = read_checkpoint(run_train(cfg, test_split=None)[0].latest)
    ddp = _train_two_ranks(root, tmp_path / "ddp", overrides)
    assert single["loop"]["step"] == ddp["loop"]["step"] == 3
    init = build_model(Config.from_dict(single["config"])).trainable_state_dict()
    # Adam's first moment is a sum of past gradients: equal moments mean equal gradients on every step
    for i, state in single["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            ref = state[key]
            torch.testing.assert_close(ddp["optimizer"]["state"][i][key], ref, rtol=1e-4,
                                       atol=1e-5 * ref.abs().max().item(), msg=lambda m: f"param {i} {key}: {m}")
    # parameters: Adam's step lr * m / (sqrt(v) + eps) is sign-like where the true gradient is zero (e.g. the key
    # biases of attention, whose gradient is pure float noise), so such elements may differ by up to lr per step;
    # all the others must agree to float precision
    lr, steps = float(single["config"]["train"]["lr"]), 3
    diffs = torch.cat([(ddp["model"][name] - p).abs().flatten() for name, p in single["model"].items()])
    assert diffs.max() <= steps * lr * 1.01
    assert (diffs > 2e-6).float().mean() < 0.005, f"{int((diffs > 2e-6).sum())} of {diffs.numel()} elements differ"
    moved = [name for name, p in single["model"].items() if not torch.equal(p, init[name])]
    assert len(moved) == len(init)  # every trainable tensor was updated: the equality is not vacuous
    val_single = [r for r in single["loop"]["history"] if r["event"] == "val"]
    val_ddp = [r for r in ddp["loop"]["history"] if r["event"] == "val"]
    assert val_single[-1]["samples"] == val_ddp[-1]["samples"]  # padding rows of the uneven shards are not counted
