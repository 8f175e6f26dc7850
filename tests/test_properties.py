"""Property tests (hypothesis): both ops against the release's order of computation over random shapes, masks,
temperatures and dtypes, and the data plan's determinism in (seed, epoch, index).

The op oracles (`maavt_fast.ops.release`) are written independently of the ops' references (a Python loop with
boolean indexing and one module per group, not masked batched logits), computed in fp64 on the same inputs.
Tolerances per input dtype: the op tests' tables. Example counts are small and fixed (derandomized) so that the file
stays quick with the kernels in the CPU interpreter.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_data_media import tiny_vggsound
from test_ops_contrastive import TOL as CONTRASTIVE_TOL
from test_ops_group_attention import TOL as ATTENTION_TOL
from maavt_fast.data.dataset import ClipDataset
from maavt_fast.data.plan import plan_sample
from maavt_fast.data.sampling import epoch_order, shard
from maavt_fast.ops import blockwise_contrastive_loss, group_attention
from maavt_fast.ops.release import release_contrastive_loss, release_group_attention

OPS = settings(max_examples=8, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], upstream: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Gradients of <out, upstream> (upstream 1 by default); zeros for leaves out does not depend on."""
    out = out + 0 * sum(t.sum() for t in leaves)  # the release loop returns a constant 0 when no row is kept
    grads = torch.autograd.grad(out, leaves, upstream)
    return list(grads)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


@st.composite
def contrastive_problems(draw):
    L, B, P = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 40))
    keep = draw(st.lists(st.booleans(), min_size=B, max_size=B))
    temperature = draw(st.floats(0.05, 1.0))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(L, B, P, generator=g)
    visual = 0.5 * audio + torch.randn(L, B, P, generator=g)  # correlated pairs, as after some training
    return audio, visual, torch.tensor(keep), temperature


@OPS
@given(problem=contrastive_problems(), dtype=DTYPES, impl=st.sampled_from(["torch", "triton"]))
def test_contrastive_loss_matches_the_release_loop(device, problem, dtype, impl):
    audio, visual, keep, temperature = problem
    if impl == "torch" and dtype != torch.float32:
        dtype = torch.float32  # the reference computes in fp32 whatever the input; one dtype covers it
    audio, visual = audio.to(device, dtype).requires_grad_(), visual.to(device, dtype).requires_grad_()
    keep = keep.to(device)
    got = blockwise_contrastive_loss(audio, visual, keep, temperature, impl=impl)
    a64, v64 = audio.detach().double().requires_grad_(), visual.detach().double().requires_grad_()
    want = release_contrastive_loss(a64, v64, keep, temperature)
    _close(got, want.detach(), CONTRASTIVE_TOL[dtype], "loss")
    for name, g, w in zip(("audio", "visual"), _grads(got, [audio, visual]), _grads(want, [a64, v64])):
        _close(g, w, CONTRASTIVE_TOL[dtype], f"d {name}")


@st.composite
def group_attention_problems(draw):
    G, M, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 9))
    heads, head_dim = draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 8))
    D = heads * head_dim
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    shapes = [(G, M, n, D), (G, 3 * D, D), (G, 3 * D), (G, D, D), (G, D)]
    scales = [1.0] + [D ** -0.5] * 4  # nn.Linear-like weights
    return [torch.randn(s, generator=g) * c for s, c in zip(shapes, scales)], heads


@OPS
@given(problem=group_attention_problems(), dtype=DTYPES, impl=st.sampled_from(["torch", "triton"]))
def test_group_attention_matches_separate_release_modules(device, problem, dtype, impl):
    tensors, heads = problem
    if impl == "torch" and dtype != torch.float32:
        dtype = torch.float32  # low-precision inputs are the kernel's concern; the reference runs in their dtype
    leaves = [t.to(device, dtype).requires_grad_() for t in tensors]
    upstream = torch.randn(tensors[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = group_attention(*leaves, heads, impl=impl)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    want = release_group_attention(*leaves64, heads)
    _close(got, want.detach(), ATTENTION_TOL[dtype], "output")
    names = ("x", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias")
    for name, g, w in zip(names, _grads(got, leaves, upstream), _grads(want, leaves64, upstream.double())):
        _close(g, w, ATTENTION_TOL[dtype], f"d {name}")


# ----------------------------------------------------------------------------------------------- data plan

@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    cfg = tiny_vggsound(tmp_path_factory.mktemp("plan"), classes=3, clips=4)
    cfg.bg_prob = 0.5  # background partners drawn often
    return ClipDataset(cfg, "train", 32, seed=0)


PLANS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
SEEDS, EPOCHS = st.integers(0, 2 ** 31 - 1), st.integers(0, 1000)


@PLANS
@given(seed=SEEDS, epoch=EPOCHS, data=st.data())
def test_a_plan_depends_only_on_seed_epoch_and_index(train_set, seed, epoch, data):
    n = len(train_set.clips)
    index = data.draw(st.integers(0, n - 1), "index")
    others = data.draw(st.lists(st.integers(0, n - 1), max_size=5), "planned in between")

    def plan(i, e=epoch, train=True):
        return plan_sample(train_set.clips, train_set.clip_labels, i, e, seed, train_set.cfg, train)

    first = plan(index)
    for i in others:
        plan(i, epoch + 1)
    assert plan(index) == first
    assert plan(index, epoch + 1, train=False) == plan(index, epoch, train=False)  # evaluation ignores the epoch
    if first.labels[0] == -1:  # a background pair shows another class's frames
        partner = next(c for c in train_set.clips if c.visual == first.visual)
        assert partner.labels[0] != train_set.clips[index].labels[0]


@PLANS
@given(n=st.integers(0, 50), seed=SEEDS, epoch=EPOCHS, world=st.integers(1, 4), drop_last=st.booleans())
def test_epoch_order_is_a_seeded_permutation_and_ranks_share_it_out(n, seed, epoch, world, drop_last):
    order = epoch_order(n, seed, epoch, shuffle=True)
    assert np.array_equal(order, epoch_order(n, seed, epoch, shuffle=True))
    assert sorted(order.tolist()) == list(range(n))
    parts = [shard(order, rank, world, drop_last) for rank in range(world)]
    assert len({len(idx) for idx, _ in parts}) == 1  # every rank gets as many batches
    real = sorted(int(i) for idx, valid in parts for i in idx[valid])
    expected = sorted(order[:(n // world) * world].tolist()) if drop_last else list(range(n))
    assert real == expected  # each sample on exactly one rank (wrap-around padding is marked invalid)
