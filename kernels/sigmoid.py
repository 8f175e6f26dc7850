"""Triton kernels of the blockwise pairwise sigmoid (SigLIP) loss, all L blocks in one launch.

Inputs: audio columns `a` (L, C, P) and visual rows `v` (L, R, P) (any strides, both fp32, fp16 or bf16);
keep (C,) uint8 over the columns (0 = background). Visual row r is the sample of audio column
`row_start + r`, so the rows' keep flags are keep[row_start + r] (R = C in a single process; under the
distributed local-loss formulation the rows are this rank's samples and the columns all ranks').
Per block, with s the scale, b the bias and unit vectors when NORMALIZE:
    z[r, j] = s v̂_r · â_j + b,   y[r, j] = +1 if j == row_start + r else -1,
    loss[r, j] = -log sigmoid(y z) = max(-y z, 0) + log1p(exp(-|z|))   summed over kept r and kept j.
Programs own a tile of rows (or of columns) and stream tiles of the other side: no (R, C) matrix is stored.
Dots take the inputs' own dtype with fp32 accumulation (fp32 inputs: IEEE fp32); the cosine tile is the
raw dot scaled by fp32 inverse norms summed from the same loaded chunks. Under the interpreter, bf16
operands are upcast to fp32 first (its bf16 arithmetic is wrong); the math is otherwise the same.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maavt_fast.kernels._launch import INTERPRETED, autotuned, launch


def _configs(fields: tuple[str, ...], values: list[tuple[int, ...]], interpreted: tuple[int, ...]
             ) -> list[triton.Config]:
    """Autotune candidates (*fields, warps, stages) on a GPU; one fixed config under the interpreter."""
    if INTERPRETED:
        return [triton.Config(dict(zip(fields, interpreted)), num_warps=4)]
    n = len(fields)
    return [triton.Config(dict(zip(fields, v[:n])), num_warps=v[n], num_stages=v[n + 1]) for v in values]


# BM: own rows per program, BN: streamed rows per step, PC: features per dot step, GC: gradient features per
# program (backward only: each program recomputes its logits over all P, so a wide GC saves recomputation).
# Candidates per element size compile for sm_90 with no register spills (`_aot_check`, P = 512); fp32 tiles are
# smaller (fp32 operands hold twice the registers).
_FWD_FIELDS, _BWD_FIELDS = ("BM", "BN", "PC"), ("BM", "BN", "PC", "GC")
_FWD_INTERPRETED, _BWD_INTERPRETED = (64, 64, 64), (64, 64, 64, 128)
FWD_CONFIGS = {
    2: _configs(_FWD_FIELDS, [(64, 64, 64, 8, 3), (128, 64, 64, 8, 3), (64, 64, 128, 8, 2), (64, 32, 64, 4, 3)],
                _FWD_INTERPRETED),
    4: _configs(_FWD_FIELDS, [(64, 64, 64, 8, 3), (128, 64, 64, 8, 3), (64, 32, 64, 4, 3), (32, 32, 64, 4, 2)],
                _FWD_INTERPRETED),
}
BWD_CONFIGS = {
    2: _configs(_BWD_FIELDS, [(64, 64, 64, 64, 8, 3), (64, 64, 64, 128, 8, 3), (64, 32, 64, 128, 8, 3),
                              (32, 64, 64, 256, 8, 3), (32, 32, 64, 512, 8, 2)], _BWD_INTERPRETED),
    4: _configs(_BWD_FIELDS, [(64, 32, 32, 64, 8, 2), (32, 32, 64, 64, 4, 2), (32, 32, 32, 64, 8, 2)],
                _BWD_INTERPRETED),
}


@triton.jit
def _load(base, idx, ok, feat, P, s_b, s_p):
    """(len(idx), len(feat)) tile base[idx, feat] in the stored dtype, zero outside rows `ok` and features < P."""
    return tl.load(base + idx[:, None] * s_b + feat[None, :] * s_p, mask=ok[:, None] & (feat < P)[None, :], other=0.0)


@triton.jit
def _operand(x, DT: tl.constexpr, UPCAST: tl.constexpr):
    """A `tl.dot` operand: dtype DT (the inputs'), or fp32 under the interpreter's broken bf16."""
    if UPCAST:
        return x.to(tl.float32)
    return x.to(DT)


@triton.jit
def _inv_norms(base, idx, ok, P, s_b, s_p, BM: tl.constexpr, PC: tl.constexpr, NORMALIZE: tl.constexpr):
    """fp32 1 / max(|x_i|, 1e-12) of rows idx (as F.normalize), or ones without normalisation."""
    sq = tl.zeros([BM], tl.float32)
    if NORMALIZE:
        for p0 in range(0, P, PC):
            x = _load(base, idx, ok, p0 + tl.arange(0, PC), P, s_b, s_p).to(tl.float32)
            sq += tl.sum(x * x, axis=1)
        return 1.0 / tl.maximum(tl.sqrt(sq), 1e-12)
    return sq + 1.0


@triton.jit
def _cosines(x_base, idx, x_ok, sx_b, sx_p, inv_x, y_base, jdx, y_ok, sy_b, sy_p, P,
             BM: tl.constexpr, BN: tl.constexpr, PC: tl.constexpr, NORMALIZE: tl.constexpr,
             PREC: tl.constexpr, UPCAST: tl.constexpr):
    """(BM, BN) tile of x̂_i · ŷ_j (raw dots when not NORMALIZE) and the inverse norms of the y rows."""
    dots = tl.zeros([BM, BN], tl.float32)
    sq = tl.zeros([BN], tl.float32)
    for p0 in range(0, P, PC):
        feat = p0 + tl.arange(0, PC)
        x = _load(x_base, idx, x_ok, feat, P, sx_b, sx_p)
        y = _load(y_base, jdx, y_ok, feat, P, sy_b, sy_p)
        dots += tl.dot(_operand(x, x.dtype, UPCAST), tl.trans(_operand(y, y.dtype, UPCAST)), input_precision=PREC)
        if NORMALIZE:
            y32 = y.to(tl.float32)
            sq += tl.sum(y32 * y32, axis=1)
    if NORMALIZE:
        inv_y = 1.0 / tl.maximum(tl.sqrt(sq), 1e-12)
    else:
        inv_y = sq + 1.0
    return dots * inv_x[:, None] * inv_y[None, :], inv_y


@triton.jit
def _pair_terms(z, positive):
    """Per pair: loss = -log sigmoid(y z) and its derivative dloss/dz = -y sigmoid(-y z), finite for any z."""
    e = tl.exp(-tl.abs(z))  # in (0, 1]: never overflows
    t = tl.where(positive, z, -z)  # y z
    u = 1.0 + e
    # log1p(e), accurate for tiny e: log(u) corrected by the rounding of u = fl(1 + e) (e itself when u == 1)
    loss = tl.maximum(-t, 0.0) + tl.log(u) - ((u - 1.0) - e) / u
    sig_neg_t = tl.where(t <= 0.0, 1.0, e) / u  # sigmoid(-t)
    return loss, tl.where(positive, -sig_neg_t, sig_neg_t)


@triton.jit
def sigmoid_fwd_kernel(a_ptr, v_ptr, keep_ptr, scale_ptr, bias_ptr, out_ptr,
                       C, R, P, row_start,
                       s_al, s_ab, s_ap, s_vl, s_vb, s_vp, s_sc, s_bi,
                       NORMALIZE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, PC: tl.constexpr):
    """Grid (row tiles, L). Writes the loss sum of each row over the kept columns to out (L, R) (0 if not kept)."""
    blk = tl.program_id(1).to(tl.int64)
    v_base = v_ptr + blk * s_vl
    a_base = a_ptr + blk * s_al
    scale = tl.load(scale_ptr + blk * s_sc)
    bias = tl.load(bias_ptr + blk * s_bi)
    local = tl.program_id(0) * BM + tl.arange(0, BM)
    rows_ok = local < R
    keep_r = tl.load(keep_ptr + row_start + local, mask=rows_ok, other=0) != 0
    inv_r = _inv_norms(v_base, local, rows_ok, P, s_vb, s_vp, BM, PC, NORMALIZE)
    total = tl.zeros([BM], tl.float32)
    for c0 in range(0, C, BN):
        cols = c0 + tl.arange(0, BN)
        cols_ok = cols < C
        keep_c = tl.load(keep_ptr + cols, mask=cols_ok, other=0) != 0
        cos, _ = _cosines(v_base, local, rows_ok, s_vb, s_vp, inv_r, a_base, cols, cols_ok, s_ab, s_ap, P,
                          BM, BN, PC, NORMALIZE, PREC, UPCAST)
        loss, _ = _pair_terms(scale * cos + bias, (row_start + local)[:, None] == cols[None, :])
        total += tl.sum(tl.where(keep_r[:, None] & keep_c[None, :], loss, 0.0), axis=1)
    tl.store(out_ptr + blk * R + local, total, mask=rows_ok)


@triton.jit
def _own_tile_grad(x_base, sx_b, sx_p, x_start, n_x, y_base, sy_b, sy_p, y_start, n_y, keep_ptr, out_base,
                   idx, feat, P, scale, bias, w,
                   NORMALIZE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, PC: tl.constexpr, GC: tl.constexpr):
    """Gradient of features `feat` of own rows x[idx] (stored to out_base, contiguous (n_x, P)), streaming all y.

    Sample ids: x_start + idx and y_start + jdx (equal ids = positive pair, keep[id] = kept). w is the
    upstream gradient of the block's loss sum. Returns per own row w·Σ_j g·cos and w·Σ_j g (g = dloss/dz),
    the row's share of d scale and d bias.
    """
    x_ok = idx < n_x
    keep_x = tl.load(keep_ptr + x_start + idx, mask=x_ok, other=0) != 0
    inv_x = _inv_norms(x_base, idx, x_ok, P, sx_b, sx_p, BM, PC, NORMALIZE)
    acc = tl.zeros([BM, GC], tl.float32)
    g_cos = tl.zeros([BM], tl.float32)
    g_sum = tl.zeros([BM], tl.float32)
    for y0 in range(0, n_y, BN):
        jdx = y0 + tl.arange(0, BN)
        y_ok = jdx < n_y
        keep_y = tl.load(keep_ptr + y_start + jdx, mask=y_ok, other=0) != 0
        cos, inv_y = _cosines(x_base, idx, x_ok, sx_b, sx_p, inv_x, y_base, jdx, y_ok, sy_b, sy_p, P,
                              BM, BN, PC, NORMALIZE, PREC, UPCAST)
        _, g = _pair_terms(scale * cos + bias, (x_start + idx)[:, None] == (y_start + jdx)[None, :])
        g = tl.where(keep_x[:, None] & keep_y[None, :], g, 0.0)
        g_cos += tl.sum(g * cos, axis=1)
        g_sum += tl.sum(g, axis=1)
        y = _load(y_base, jdx, y_ok, feat, P, sy_b, sy_p)
        y_unit = y.to(tl.float32) * inv_y[:, None]  # in [-1, 1]: safe in fp16 too
        acc += tl.dot(_operand(g, y.dtype, UPCAST), _operand(y_unit, y.dtype, UPCAST), input_precision=PREC)
    # dloss/dx̂ = w s acc; through the normalisation dx = (dx̂ - x̂ (x̂ · dx̂)) / |x|, with x̂ · dx̂ = w s g_cos
    grad = acc * (w * scale)
    if NORMALIZE:
        x_unit = _load(x_base, idx, x_ok, feat, P, sx_b, sx_p).to(tl.float32) * inv_x[:, None]
        grad = (grad - x_unit * (w * scale * g_cos)[:, None]) * inv_x[:, None]
    tl.store(out_base + idx[:, None] * P + feat[None, :], grad, mask=x_ok[:, None] & (feat < P)[None, :])
    return w * g_cos, w * g_sum


@triton.jit
def sigmoid_bwd_kernel(a_ptr, v_ptr, keep_ptr, scale_ptr, bias_ptr, grad_ptr, da_ptr, dv_ptr, dscale_ptr, dbias_ptr,
                       C, R, P, row_start,
                       s_al, s_ab, s_ap, s_vl, s_vb, s_vp, s_sc, s_bi,
                       NORMALIZE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, PC: tl.constexpr, GC: tl.constexpr):
    """Grid (row tiles + column tiles, feature chunks of GC, L).

    Row programs own visual rows (dv, and per-row d scale / d bias from chunk 0); column programs own
    audio columns (da). Each writes its own elements once: no atomics, deterministic. grad (L,) is the
    upstream gradient of each block's loss sum.
    """
    tile = tl.program_id(0)
    feat = tl.program_id(1) * GC + tl.arange(0, GC)
    blk = tl.program_id(2).to(tl.int64)
    v_base = v_ptr + blk * s_vl
    a_base = a_ptr + blk * s_al
    scale = tl.load(scale_ptr + blk * s_sc)
    bias = tl.load(bias_ptr + blk * s_bi)
    w = tl.load(grad_ptr + blk)
    n_row_tiles = tl.cdiv(R, BM)
    if tile < n_row_tiles:
        idx = tile * BM + tl.arange(0, BM)
        d_scale, d_bias = _own_tile_grad(v_base, s_vb, s_vp, row_start, R, a_base, s_ab, s_ap, 0, C, keep_ptr,
                                         dv_ptr + blk * R * P, idx, feat, P, scale, bias, w,
                                         NORMALIZE, PREC, UPCAST, BM, BN, PC, GC)
        if tl.program_id(1) == 0:
            tl.store(dscale_ptr + blk * R + idx, d_scale, mask=idx < R)
            tl.store(dbias_ptr + blk * R + idx, d_bias, mask=idx < R)
    else:
        idx = (tile - n_row_tiles) * BM + tl.arange(0, BM)
        _own_tile_grad(a_base, s_ab, s_ap, 0, C, v_base, s_vb, s_vp, row_start, R, keep_ptr,
                       da_ptr + blk * C * P, idx, feat, P, scale, bias, w, NORMALIZE, PREC, UPCAST, BM, BN, PC, GC)


_KEY = ["C", "R", "P"]
sigmoid_fwd = autotuned(sigmoid_fwd_kernel, FWD_CONFIGS, _KEY, "a_ptr")
sigmoid_bwd = autotuned(sigmoid_bwd_kernel, BWD_CONFIGS, _KEY, "a_ptr")


def _dtype_flags(audio: torch.Tensor, visual: torch.Tensor) -> dict:
    if audio.dtype != visual.dtype or audio.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"Triton kernels take audio and visual of one dtype among float32, float16, bfloat16; "
                        f"got {audio.dtype} and {visual.dtype}")
    return dict(PREC="ieee" if audio.dtype == torch.float32 else "tf32",
                UPCAST=INTERPRETED and audio.dtype == torch.bfloat16)


def _strides(audio, visual, scale, bias) -> tuple[int, ...]:
    return (*audio.stride(), *visual.stride(), 0 if scale.numel() == 1 else scale.stride(0),
            0 if bias.numel() == 1 else bias.stride(0))


def sigmoid_forward(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor, row_start: int, normalize: bool) -> torch.Tensor:
    """One launch for all blocks. audio (L, C, P), visual (L, R, P); keep (C,) uint8 contiguous;
    scale, bias fp32 () or (L,). Returns the per-block loss sums (L,) fp32."""
    L, C, P = audio.shape
    R = visual.shape[1]
    rows = torch.empty(L, R, device=audio.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(R, meta["BM"]), L)  # noqa: E731
    launch("sigmoid_fwd", sigmoid_fwd, grid, audio, visual, keep, scale, bias, rows, C, R, P, row_start,
           *_strides(audio, visual, scale, bias), NORMALIZE=normalize, **_dtype_flags(audio, visual))
    return rows.sum(1)


def sigmoid_backward(grad: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                     scale: torch.Tensor, bias: torch.Tensor, row_start: int, normalize: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch for all blocks; grad (L,) fp32 contiguous = upstream gradient of each block's loss sum.

    Returns d audio, d visual (contiguous, input dtype) and the per-block d scale, d bias (L,) fp32.
    """
    L, C, P = audio.shape
    R = visual.shape[1]
    da = torch.empty(L, C, P, device=audio.device, dtype=audio.dtype)
    dv = torch.empty(L, R, P, device=visual.device, dtype=visual.dtype)
    d_scale = torch.empty(L, R, device=audio.device, dtype=torch.float32)
    d_bias = torch.empty_like(d_scale)

    def grid(meta):
        return triton.cdiv(R, meta["BM"]) + triton.cdiv(C, meta["BM"]), triton.cdiv(P, meta["GC"]), L

    launch("sigmoid_bwd", sigmoid_bwd, grid, audio, visual, keep, scale, bias, grad,
           da, dv, d_scale, d_bias, C, R, P, row_start, *_strides(audio, visual, scale, bias),
           NORMALIZE=normalize, **_dtype_flags(audio, visual))
    return da, dv, d_scale.sum(1), d_bias.sum(1)
