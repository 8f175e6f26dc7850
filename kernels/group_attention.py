"""Triton kernels of multi-head self-attention inside small groups, all groups in one launch.

Per group g with weights Wqkv (3D, D), bqkv (3D,), Wproj (D, D), bproj (D,), for each of the M
sequences x (n, D), n <= 64, H heads of size d = D / H:
    q, k, v = split(x Wqkvᵀ + bqkv);  o_h = softmax(q_h k_hᵀ / sqrt(d)) v_h;  y = o Wprojᵀ + bproj.
Forward: one launch, a program per (group, sequence); it writes o (fp32) for the backward.
Backward: two launches. (1) per (group, sequence): attention backward -> dqkv (fp32 scratch) and dx.
(2) per (group, tile of weight rows): dW = Σ_tokens dYᵀ X and db = Σ_tokens dY for both linears.
The weight gradients sum over the M sequences, which launch (1) spreads over programs; a second
launch keeps that sum deterministic (no float atomics) without a grid-wide barrier.
All loads are upcast to fp32; inside a program, a debug_barrier separates writing a scratch row
from reading it back in another layout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maavt_fast.kernels._launch import block, dot_precisions, launch

MAX_TOKENS = 64


@triton.jit
def _load_2d(ptr, r, c, s_r, s_c, n_r, n_c):
    """fp32 tile ptr[r, c] with rows < n_r and columns < n_c, zero elsewhere."""
    mask = (r < n_r)[:, None] & (c < n_c)[None, :]
    return tl.load(ptr + r[:, None] * s_r + c[None, :] * s_c, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rows_times_wt(a_ptr, s_an, s_ad, w_ptr, s_wo, s_wi, w_row0, tok, n, hcol, n_out, D,
                   NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """A (n, D) @ W[w_row0 + hcol, :]ᵀ -> (NP, HP): tokens times selected weight rows."""
    acc = tl.zeros([NP, HP], tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        a = _load_2d(a_ptr, tok, dd, s_an, s_ad, n, D)
        w = _load_2d(w_ptr + w_row0 * s_wo, dd, hcol, s_wi, s_wo, D, n_out)
        acc += tl.dot(a, w, input_precision=PREC)
    return acc


@triton.jit
def _head_qkv(x_ptr, s_xn, s_xd, w_ptr, s_wo, s_wi, b_ptr, s_b, h, tok, n, hcol, hd, D,
              NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """q, k, v (NP, HP) of head h, with biases."""
    q = _rows_times_wt(x_ptr, s_xn, s_xd, w_ptr, s_wo, s_wi, h * hd, tok, n, hcol, hd, D, NP, HP, BD, PREC)
    k = _rows_times_wt(x_ptr, s_xn, s_xd, w_ptr, s_wo, s_wi, D + h * hd, tok, n, hcol, hd, D, NP, HP, BD, PREC)
    v = _rows_times_wt(x_ptr, s_xn, s_xd, w_ptr, s_wo, s_wi, 2 * D + h * hd, tok, n, hcol, hd, D, NP, HP, BD, PREC)
    hmask = hcol < hd
    q += tl.load(b_ptr + (h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    k += tl.load(b_ptr + (D + h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    v += tl.load(b_ptr + (2 * D + h * hd + hcol) * s_b, mask=hmask, other=0.0).to(tl.float32)[None, :]
    return q, k, v


@triton.jit
def _softmax_probs(q, k, tok, n, scale, PREC: tl.constexpr):
    """Row softmax of q kᵀ * scale over the n real key tokens (NP, NP)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    s = tl.where((tok < n)[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _store_2d(ptr, r, c, s_r, s_c, n_r, n_c, value):
    mask = (r < n_r)[:, None] & (c < n_c)[None, :]
    tl.store(ptr + r[:, None] * s_r + c[None, :] * s_c, value, mask=mask)


@triton.jit
def _rows_times_w(a_ptr, s_an, s_ad, w_ptr, s_wo, s_wi, b_ptr, s_b, y_ptr, s_yn, s_yd, n, n_in, n_out,
                  HAS_BIAS: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, BD: tl.constexpr,
                  PREC: tl.constexpr):
    """y (n, n_out) = A (n, n_in) @ Wᵀ (+ b) where W is (n_out, n_in); tiles of BE output columns."""
    tok = tl.arange(0, NP)
    for e0 in range(0, n_out, BE):
        ee = e0 + tl.arange(0, BE)
        acc = _rows_times_wt(a_ptr, s_an, s_ad, w_ptr, s_wo, s_wi, e0, tok, n, tl.arange(0, BE), n_out - e0, n_in,
                             NP, BE, BD, PREC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + ee * s_b, mask=ee < n_out, other=0.0).to(tl.float32)[None, :]
        _store_2d(y_ptr, tok, ee, s_yn, s_yd, n, n_out, acc)


@triton.jit
def group_attention_fwd_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wproj_ptr, bproj_ptr, o_ptr, y_ptr,
                               n, D, H, hd, scale,
                               s_xg, s_xm, s_xn, s_xd, s_qg, s_qo, s_qi, s_qbg, s_qb,
                               s_pg, s_po, s_pi, s_pbg, s_pb, s_og, s_om, s_yg, s_ym, s_yn, s_yd,
                               NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
                               PREC: tl.constexpr):
    """Grid (G, M). o: contiguous fp32 (G, M, n, D) scratch kept for the backward; y: output."""
    g = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1).to(tl.int64)
    x = x_ptr + g * s_xg + m * s_xm
    o = o_ptr + g * s_og + m * s_om
    tok = tl.arange(0, NP)
    hcol = tl.arange(0, HP)
    for h in range(0, H):
        q, k, v = _head_qkv(x, s_xn, s_xd, wqkv_ptr + g * s_qg, s_qo, s_qi, bqkv_ptr + g * s_qbg, s_qb, h, tok, n,
                            hcol, hd, D, NP, HP, BD, PREC)
        p = _softmax_probs(q, k, tok, n, scale, PREC)
        _store_2d(o + h * hd, tok, hcol, D, 1, n, hd, tl.dot(p, v, input_precision=PREC))
    tl.debug_barrier()
    _rows_times_w(o, D, 1, wproj_ptr + g * s_pg, s_po, s_pi, bproj_ptr + g * s_pbg, s_pb,
                  y_ptr + g * s_yg + m * s_ym, s_yn, s_yd, n, D, D, True, NP, BE, BD, PREC)


@triton.jit
def group_attention_bwd_kernel(x_ptr, wqkv_ptr, bqkv_ptr, wproj_ptr, dy_ptr, dqkv_ptr, dx_ptr,
                               n, D, H, hd, scale,
                               s_xg, s_xm, s_xn, s_xd, s_qg, s_qo, s_qi, s_qbg, s_qb, s_pg, s_po, s_pi,
                               s_dyg, s_dym, s_dyn, s_dyd, s_cg, s_cm, s_dxg, s_dxm, s_dxn, s_dxd,
                               NP: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
                               PREC: tl.constexpr):
    """Grid (G, M): attention backward per head into dqkv (contiguous fp32 (G, M, n, 3D)), then dx."""
    g = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1).to(tl.int64)
    x = x_ptr + g * s_xg + m * s_xm
    dy = dy_ptr + g * s_dyg + m * s_dym
    dqkv = dqkv_ptr + g * s_cg + m * s_cm
    wqkv = wqkv_ptr + g * s_qg
    tok = tl.arange(0, NP)
    hcol = tl.arange(0, HP)
    for h in range(0, H):
        q, k, v = _head_qkv(x, s_xn, s_xd, wqkv, s_qo, s_qi, bqkv_ptr + g * s_qbg, s_qb, h, tok, n, hcol, hd, D,
                            NP, HP, BD, PREC)
        p = _softmax_probs(q, k, tok, n, scale, PREC)
        # d o_h = dy @ Wproj[:, head columns]: Wproj rows are outputs, so read it transposed
        do = _rows_times_wt(dy, s_dyn, s_dyd, wproj_ptr + g * s_pg, s_pi, s_po, h * hd, tok, n, hcol, hd, D,
                            NP, HP, BD, PREC)
        dv = tl.dot(tl.trans(p), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - tl.sum(dp * p, axis=1)[:, None]) * scale
        dq = tl.dot(ds, k, input_precision=PREC)
        dk = tl.dot(tl.trans(ds), q, input_precision=PREC)
        _store_2d(dqkv + h * hd, tok, hcol, 3 * D, 1, n, hd, dq)
        _store_2d(dqkv + D + h * hd, tok, hcol, 3 * D, 1, n, hd, dk)
        _store_2d(dqkv + 2 * D + h * hd, tok, hcol, 3 * D, 1, n, hd, dv)
    tl.debug_barrier()
    # dx = dqkv @ Wqkv: Wqkv read transposed, as an (D, 3D) "output x input" matrix
    _rows_times_w(dqkv, 3 * D, 1, wqkv, s_qi, s_qo, wqkv, 0, dx_ptr + g * s_dxg + m * s_dxm, s_dxn, s_dxd,
                  n, 3 * D, D, False, NP, BE, BD, PREC)


@triton.jit
def _weight_grad_rows(dy_ptr, s_dym, s_dyn, s_dyo, a_ptr, s_am, s_an, s_ai, dw_ptr, s_dwo, s_dwi, db_ptr, s_db,
                      rows, n_rows, M, n, n_in, BW: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr,
                      PREC: tl.constexpr):
    """Rows `rows` of dW = Σ_t dY[t, rows]ᵀ A[t, :] and db = Σ_t dY[t, rows] over the M*n tokens t."""
    rmask = rows < n_rows
    db = tl.zeros([BW], tl.float32)
    for e0 in range(0, n_in, BE):
        ee = e0 + tl.arange(0, BE)
        acc = tl.zeros([BW, BE], tl.float32)
        for t0 in range(0, M * n, BT):
            t = t0 + tl.arange(0, BT)
            tmask = t < M * n
            dy_off = (t // n).to(tl.int64)[:, None] * s_dym + (t % n)[:, None] * s_dyn + rows[None, :] * s_dyo
            dyt = tl.load(dy_ptr + dy_off, mask=tmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)
            a_off = (t // n).to(tl.int64)[:, None] * s_am + (t % n)[:, None] * s_an + ee[None, :] * s_ai
            at = tl.load(a_ptr + a_off, mask=tmask[:, None] & (ee < n_in)[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(tl.trans(dyt), at, input_precision=PREC)
            if e0 == 0:
                db += tl.sum(dyt, axis=0)
        _store_2d(dw_ptr, rows, ee, s_dwo, s_dwi, n_rows, n_in, acc)
    tl.store(db_ptr + rows * s_db, db, mask=rmask)


@triton.jit
def group_attention_wgrad_kernel(x_ptr, dqkv_ptr, o_ptr, dy_ptr, dwqkv_ptr, dbqkv_ptr, dwproj_ptr, dbproj_ptr,
                                 M, n, D, n_qkv_tiles,
                                 s_xg, s_xm, s_xn, s_xd, s_cg, s_cm, s_og, s_om,
                                 s_dyg, s_dym, s_dyn, s_dyd,
                                 BW: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, PREC: tl.constexpr):
    """Grid (G, qkv row tiles + proj row tiles); all weight-gradient outputs are contiguous."""
    g = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    if tile < n_qkv_tiles:
        rows = tile * BW + tl.arange(0, BW)
        _weight_grad_rows(dqkv_ptr + g * s_cg, s_cm, 3 * D, 1, x_ptr + g * s_xg, s_xm, s_xn, s_xd,
                          dwqkv_ptr + g * 3 * D * D, D, 1, dbqkv_ptr + g * 3 * D, 1, rows, 3 * D, M, n, D,
                          BW, BT, BE, PREC)
    else:
        rows = (tile - n_qkv_tiles) * BW + tl.arange(0, BW)
        _weight_grad_rows(dy_ptr + g * s_dyg, s_dym, s_dyn, s_dyd, o_ptr + g * s_og, s_om, D, 1,
                          dwproj_ptr + g * D * D, D, 1, dbproj_ptr + g * D, 1, rows, D, M, n, D,
                          BW, BT, BE, PREC)


def _sizes(x: torch.Tensor, num_heads: int) -> tuple[int, int, int, int, int, int]:
    G, M, n, D = x.shape
    if n > MAX_TOKENS:
        raise ValueError(f"the Triton group attention takes at most {MAX_TOKENS} tokens per sequence; got n={n}")
    hd = D // num_heads
    return G, M, n, D, hd, block(n)


def group_attention_forward(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                            proj_weight: torch.Tensor, proj_bias: torch.Tensor, num_heads: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch. x (G, M, n, D) -> (y (G, M, n, D) in x.dtype, o (G, M, n, D) fp32 attention output)."""
    G, M, n, D, hd, NP = _sizes(x, num_heads)
    o = torch.empty(G, M, n, D, device=x.device, dtype=torch.float32)
    y = torch.empty(G, M, n, D, device=x.device, dtype=x.dtype)
    prec, _ = dot_precisions(x.dtype)
    launch("group_attention_fwd", group_attention_fwd_kernel, (G, M),
           x, qkv_weight, qkv_bias, proj_weight, proj_bias, o, y, n, D, num_heads, hd, hd ** -0.5,
           *x.stride(), *qkv_weight.stride(), *qkv_bias.stride(), *proj_weight.stride(), *proj_bias.stride(),
           o.stride(0), o.stride(1), *y.stride(),
           NP=NP, HP=block(hd), BD=32, BE=64, PREC=prec, num_warps=4)
    return y, o


def group_attention_backward(dy: torch.Tensor, x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                             proj_weight: torch.Tensor, o: torch.Tensor, num_heads: int
                             ) -> tuple[torch.Tensor, ...]:
    """Two launches. Returns (dx, d qkv_weight, d qkv_bias, d proj_weight, d proj_bias), each in its input's dtype."""
    G, M, n, D, hd, NP = _sizes(x, num_heads)
    prec, _ = dot_precisions(x.dtype)
    dqkv = torch.empty(G, M, n, 3 * D, device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    launch("group_attention_bwd", group_attention_bwd_kernel, (G, M),
           x, qkv_weight, qkv_bias, proj_weight, dy, dqkv, dx, n, D, num_heads, hd, hd ** -0.5,
           *x.stride(), *qkv_weight.stride(), *qkv_bias.stride(), *proj_weight.stride(), *dy.stride(),
           dqkv.stride(0), dqkv.stride(1), *dx.stride(),
           NP=NP, HP=block(hd), BD=32, BE=64, PREC=prec, num_warps=4)
    dw = [torch.empty(G, 3 * D, D, device=x.device, dtype=qkv_weight.dtype),
          torch.empty(G, 3 * D, device=x.device, dtype=qkv_bias.dtype),
          torch.empty(G, D, D, device=x.device, dtype=proj_weight.dtype),
          torch.empty(G, D, device=x.device, dtype=qkv_bias.dtype)]
    BW = 32
    n_qkv_tiles = triton.cdiv(3 * D, BW)
    launch("group_attention_wgrad", group_attention_wgrad_kernel, (G, n_qkv_tiles + triton.cdiv(D, BW)),
           x, dqkv, o, dy, *dw, M, n, D, n_qkv_tiles, *x.stride(), dqkv.stride(0), dqkv.stride(1),
           o.stride(0), o.stride(1), *dy.stride(), BW=BW, BT=block(M * n, maximum=64), BE=64, PREC=prec,
           num_warps=4)
    return (dx, *dw)
