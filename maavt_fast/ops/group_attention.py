"""Multi-head self-attention inside small token groups (the MA-AVT "LSA", docs/model.md#learnable-tokens-and-lsa).

Shapes: x `(G, M, n, D)` — G groups with their own weights, M sequences per group, n tokens;
qkv_weight `(G, 3D, D)`, qkv_bias `(G, 3D)`, proj_weight `(G, D, D)`, proj_bias `(G, D)`.
Output `(G, M, n, D)` = per group `proj(softmax(q kᵀ / sqrt(D/heads)) v)`; no norm, no residual.
All five tensors share one dtype; under autocast they are cast to its dtype first (like `nn.Linear`),
so the output is e.g. bf16 under bf16 autocast, as `nn.MultiheadAttention`'s is.
`fp32_precision` ("ieee" | "tf32") sets the Triton kernels' dots for fp32 inputs; bf16/fp16 inputs always
use their own dtype on the tensor cores with fp32 accumulation (softmax in fp32).

Implementations: the readable reference below, and fused Triton kernels (`maavt_fast.kernels.group_attention`,
n <= its `MAX_TOKENS`; impl="auto" runs the reference for longer sequences) behind the `torch.library` custom
ops `maavt::group_attention_fwd/_bwd`.
"""
from __future__ import annotations

import torch

from maavt_fast.ops._arguments import check_same_dtype, follow_autocast
from maavt_fast.ops._dispatch import check_fp32_precision, load_kernels, unsupported_dtype, use_triton
from maavt_fast.ops.release import explicit_attention

_KERNELS = load_kernels("group_attention")


def group_attention_reference(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                              proj_weight: torch.Tensor, proj_bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Readable PyTorch reference."""
    G, M, n, D = x.shape
    hd = D // num_heads
    qkv = torch.einsum("gmnd,ged->gmne", x, qkv_weight) + qkv_bias[:, None, None, :]
    q, k, v = qkv.reshape(G, M, n, 3, num_heads, hd).permute(3, 0, 1, 4, 2, 5)  # each (G, M, H, n, hd)
    o = explicit_attention(q, k, v)[0].transpose(2, 3).reshape(G, M, n, D)
    return torch.einsum("gmnd,ged->gmne", o, proj_weight) + proj_bias[:, None, None, :]


def _check_inputs(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (G, M, n, D); got {tuple(x.shape)}")
    G, _, _, D = x.shape
    expected = {"qkv_weight": (G, 3 * D, D), "qkv_bias": (G, 3 * D), "proj_weight": (G, D, D), "proj_bias": (G, D)}
    for name, t in zip(expected, (qkv_weight, qkv_bias, proj_weight, proj_bias)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must be {expected[name]} for x of shape {tuple(x.shape)}; got {tuple(t.shape)}")
    if num_heads < 1 or D % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide D={D}")


@torch.library.custom_op("maavt::group_attention_fwd", mutates_args=())
def _fused_forward(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, proj_weight: torch.Tensor,
                   proj_bias: torch.Tensor, num_heads: int, fp32_precision: str = "ieee"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward -> (output (G, M, n, D), attention output before the projection, fp32)."""
    return _KERNELS.group_attention_forward(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads,
                                            fp32_precision)


@_fused_forward.register_fake
def _(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads, fp32_precision="ieee"):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.float32)


@torch.library.custom_op("maavt::group_attention_bwd", mutates_args=())
def _fused_backward(grad: torch.Tensor, x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                    proj_weight: torch.Tensor, o: torch.Tensor, num_heads: int, fp32_precision: str = "ieee"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward -> gradients of (x, qkv_weight, qkv_bias, proj_weight, proj_bias)."""
    return _KERNELS.group_attention_backward(grad, x, qkv_weight, qkv_bias, proj_weight, o, num_heads,
                                             fp32_precision)


@_fused_backward.register_fake
def _(grad, x, qkv_weight, qkv_bias, proj_weight, o, num_heads, fp32_precision="ieee"):
    G, _, _, D = x.shape
    return (x.new_empty(x.shape), qkv_weight.new_empty(qkv_weight.shape), qkv_bias.new_empty(qkv_bias.shape),
            proj_weight.new_empty(proj_weight.shape), qkv_bias.new_empty(G, D))


def _setup_context(ctx, inputs, output):
    x, qkv_weight, qkv_bias, proj_weight, _, num_heads, fp32_precision = inputs
    ctx.save_for_backward(x, qkv_weight, qkv_bias, proj_weight, output[1])
    ctx.num_heads, ctx.fp32_precision = num_heads, fp32_precision


def _backward(ctx, grad, _grad_o):
    return (*_fused_backward(grad, *ctx.saved_tensors, ctx.num_heads, ctx.fp32_precision), None, None)


_fused_forward.register_autograd(_backward, setup_context=_setup_context)


def group_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, proj_weight: torch.Tensor,
                    proj_bias: torch.Tensor, num_heads: int, impl: str = "auto",
                    fp32_precision: str = "ieee") -> torch.Tensor:
    """Functional API; `impl` is "auto" (Triton on CUDA where the kernel supports the inputs, else the
    reference), "torch" or "triton"; `fp32_precision` see the module doc."""
    x, qkv_weight, qkv_bias, proj_weight, proj_bias = follow_autocast(x, qkv_weight, qkv_bias, proj_weight,
                                                                      proj_bias)
    check_same_dtype("group_attention", x=x, qkv_weight=qkv_weight, qkv_bias=qkv_bias, proj_weight=proj_weight,
                     proj_bias=proj_bias)
    check_fp32_precision(fp32_precision)
    _check_inputs(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads)
    if use_triton(impl, "group_attention", _KERNELS, x, qkv_weight, qkv_bias, proj_weight, proj_bias,
                  unsupported=_unsupported(x)):
        return _fused_forward(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads, fp32_precision)[0]
    return group_attention_reference(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads)


def _unsupported(x: torch.Tensor) -> str | None:
    """Why the kernel cannot take `x` (G, M, n, D), or None."""
    if _KERNELS is not None and x.shape[2] > _KERNELS.MAX_TOKENS:
        return f"sequences of more than {_KERNELS.MAX_TOKENS} tokens"
    return unsupported_dtype(x.dtype)


class GroupAttention(torch.nn.Module):
    """G independent small self-attentions (stacked weights), run in one call: (G, M, n, D) -> (G, M, n, D)."""

    def __init__(self, groups: int, dim: int, num_heads: int, impl: str = "auto"):
        super().__init__()
        self.num_heads, self.impl = num_heads, impl
        lin = [torch.nn.Linear(dim, 3 * dim) for _ in range(groups)]
        proj = [torch.nn.Linear(dim, dim) for _ in range(groups)]
        self.qkv_weight = torch.nn.Parameter(torch.stack([m.weight.data for m in lin]))
        self.qkv_bias = torch.nn.Parameter(torch.stack([m.bias.data for m in lin]))
        self.proj_weight = torch.nn.Parameter(torch.stack([m.weight.data for m in proj]))
        self.proj_bias = torch.nn.Parameter(torch.stack([m.bias.data for m in proj]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_attention(x, self.qkv_weight, self.qkv_bias, self.proj_weight, self.proj_bias, self.num_heads,
                               self.impl)

    def extra_repr(self) -> str:
        groups, dim = self.proj_weight.shape[:2]
        return f"groups={groups}, dim={dim}, num_heads={self.num_heads}, impl={self.impl!r}"
