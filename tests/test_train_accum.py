"""train.accum_steps: one optimizer step over k micro-batches equals one step on the whole batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast.config import ConfigError, apply_overrides
from maavt_fast.data import synthesize
from maavt_fast.train.accumulate import AccumulatingTrainStep
from maavt_fast.train.checkpoint import CheckpointError, check_resume_config, read_checkpoint
from maavt_fast.train.run import build_model, run_train
from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision


def _one_step(accum_steps: int, grad_mod: bool, clip: float | None, compile: bool = False, batch: int = 8,
              contrastive: str = "blockwise_sep", dtype: torch.dtype = torch.float32):
    """(result, {name: gradient as the optimizer saw it}, {name: Adam first moment}) of one step."""
    cfg = tiny_config(model__contrastive=contrastive)
    model, device = build_model(cfg).to(dtype), torch.device("cpu")
    optimizer = build_optimizer(model, 1e-3, 0.0, device)
    kwargs = dict(grad_mod_alpha=0.1 if grad_mod else None, compile=compile, seed=7, clip_grad_norm=clip)
    precision = choose_precision("fp32", device)
    if accum_steps == 1:
        step = TrainStep(model, model, optimizer, precision, device, **kwargs)
    else:
        step = AccumulatingTrainStep(model, model, optimizer, precision, device, accum_steps, **kwargs)
    grads = {}
    if not compile:  # snapshot the gradients the optimizer steps with (after OGM-GE and clipping)
        real_step = optimizer.step

        def spy(*args, **kw):
            grads.update({n: p.grad.clone() for n, p in model.named_trainable_parameters()})
            return real_step(*args, **kw)
        optimizer.step = spy
    audio, image, label = random_batch(batch, 2, cfg.model.img_size, cfg.model.num_classes, seed=3)
    result = step(audio.to(dtype), image.to(dtype), label, step=0)
    names = {id(p): n for n, p in model.named_trainable_parameters()}
    moments = {names[id(p)]: s["exp_avg"].clone() for p, s in optimizer.state.items()}
    return result, grads, moments


def _assert_same(actual: dict, expected: dict, what: str, per_tensor: float = 5e-5):
    """Relative error (in norm) <= 1e-5 over all tensors together and <= `per_tensor` for each: in fp32 the
    bias gradients of the projection heads are sums of nearly cancelling rows, so summation order alone moves
    them by ~1e-5 relative (the float64 test shows the two computations agree to rounding)."""
    assert set(actual) == set(expected) and expected
    for name, ref in expected.items():
        error = (actual[name] - ref).norm() / ref.norm()
        assert error <= per_tensor, f"{what} {name}: relative error {error:.3g}"
    diff = torch.cat([(actual[n] - expected[n]).flatten() for n in expected])
    ref = torch.cat([expected[n].flatten() for n in expected])
    assert diff.norm() / ref.norm() <= 1e-5


@pytest.mark.parametrize("grad_mod,clip", [(False, None), (True, None), (True, 0.05)],
                         ids=["plain", "ogm-ge", "ogm-ge+clip"])
def test_accumulated_step_equals_whole_batch_step(grad_mod, clip):
    whole, whole_grads, _ = _one_step(1, grad_mod, clip)
    accum, accum_grads, _ = _one_step(4, grad_mod, clip)
    assert set(whole) == set(accum)
    assert whole["loss_contrastive"] > 0 and whole["loss_bg"] > 0  # every term is on; batch has BG rows
    for k in whole:
        torch.testing.assert_close(accum[k], whole[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    _assert_same(accum_grads, whole_grads, "grad")
    assert all(g.abs().max() > 0 for g in whole_grads.values())  # not a vacuous comparison


def test_accumulated_step_is_exact_in_float64():
    whole, whole_grads, _ = _one_step(1, True, None, dtype=torch.float64)
    accum, accum_grads, _ = _one_step(4, True, None, dtype=torch.float64)
    torch.testing.assert_close(accum["loss"], whole["loss"], rtol=1e-12, atol=0)
    _assert_same(accum_grads, whole_grads, "grad", per_tensor=1e-12)


def test_naive_accumulation_would_differ():
    """The test above can fail: micro-batch contrastive losses (fewer negatives) change the gradient."""
    _, whole_grads, _ = _one_step(1, False, None)
    _, accum_grads, _ = _one_step(4, False, None)
    _, micro_grads, _ = _one_step(1, False, None, batch=2)
    name = next(n for n in whole_grads if "proj" in n or "contrastive" in n)
    assert not torch.allclose(micro_grads[name], whole_grads[name], rtol=1e-3)
    _assert_same({name: accum_grads[name]}, {name: whole_grads[name]}, "grad")


def test_accumulation_without_contrastive_loss():
    whole, whole_grads, _ = _one_step(1, False, None, contrastive="none")
    accum, accum_grads, _ = _one_step(2, False, None, contrastive="none")
    assert "loss_contrastive" not in whole and "loss_contrastive" not in accum
    torch.testing.assert_close(accum["loss"], whole["loss"], rtol=1e-5, atol=1e-6)
    _assert_same(accum_grads, whole_grads, "grad")


def test_accumulated_step_under_compile_equals_whole_batch_step():
    torch._dynamo.reset()
    whole, _, whole_m = _one_step(1, True, 0.05, compile=True, batch=4)
    accum, _, accum_m = _one_step(2, True, 0.05, compile=True, batch=4)
    for k in whole:
        torch.testing.assert_close(accum[k], whole[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    _assert_same(accum_m, whole_m, "Adam first moment")  # = 0.1 x the gradient after one step


def test_batch_that_does_not_split_is_refused():
    cfg = tiny_config()
    model, device = build_model(cfg), torch.device("cpu")
    step = AccumulatingTrainStep(model, model, build_optimizer(model, 1e-3, 0.0, device),
                                 choose_precision("fp32", device), device, 3, compile=False)
    with pytest.raises(ValueError, match="accum_steps=3"):
        step(*random_batch(4, 1, cfg.model.img_size, cfg.model.num_classes), step=0)


@pytest.mark.parametrize("overrides,message", [
    ({"train.accum_steps": "0"}, "train.accum_steps must be >= 1"),
    ({"train.batch_size": "6", "train.accum_steps": "4"},
     "train.batch_size=6 must be divisible by train.accum_steps=4"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(tiny_config(), overrides).validate()


def test_a_run_may_resume_with_other_accum_steps():
    """Accumulation is exact, so the trajectory does not depend on it (e.g. resume on a smaller GPU)."""
    saved = tiny_config(train__batch_size="8").to_dict()
    check_resume_config(saved, tiny_config(train__batch_size="8", train__accum_steps="4"), "latest.pt")
    with pytest.raises(CheckpointError, match="train.batch_size"):  # the global batch itself may not change
        check_resume_config(saved, tiny_config(train__batch_size="4", train__accum_steps="4"), "latest.pt")


def _first_logged_loss(root, out_dir, accum_steps: int, compile: bool = False) -> float:
    cfg = tiny_config(data__root=str(root), data__num_workers="0", data__bg_prob="0.3", train__out_dir=str(out_dir),
                      train__batch_size="4", train__max_steps="1", train__precision="fp32",
                      train__accum_steps=str(accum_steps), train__compile=str(compile).lower())
    run_train(cfg, test_split=None)
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return next(r for r in records if r["event"] == "train" and r["step"] == 1)["loss"]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_logged_loss_at_step_one_is_the_same_for_accum_1_and_2(tmp_path, compile):
    torch._dynamo.reset()
    root = synthesize(tmp_path / "data", num_classes=5, clips_per_class=4, seed=1, image_size=32)
    one = _first_logged_loss(root, tmp_path / "a1", 1, compile)
    two = _first_logged_loss(root, tmp_path / "a2", 2, compile)
    assert one == pytest.approx(two, rel=1e-5)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_two_ranks_with_accumulation_equal_one_process_on_the_global_batch(tmp_path, compile):
    """torchrun, 2 gloo ranks x 2 micro-batches of 1 clip = one process on the global batch of 4 (BG rows on)."""
    torch._dynamo.reset()
    root = synthesize(tmp_path / "data", num_classes=5, clips_per_class=8, seed=1, image_size=32)
    overrides = {"data.root": str(root), "data.bg_prob": "0.3", "data.num_workers": "0", "train.batch_size": "4",
                 "train.max_steps": "2", "train.precision": "fp32", "train.compile": str(compile).lower(),
                 "train.lr": "1e-3",
                 "train.grad_mod": "true", "train.clip_grad_norm": "0.5"}
    cfg = apply_overrides(tiny_config(), {**overrides, "train.out_dir": str(tmp_path / "single")})
    single = read_checkpoint(run_train(cfg, test_split=None)[0].latest)
    args = [a for k, v in {**overrides, "train.accum_steps": "2", "train.out_dir": str(tmp_path / "ddp")}.items()
            for a in (f"--{k}", v)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "maavt_fast", "train", "--preset", "tiny", "--no-test", *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 x cpu" in proc.stdout and "in 2 micro-batches" in proc.stdout
    ddp = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pt")
    assert single["loop"]["step"] == ddp["loop"]["step"] == 2
    for i, state in single["optimizer"]["state"].items():  # Adam's moments hold the gradients of both steps
        for key in ("exp_avg", "exp_avg_sq"):
            ref = state[key]
            torch.testing.assert_close(ddp["optimizer"]["state"][i][key], ref, rtol=1e-4,
                                       atol=1e-5 * ref.abs().max().item(), msg=lambda m: f"param {i} {key}: {m}")
    losses = [[r["loss"] for r in run["loop"]["history"] if r["event"] == "train"] for run in (single, ddp)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0]


def test_accumulation_with_the_sigmoid_loss_is_refused_up_front():
    from maavt_fast.config import preset

    with pytest.raises(ConfigError, match="accum_steps > 1 supports model.contrastive_loss='infonce' only"):
        preset("tiny", {"train.accum_steps": "2", "model.contrastive_loss": "sigmoid"}).validate()
