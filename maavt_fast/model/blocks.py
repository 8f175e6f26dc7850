"""Running frozen timm ViT blocks over both streams at once.

Tokens of all streams live in one flat matrix `x (T, D)`: stream s contributes `n_s` sequences of
`L_s` tokens, stream-major (a `Layout`). Every linear layer and norm runs once over all T rows;
attention stays inside each sequence. Equal-length streams are attended as one batch of
`sum(n_s)` sequences; unequal ones per stream (SDPA/math) or packed in one call (xformers
`BlockDiagonalMask`). Attention backends: "sdpa" (CPU and GPU), "math" (explicit softmax),
"xformers" (CUDA with xformers installed), "auto" (see `resolve_backend`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maavt_fast._extras import requires
from maavt_fast.ops.release import explicit_attention

Layout = tuple[tuple[int, int], ...]  # ((num_sequences, seq_len), ...) per stream, in row order


def stream_views(x: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """Flat `(T, D)` -> per-stream views `(n_s, L_s, D)` (no copy)."""
    parts = x.split([n * length for n, length in layout])
    return [p.view(n, length, x.shape[-1]) for p, (n, length) in zip(parts, layout)]


def _merged(layout: Layout) -> Layout:
    """Merge neighbouring streams of equal sequence length so they are attended in one batch."""
    out: list[tuple[int, int]] = []
    for n, length in layout:
        if out and out[-1][1] == length:
            out[-1] = (out[-1][0] + n, length)
        else:
            out.append((n, length))
    return tuple(out)


def _batched_attention(qkv: torch.Tensor, layout: Layout, num_heads: int, backend: str) -> torch.Tensor:
    d = qkv.shape[-1] // 3
    outs = []
    for part, (n, length) in zip(qkv.split([n * l for n, l in layout]), layout):
        q, k, v = part.view(n, length, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v) if backend == "sdpa" else explicit_attention(q, k, v)[0]
        outs.append(o.transpose(1, 2).reshape(n * length, d))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _xformers_attention(qkv: torch.Tensor, layout: Layout, num_heads: int) -> torch.Tensor:
    with requires("xformers", __name__):
        import xformers.ops as xops
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    t, d = qkv.shape[0], qkv.shape[-1] // 3
    if len(layout) == 1:
        n, length = layout[0]
        q, k, v = qkv.view(n, length, 3, num_heads, d // num_heads).unbind(2)
        return xops.memory_efficient_attention(q, k, v).reshape(t, d)
    seqlens = [length for n, length in layout for _ in range(n)]
    q, k, v = qkv.view(1, t, 3, num_heads, d // num_heads).unbind(2)
    out = xops.memory_efficient_attention(q, k, v, attn_bias=BlockDiagonalMask.from_seqlens(seqlens))
    return out.reshape(t, d)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """"auto" -> "sdpa", except "math" on CPU under bf16 autocast: there PyTorch's CPU SDPA kernels are slower
    than explicit attention at MA-AVT's ~200 tokens (ViT-S, B=8 step: 0.75 s vs 0.54 s) at equal peak memory."""
    if backend != "auto":
        return backend
    cpu_bf16 = (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return "math" if cpu_bf16 else "sdpa"


def attention(qkv: torch.Tensor, layout: Layout, num_heads: int, backend: str) -> torch.Tensor:
    """Multi-head self-attention within each sequence: `qkv (T, 3D)` -> `(T, D)` (heads concatenated)."""
    layout = _merged(layout)
    if backend == "xformers":
        return _xformers_attention(qkv, layout, num_heads)
    return _batched_attention(qkv, layout, num_heads, backend)


def cls_attention_map(q: torch.Tensor, k: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The release's visualisation map (docs/model.md#attention-maps) from one stream's `q, k (n, L, H, hd)`.

    softmax over the patch keys of the head-mean of the scaled CLS-query logits -> `(n, num_patches)`.
    """
    logits = torch.einsum("nhd,nphd->nhp", q[:, 0], k[:, 1:1 + num_patches]) * q.shape[-1] ** -0.5
    return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)).mean(dim=1), dim=-1)


def run_block(blk, x: torch.Tensor, layout: Layout, backend: str, map_stream: int | None = None,
              num_patches: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frozen timm `Block` over flat tokens `x (T, D)`; optionally the CLS map of stream `map_stream`."""
    attn = blk.attn
    d = x.shape[-1]
    qkv = F.linear(blk.norm1(x), attn.qkv.weight, attn.qkv.bias)
    if not (isinstance(attn.q_norm, torch.nn.Identity) and isinstance(attn.k_norm, torch.nn.Identity)):
        q, k, v = qkv.view(-1, 3, attn.num_heads, d // attn.num_heads).unbind(1)
        qkv = torch.stack([attn.q_norm(q), attn.k_norm(k), v], dim=1).view(-1, 3 * d)
    amap = None
    if map_stream is not None:
        n, length = layout[map_stream]
        view = stream_views(qkv, layout)[map_stream].view(n, length, 3, attn.num_heads, d // attn.num_heads)
        amap = cls_attention_map(view[:, :, 0], view[:, :, 1], num_patches)
    o = attn.norm(attention(qkv, layout, attn.num_heads, backend))
    x = x + blk.ls1(attn.proj(o))
    x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return x, amap
