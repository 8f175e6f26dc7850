"""The custom ops pass torch.library.opcheck and trace under torch.compile(fullgraph=True); the kernels
also compile for sm_90 (PTX + cubin) without a GPU.

The Triton kernels run on CPU in the interpreter: TRITON_INTERPRET=1 must be set before import.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from maavt_fast.kernels._launch import LAUNCHES
from maavt_fast.ops import (GroupAttention, blockwise_contrastive_loss, blockwise_projection,
                            group_attention_reference)


def _randn(*shape, device, grad=False):
    return torch.randn(*shape, device=device).requires_grad_(grad)


def test_opcheck_contrastive(device):
    keep = torch.tensor([True, False, True, True, True], device=device)
    audio = _randn(5, 2, 20, device=device).transpose(0, 1).requires_grad_()  # non-contiguous: fake strides too
    visual, temp = _randn(2, 5, 20, device=device, grad=True), torch.tensor(0.1, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.maavt.blockwise_contrastive_fwd.default, (audio, visual, keep, temp, 0, 5, True))
    with torch.no_grad():
        _, lse1, lse2 = torch.ops.maavt.blockwise_contrastive_fwd(audio, visual, keep, temp, 0, 5, True)
    grad = torch.ones(2, device=device)
    torch.library.opcheck(torch.ops.maavt.blockwise_contrastive_bwd.default,
                          (grad, audio.detach(), visual.detach(), keep, temp.detach(), lse1, lse2, 0, True))


def test_opcheck_group_attention(device):
    G, M, n, D = 2, 2, 5, 24
    args = [_randn(G, n, M, D, device=device).transpose(1, 2).requires_grad_(),  # non-contiguous x
            _randn(G, 3 * D, D, device=device, grad=True),
            _randn(G, 3 * D, device=device, grad=True), _randn(G, D, D, device=device, grad=True),
            _randn(G, D, device=device, grad=True)]
    torch.library.opcheck(torch.ops.maavt.group_attention_fwd.default, (*args, 2))
    with torch.no_grad():
        _, o = torch.ops.maavt.group_attention_fwd(*args, 2)
    plain = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.maavt.group_attention_bwd.default,
                          (torch.randn_like(plain[0]), *plain[:4], o, 2))


class _TinyContrastiveModel(torch.nn.Module):
    """LSA over learnable tokens, then the blockwise projections and the contrastive loss (both ops)."""

    def __init__(self, blocks=2, dim=24, proj=16, impl="triton"):
        super().__init__()
        self.lsa = GroupAttention(1, dim, 2, impl=impl)
        self.tokens = torch.nn.Parameter(torch.randn(1, 1, 5, dim))
        self.w_a, self.w_v = (torch.nn.Parameter(0.2 * torch.randn(blocks, proj, dim)) for _ in range(2))
        self.b_a, self.b_v = (torch.nn.Parameter(torch.zeros(blocks, proj)) for _ in range(2))
        self.temperature = torch.nn.Parameter(torch.tensor(0.07))
        self.impl = impl

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        shared = self.lsa(self.tokens).mean(dim=2).reshape(1, 1, -1)  # (1, 1, D)
        feats = x + shared  # (L, B, D)
        audio = blockwise_projection(feats, self.w_a, self.b_a)
        visual = blockwise_projection(feats.flip(1).roll(1, dims=1), self.w_v, self.b_v)
        return blockwise_contrastive_loss(audio, visual, keep, self.temperature, impl=self.impl)


def test_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    model = _TinyContrastiveModel().to(device)
    x, keep = torch.randn(2, 7, 24, device=device), torch.rand(7, device=device) > 0.3
    eager = model(x, keep)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    before = LAUNCHES.copy()
    loss = compiled(x, keep)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for name in ("contrastive_fwd", "contrastive_bwd", "group_attention_fwd", "group_attention_bwd"):
        assert LAUNCHES[name] > before[name], f"{name} did not run inside the compiled graph"
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_compiled_reference_path_needs_no_kernels():
    x = torch.randn(1, 1, 5, 16)
    module = GroupAttention(1, 16, 2, impl="torch")
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    want = group_attention_reference(x, module.qkv_weight, module.qkv_bias, module.proj_weight, module.proj_bias, 2)
    torch.testing.assert_close(out, want)


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter accepts code the GPU compiler rejects: compile every kernel for sm_90 (PTX + cubin).

    Quick mode of the compile check: the largest contrastive configs and group attention in bf16 and fp16;
    none may spill registers and the large contrastive tiles must use wgmma (the CLI checks every config).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch; from maavt_fast.kernels._aot_check import check, problems, table\n"
            "rows = check(90, (torch.bfloat16, torch.float16), quick=True, ops=('contrastive', 'group_attention'))\n"
            "print(table(rows)); print('PROBLEMS', problems(rows))\n"
            "print(sum(r.needs_wgmma() for r in rows), len(rows))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PROBLEMS []" in out.stdout, out.stdout
    needs_wgmma, compiled = out.stdout.split()[-2:]
    assert needs_wgmma == "4"  # forward and backward, bf16 and fp16
    assert compiled == "10"  # 5 kernels x 2 dtypes


def test_autotuner_offers_the_configs_of_the_input_dtype():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch; from maavt_fast.kernels import contrastive as c, sigmoid as s\n"
            "for tuned, configs in ((c._FORWARD_TUNED, c.FORWARD_CONFIGS), (s.sigmoid_fwd, s.FWD_CONFIGS),\n"
            "                       (s.sigmoid_bwd, s.BWD_CONFIGS)):\n"
            "    for dt in (torch.bfloat16, torch.float32):\n"
            "        kept = tuned.early_config_prune(tuned.configs, {'a_ptr': torch.empty(0, dtype=dt)})\n"
            "        print(len(kept), len(configs[torch.empty(0, dtype=dt).element_size()]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 6, out.stdout
    for line in lines:
        kept, expected = line.split()
        assert kept == expected
