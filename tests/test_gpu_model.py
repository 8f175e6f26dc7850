"""The model on CUDA (run by benchmarks/gpu_check.sh): fast path vs release order in fp32, the xformers
backend, bf16 autocast, the compiled training step and CUDA-graph capture of the inference forward.

fp32 comparisons disable TF32 (cuDNN convolutions use it by default), so what remains is rounding:
logits and losses abs 1e-4.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast.config import preset
from maavt_fast.model import MAAVT
from maavt_fast.model.reference import ReferenceMAAVT

pytestmark = pytest.mark.gpu  # deselected by `make test`; without CUDA they fail, never skip

ATOL = 1e-4


def _vit_base_depth2(**overrides: str):
    """ViT-B/16 at 224 (random weights), first 2 blocks: the real head dims and sequence length, cheap."""
    return preset("vggsound", {"model.depth": "2"} | {k.replace("__", "."): v for k, v in overrides.items()}).model


CONFIGS = {"tiny_32px": lambda **o: tiny_config(**o).model, "vit_base_224_depth2": _vit_base_depth2}
OUTPUTS = ("fg_logits", "bg_logits", "attn", "loss", "loss_fg", "loss_bg", "loss_contrastive")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _batch(cfg, batch: int = 6):
    return [t.cuda() for t in random_batch(batch, 1, cfg.img_size, cfg.num_classes)]


def _model(cfg, cls=MAAVT, like: torch.nn.Module | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls(cfg)
    if like is not None:
        model.load_state_dict(like.state_dict())
    return model.cuda()


def _assert_outputs_close(a, b) -> None:
    for name in OUTPUTS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x.float(), y.float(), atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_matches_reference_fp32_on_cuda(name):
    cfg = CONFIGS[name]()
    fast = _model(cfg)
    ref = _model(cfg, ReferenceMAAVT, like=fast)
    batch = _batch(cfg)
    _assert_outputs_close(fast(*batch, return_attn=True), ref(*batch, return_attn=True))


@pytest.mark.parametrize("name", CONFIGS)
def test_xformers_backend_matches_sdpa(name):
    pytest.importorskip("xformers.ops")
    cfg_x = CONFIGS[name](model__attention="xformers")
    sdpa = _model(CONFIGS[name]())
    xf = _model(cfg_x, like=sdpa)
    batch = _batch(cfg_x)
    try:
        out_x = xf(*batch, return_attn=True)
    except NotImplementedError as e:  # a wheel built for another CUDA / torch has no usable kernels
        pytest.skip(f"xformers kernels unavailable: {e}")
    _assert_outputs_close(out_x, sdpa(*batch, return_attn=True))


def test_xformers_packs_unequal_streams():
    pytest.importorskip("xformers.ops")
    over = {"model__n_audio_tokens": "2", "model__n_visual_tokens": "4"}
    sdpa = _model(tiny_config(**over).model)
    xf = _model(tiny_config(model__attention="xformers", **over).model, like=sdpa)
    batch = _batch(sdpa.cfg)
    try:
        out_x = xf(*batch)
    except NotImplementedError as e:
        pytest.skip(f"xformers kernels unavailable: {e}")
    _assert_outputs_close(out_x, sdpa(*batch))


@pytest.mark.parametrize("name", CONFIGS)
def test_bf16_autocast_gives_finite_loss_and_gradients(name):
    cfg = CONFIGS[name]()
    model = _model(cfg)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(*_batch(cfg))
    assert out.fg_logits.dtype == torch.bfloat16
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    for k, p in model.named_trainable_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k


def test_compiled_train_step_matches_eager_on_cuda():
    from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision

    cfg = CONFIGS["vit_base_224_depth2"]()
    batch = _batch(cfg, batch=8)
    device = torch.device("cuda")
    losses = {}
    for compiled in (False, True):
        model = _model(cfg)
        step = TrainStep(model, model, build_optimizer(model, 1e-4, 0.0, device), choose_precision("fp32", device),
                         device, compile=compiled)
        losses[compiled] = [step(*batch, i)["loss"].item() for i in range(3)]
    assert all(math.isfinite(v) for v in losses[True])
    # Same weights, inputs and Adam updates: the compiled step follows the eager one up to rounding.
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), atol=1e-3, rtol=1e-3)


def test_compiled_train_step_bf16_on_cuda():
    from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision

    cfg = CONFIGS["vit_base_224_depth2"]()
    device = torch.device("cuda")
    model = _model(cfg)
    step = TrainStep(model, model, build_optimizer(model, 1e-4, 0.0, device), choose_precision("auto", device),
                     device, compile=True)
    assert step.precision.name == "bf16"
    out = [step(*_batch(cfg, batch=8), i) for i in range(2)]
    assert all(math.isfinite(o["loss"].item()) for o in out)


def test_inference_forward_captures_in_a_cuda_graph():
    """No host synchronisation in the eval forward: it records into a CUDA graph and replays exactly."""
    cfg = CONFIGS["vit_base_224_depth2"]()
    model = _model(cfg).eval()
    audio, image, _ = _batch(cfg)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up off the default stream, as graph capture requires
            model(audio, image)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static = model(audio, image).fg_logits
    audio.copy_(torch.randn_like(audio))
    graph.replay()
    with torch.no_grad():
        expected = model(audio, image).fg_logits
    torch.testing.assert_close(static, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_sigmoid_contrastive_loss_on_cuda(name):
    """model.contrastive_loss=sigmoid runs the fused kernels: equal to the reference on the output's features in
    fp32; finite loss and gradients (scale and bias included) under bf16 autocast."""
    from maavt_fast.model.loss import MAAVTLoss
    from maavt_fast.ops import blockwise_sigmoid_loss_reference

    cfg = CONFIGS[name](model__contrastive_loss="sigmoid")
    model = _model(cfg)
    audio, image, label = _batch(cfg)
    with torch.no_grad():
        out = MAAVTLoss(cfg)(model(audio, image), label)
    za, zv = out.contrastive_features
    expected = blockwise_sigmoid_loss_reference(za, zv, label.reshape(-1) >= 0, *out.contrastive_scale_bias)
    torch.testing.assert_close(out.loss_contrastive, expected, atol=ATOL, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(audio, image, label)
    assert math.isfinite(out.loss_contrastive.item())
    out.loss.backward()
    for p in (model.contrastive_log_scale, model.contrastive_bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).any()
