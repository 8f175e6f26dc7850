"""Triton kernels of multi-head self-attention inside small groups, all groups in one launch.

Per group g with weights Wqkv (3D, D), bqkv (3D,), Wproj (D, D), bproj (D,), for each of the M
sequences x (n, D), n <= 64, H heads of size d = D / H:
    q, k, v = split(x Wqkvᵀ + bqkv);  o_h = softmax(q_h k_hᵀ / sqrt(d)) v_h;  y = o Wprojᵀ + bproj.
Forward: one launch, a program per (group, sequence, head) writes its head of o (fp32, kept for the
backward); the last head program of a sequence to finish (an atomic arrival counter) then applies
the output projection to all heads, so no program waits and no float atomics are needed.
Backward: two launches. (1) per (group, sequence, head): attention backward -> dqkv (fp32 scratch).
(2) tiles of dWqkv = Σ_tokens dqkvᵀ x, dWproj = Σ_tokens dyᵀ o (with the biases) and dx = dqkv Wqkv.
Those sums run over the tokens of all sequences and heads, which launch (1) spreads over programs:
a second launch keeps them deterministic without a grid-wide barrier.
The problem is small and launch-bound (the model runs n = 5 tokens, G = 3, D = 768): the kernels aim
at few launches, not at large tiles, so the tile sizes below are fixed, not autotuned.

Precision: dots take the inputs' dtype (bf16/fp16 on the tensor cores; q, k, v, the probabilities and
the fp32 scratch are cast to it as flash-attention does) with fp32 accumulation; fp32 inputs use
"ieee" or "tf32" (`fp32_precision`). Softmax, biases and the saved attention output o are fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maavt_fast.kernels._launch import block, dot_precision, launch, mma, upcast_operands

MAX_TOKENS = 64
# Tile sizes and warps: ptxas compiles them without register spills for sm_90 at D = 768, 8 heads.
FEATURE_CHUNK = 16  # features per step of the projections' reduction
PROJ_COLS = 64  # output columns per step of the forward's output projection
GRAD_ROWS = 32  # weight-gradient rows (and dx tokens) per program of the gradient launch
GRAD_COLS = 64  # columns per program of the gradient launch
GRAD_TOKENS = 32  # tokens per step of the weight gradients' reduction (at most)
ATTENTION_WARPS = 4
GRAD_WARPS = 8


@triton.jit
def _load_2d(ptr, r, c, s_r, s_c, n_r, n_c):
    """Tile ptr[r, c] in its stored dtype with rows < n_r and columns < n_c, zero elsewhere."""
    mask = (r < n_r)[:, None] & (c < n_c)[None, :]
    return tl.load(ptr + r[:, None] * s_r + c[None, :] * s_c, mask=mask, other=0.0)


@triton.jit
def _store_2d(ptr, r, c, s_r, s_c, n_r, n_c, value):
    mask = (r < n_r)[:, None] & (c < n_c)[None, :]
    tl.store(ptr + r[:, None] * s_r + c[None, :] * s_c, value, mask=mask)


@triton.jit
def _mm(a_ptr, s_ar, s_ak, b_ptr, s_bk, s_bc, r, c, n_r, n_c, K,
        R: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """A[r, :K] @ B[:K, c] as an fp32 (R, C) tile (rows >= n_r and columns >= n_c read as zero)."""
    acc = tl.zeros([R, C], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        acc = mma(_load_2d(a_ptr, r, kk, s_ar, s_ak, n_r, K), _load_2d(b_ptr, kk, c, s_bk, s_bc, K, n_c), acc,
                  PREC, UPCAST)
    return acc


@triton.jit
def _head_qkv(x_ptr, s_xn, s_xd, w_ptr, s_wo, s_wi, b_ptr, s_b, h, tok, n, hcol, hd, D,
              NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """q, k, v (NP, HP) of head h in x's dtype: x @ Wqkv[rows of q_h, k_h, v_h]ᵀ + biases (fp32 sums)."""
    q = _mm(x_ptr, s_xn, s_xd, w_ptr + (h * hd) * s_wo, s_wi, s_wo, tok, hcol, n, hd, D, NP, HP, BD, PREC, UPCAST)
    k = _mm(x_ptr, s_xn, s_xd, w_ptr + (D + h * hd) * s_wo, s_wi, s_wo, tok, hcol, n, hd, D, NP, HP, BD, PREC,
            UPCAST)
    v = _mm(x_ptr, s_xn, s_xd, w_ptr + (2 * D + h * hd) * s_wo, s_wi, s_wo, tok, hcol, n, hd, D, NP, HP, BD, PREC,
            UPCAST)
    hmask = hcol < hd
    q += tl.load(b_ptr + (h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    k += tl.load(b_ptr + (D + h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    v += tl.load(b_ptr + (2 * D + h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    dtype = x_ptr.dtype.element_ty
    return q.to(dtype), k.to(dtype), v.to(dtype)


@triton.jit
def _softmax_probs(q, k, tok, n, scale, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 row softmax of q kᵀ * scale over the n real key tokens (NP, NP)."""
    s = mma(q, tl.trans(k), tl.zeros([q.shape[0], k.shape[0]], tl.float32), PREC, UPCAST) * scale
    s = tl.where((tok < n)[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def group_attention_fwd_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wproj_ptr, bproj_ptr, o_ptr, y_ptr, count_ptr,
                               M, n, D, H, hd, scale,
                               s_xg, s_xm, s_xn, s_xd, s_qg, s_qo, s_qi, s_qbg, s_qb,
                               s_pg, s_po, s_pi, s_pbg, s_pb, s_yg, s_ym, s_yn, s_yd,
                               NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
                               PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Grid (G, M, H). o: contiguous fp32 (G, M, n, D); count: zeroed int32 (G, M) arrival counters."""
    g = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    o = o_ptr + (g * M + m) * n * D
    tok = tl.arange(0, NP)
    hcol = tl.arange(0, HP)
    q, k, v = _head_qkv(x_ptr + g * s_xg + m * s_xm, s_xn, s_xd, wqkv_ptr + g * s_qg, s_qo, s_qi,
                        bqkv_ptr + g * s_qbg, s_qb, h, tok, n, hcol, hd, D, NP, HP, BD, PREC, UPCAST)
    p = _softmax_probs(q, k, tok, n, scale, PREC, UPCAST)
    _store_2d(o + h * hd, tok, hcol, D, 1, n, hd, mma(p, v, tl.zeros([NP, HP], tl.float32), PREC, UPCAST))
    tl.debug_barrier()  # every thread's part of o_h is written before the arrival is signalled
    if tl.atomic_add(count_ptr + g * M + m, 1, sem="acq_rel") == H - 1:
        tl.debug_barrier()
        wproj = wproj_ptr + g * s_pg
        y = y_ptr + g * s_yg + m * s_ym
        for e0 in range(0, D, BE):
            ee = e0 + tl.arange(0, BE)
            acc = _mm(o, D, 1, wproj + e0 * s_po, s_pi, s_po, tok, tl.arange(0, BE), n, D - e0, D, NP, BE, BD, PREC,
                      UPCAST)
            acc += tl.load(bproj_ptr + g * s_pbg + ee * s_pb, mask=ee < D, other=0.0).to(tl.float32)[None, :]
            _store_2d(y, tok, ee, s_yn, s_yd, n, D, acc)


@triton.jit
def group_attention_bwd_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wproj_ptr, dy_ptr, dqkv_ptr,
                               M, n, D, hd, scale,
                               s_xg, s_xm, s_xn, s_xd, s_qg, s_qo, s_qi, s_qbg, s_qb, s_pg, s_po, s_pi,
                               s_dyg, s_dym, s_dyn, s_dyd,
                               NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
                               UPCAST: tl.constexpr):
    """Grid (G, M, H): attention backward of one head into dqkv (contiguous fp32 (G, M, n, 3D))."""
    g = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    dqkv = dqkv_ptr + (g * M + m) * n * 3 * D
    tok = tl.arange(0, NP)
    hcol = tl.arange(0, HP)
    q, k, v = _head_qkv(x_ptr + g * s_xg + m * s_xm, s_xn, s_xd, wqkv_ptr + g * s_qg, s_qo, s_qi,
                        bqkv_ptr + g * s_qbg, s_qb, h, tok, n, hcol, hd, D, NP, HP, BD, PREC, UPCAST)
    p = _softmax_probs(q, k, tok, n, scale, PREC, UPCAST)
    # d o_h = dy @ Wproj[:, columns of head h]
    do = _mm(dy_ptr + g * s_dyg + m * s_dym, s_dyn, s_dyd, wproj_ptr + g * s_pg + (h * hd) * s_pi, s_po, s_pi,
             tok, hcol, n, hd, D, NP, HP, BD, PREC, UPCAST).to(q.dtype)
    zeros = tl.zeros([NP, HP], tl.float32)
    dv = mma(tl.trans(p), do, zeros, PREC, UPCAST)
    dp = mma(do, tl.trans(v), tl.zeros([NP, NP], tl.float32), PREC, UPCAST)
    ds = p * (dp - tl.sum(dp * p, axis=1)[:, None]) * scale
    _store_2d(dqkv + h * hd, tok, hcol, 3 * D, 1, n, hd, mma(ds, k, zeros, PREC, UPCAST))
    _store_2d(dqkv + D + h * hd, tok, hcol, 3 * D, 1, n, hd, mma(tl.trans(ds), q, zeros, PREC, UPCAST))
    _store_2d(dqkv + 2 * D + h * hd, tok, hcol, 3 * D, 1, n, hd, dv)


@triton.jit
def _weight_grad_tile(dy_ptr, F, a_ptr, rows, e, T, D, dw_ptr, db_ptr,
                      BR: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
                      UPCAST: tl.constexpr):
    """dW[rows, e] = Σ_t dY[t, rows] A[t, e] for contiguous dY (T, F), A (T, D); db[rows] on the first e tile."""
    acc = _mm(dy_ptr, 1, F, a_ptr, D, 1, rows, e, F, D, T, BR, BE, BT, PREC, UPCAST)
    _store_2d(dw_ptr, rows, e, D, 1, F, D, acc)
    if tl.program_id(2) == 0:
        db = tl.zeros([BR], tl.float32)
        for t0 in range(0, T, BT):
            t = t0 + tl.arange(0, BT)
            db += tl.sum(_load_2d(dy_ptr, t, rows, F, 1, T, F).to(tl.float32), axis=0)
        tl.store(db_ptr + rows, db, mask=rows < F)


@triton.jit
def group_attention_grad_kernel(x_ptr, wqkv_ptr, dqkv_ptr, o_ptr, dy_ptr, dx_ptr,
                                dwqkv_ptr, dbqkv_ptr, dwproj_ptr, dbproj_ptr,
                                T, D, n_qkv_tiles, n_proj_tiles, s_qg, s_qo, s_qi,
                                BR: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
                                UPCAST: tl.constexpr):
    """Grid (G, dWqkv row tiles + dWproj row tiles + dx token tiles, D column tiles), T = M * n tokens.

    x, dy, o, dqkv, dx and the weight gradients are contiguous; Wqkv is read through its strides.
    """
    g = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    dqkv = dqkv_ptr + g * T * 3 * D
    if tile < n_qkv_tiles:
        rows = tile * BR + tl.arange(0, BR)
        _weight_grad_tile(dqkv, 3 * D, x_ptr + g * T * D, rows, e, T, D, dwqkv_ptr + g * 3 * D * D,
                          dbqkv_ptr + g * 3 * D, BR, BE, BT, PREC, UPCAST)
    else:
        if tile < n_qkv_tiles + n_proj_tiles:
            rows = (tile - n_qkv_tiles) * BR + tl.arange(0, BR)
            _weight_grad_tile(dy_ptr + g * T * D, D, o_ptr + g * T * D, rows, e, T, D, dwproj_ptr + g * D * D,
                              dbproj_ptr + g * D, BR, BE, BT, PREC, UPCAST)
        else:
            t = (tile - n_qkv_tiles - n_proj_tiles) * BR + tl.arange(0, BR)
            acc = _mm(dqkv, 3 * D, 1, wqkv_ptr + g * s_qg, s_qo, s_qi, t, e, T, D, 3 * D, BR, BE, BT, PREC, UPCAST)
            _store_2d(dx_ptr + g * T * D, t, e, D, 1, T, D, acc)


def _sizes(x: torch.Tensor, num_heads: int) -> tuple[int, int, int, int, int, int]:
    G, M, n, D = x.shape
    if n > MAX_TOKENS:
        raise ValueError(f"the Triton group attention takes at most {MAX_TOKENS} tokens per sequence; got n={n}")
    return G, M, n, D, D // num_heads, block(n)


def _precision(x: torch.Tensor, fp32_precision: str) -> dict:
    """The kernels' dtype constexprs."""
    return dict(PREC=dot_precision(x.dtype, fp32_precision), UPCAST=upcast_operands(x.dtype))


def group_attention_forward(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                            proj_weight: torch.Tensor, proj_bias: torch.Tensor, num_heads: int,
                            fp32_precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    """One launch. x (G, M, n, D) -> (y (G, M, n, D) in x.dtype, o (G, M, n, D) fp32 attention output)."""
    G, M, n, D, hd, NP = _sizes(x, num_heads)
    o = torch.empty(G, M, n, D, device=x.device, dtype=torch.float32)
    y = torch.empty(G, M, n, D, device=x.device, dtype=x.dtype)
    count = torch.zeros(G, M, device=x.device, dtype=torch.int32)
    launch("group_attention_fwd", group_attention_fwd_kernel, (G, M, num_heads),
           x, qkv_weight, qkv_bias, proj_weight, proj_bias, o, y, count, M, n, D, num_heads, hd, hd ** -0.5,
           *x.stride(), *qkv_weight.stride(), *qkv_bias.stride(), *proj_weight.stride(), *proj_bias.stride(),
           *y.stride(), NP=NP, HP=block(hd), BD=FEATURE_CHUNK, BE=PROJ_COLS, **_precision(x, fp32_precision),
           num_warps=ATTENTION_WARPS)
    return y, o


def group_attention_backward(dy: torch.Tensor, x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                             proj_weight: torch.Tensor, o: torch.Tensor, num_heads: int, fp32_precision: str = "ieee"
                             ) -> tuple[torch.Tensor, ...]:
    """Two launches. Returns (dx, d qkv_weight, d qkv_bias, d proj_weight, d proj_bias), each in its input's dtype."""
    G, M, n, D, hd, NP = _sizes(x, num_heads)
    dqkv = torch.empty(G, M, n, 3 * D, device=x.device, dtype=torch.float32)
    launch("group_attention_bwd", group_attention_bwd_kernel, (G, M, num_heads),
           x, qkv_weight, qkv_bias, proj_weight, dy, dqkv, M, n, D, hd, hd ** -0.5,
           *x.stride(), *qkv_weight.stride(), *qkv_bias.stride(), *proj_weight.stride(), *dy.stride(),
           NP=NP, HP=block(hd), BD=FEATURE_CHUNK, **_precision(x, fp32_precision), num_warps=ATTENTION_WARPS)
    grads = [torch.empty(G, M, n, D, device=x.device, dtype=x.dtype),
             torch.empty(G, 3 * D, D, device=x.device, dtype=qkv_weight.dtype),
             torch.empty(G, 3 * D, device=x.device, dtype=qkv_bias.dtype),
             torch.empty(G, D, D, device=x.device, dtype=proj_weight.dtype),
             torch.empty(G, D, device=x.device, dtype=qkv_bias.dtype)]
    T = M * n
    n_qkv_tiles, n_proj_tiles = triton.cdiv(3 * D, GRAD_ROWS), triton.cdiv(D, GRAD_ROWS)
    launch("group_attention_wgrad", group_attention_grad_kernel,
           (G, n_qkv_tiles + n_proj_tiles + triton.cdiv(T, GRAD_ROWS), triton.cdiv(D, GRAD_COLS)),
           x.contiguous(), qkv_weight, dqkv, o, dy.contiguous(), *grads, T, D, n_qkv_tiles, n_proj_tiles,
           *qkv_weight.stride(), BR=GRAD_ROWS, BE=GRAD_COLS, BT=block(T, maximum=GRAD_TOKENS),
           **_precision(x, fp32_precision), num_warps=GRAD_WARPS)
    return tuple(grads)
