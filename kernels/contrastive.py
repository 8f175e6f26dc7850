"""Triton kernels of the blockwise symmetric InfoNCE loss, all L blocks in one launch.

Inputs are stacked features `a`, `v` of shape (L, B, P) (any strides, fp32/fp16/bf16) and a keep
mask (B,) (uint8, 0 = background). Rows are the B_rows features starting at `row_start` (all B in a
single process, the local slice under the distributed local-loss formulation); columns are all B.
Per block, with unit vectors â, v̂ and t the temperature:
    S1[i, j] = v̂_i · â_j / t   (visual -> audio),   S2[i, j] = â_i · v̂_j / t   (audio -> visual)
    loss_i   = 0.5 (lse_j S1[i, :] + lse_j S2[i, :]) - S1[i, row_start + i]   over kept i and kept j.
The forward's programs tile rows and stream column tiles with an online log-sum-exp: no (B, B) matrix
is stored. Logit tiles are dots of the raw features accumulated over chunks of features, then scaled
by the inverse norms (summed in their own loop, so the dot loop holds only its operands) and 1/t. The
backward uses S2 = S1ᵀ: one logit matrix carries both directions (see `contrastive_bwd_kernel`).

Precision: dots take the inputs' own dtype (bf16/fp16 on the tensor cores) with fp32 accumulation;
fp32 inputs use `input_precision` "ieee" or "tf32" (the `fp32_precision` argument). The backward's
gradient dots cast the fp32 logit gradients to the input dtype, as flash-attention does. Norms,
log-sum-exp, the loss and the gradients' accumulators are fp32.

Tiles: `FORWARD_CONFIGS` / `BACKWARD_CONFIGS` per element size, chosen by `triton.autotune` keyed on
(B, B_rows, P, precision) on a GPU; `SMALL` (per element size) under the interpreter and for problems
under 64 rows; any config inside `_launch.pinned(contrastive_fwd=..., contrastive_bwd=...)`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maavt_fast.kernels._launch import TileConfig, autotuned, dot_precision, launch_tiled, mma, upcast_operands

NEG_INIT = tl.constexpr(-1.0e30)  # finite start of the running max, so fully masked rows never compute inf - inf
# Interpreter and tiny problems, per element size: 16 x 16 logit tiles (the smallest `tl.dot`), 64 features.
SMALL = {2: TileConfig(16, 16, 64, 4, 2), 4: TileConfig(16, 16, 64, 4, 1)}
TINY_ROWS = 64  # problems with fewer rows and columns than this run SMALL
LOGIT_CHUNK = 64  # features per step of the backward's logit dots (its configs' `features` is the gradient chunk)
# Per element size. bf16/fp16: tiles of 64 rows and more use Hopper's warpgroup MMA (wgmma). fp32 tiles are
# smaller: "ieee" dots run on the FMA units and hold more registers. None spills on sm_90 (see _aot_check).
FORWARD_CONFIGS = {
    2: (TileConfig(32, 32, 64, 4, 3), TileConfig(64, 64, 64, 4, 3), TileConfig(128, 64, 64, 8, 3),
        TileConfig(128, 128, 64, 8, 2)),
    4: (TileConfig(32, 32, 32, 8, 2), TileConfig(64, 32, 32, 4, 2)),
}
BACKWARD_CONFIGS = {  # `features`: the gradient chunk per program (the logits are recomputed P / features times)
    2: (TileConfig(32, 32, 64, 4, 2), TileConfig(64, 64, 128, 8, 2), TileConfig(64, 64, 256, 8, 2)),
    4: (TileConfig(32, 32, 64, 4, 2), TileConfig(64, 64, 64, 8, 2)),
}


@triton.jit
def _load_chunk(base, idx, ok, feat, P, s_b, s_p):
    """(len(idx), len(feat)) tile base[idx, feat] in the input dtype, zero outside rows `ok` and features < P."""
    mask = ok[:, None] & (feat < P)[None, :]
    return tl.load(base + idx[:, None] * s_b + feat[None, :] * s_p, mask=mask, other=0.0)


@triton.jit
def _inv_norms(base, idx, ok, P, s_b, s_p, N: tl.constexpr, PC: tl.constexpr, NORMALIZE: tl.constexpr):
    """fp32 1 / max(|x|, 1e-12) of the N rows `idx` of base (1 without normalisation); its own loop over P,
    so the dot loops keep only their operands live."""
    if NORMALIZE:
        sum_sq = tl.zeros([N], tl.float32)
        for p0 in range(0, P, PC):
            x = _load_chunk(base, idx, ok, p0 + tl.arange(0, PC), P, s_b, s_p).to(tl.float32)
            sum_sq += tl.sum(x * x, axis=1)
        return 1.0 / tl.maximum(tl.sqrt(sum_sq), 1e-12)
    return tl.full([N], 1.0, tl.float32)


@triton.jit
def _logit_tile(x_base, y_base, rows, rows_ok, cols, cols_ok, P, s_xb, s_xp, s_yb, s_yp, scale_r, inv_c,
                BR: tl.constexpr, BC: tl.constexpr, PC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """(BR, BC) logits x[rows] · y[cols] * scale_r[:, None] * inv_c[None, :], the dot over chunks of PC features."""
    acc = tl.zeros([BR, BC], tl.float32)
    for p0 in range(0, P, PC):
        feat = p0 + tl.arange(0, PC)
        acc = mma(_load_chunk(x_base, rows, rows_ok, feat, P, s_xb, s_xp),
                  tl.trans(_load_chunk(y_base, cols, cols_ok, feat, P, s_yb, s_yp)), acc, PRECISION, UPCAST)
    return acc * scale_r[:, None] * inv_c[None, :]


@triton.jit
def _online_lse(m, l, s):
    """Running (max, sum of exp) of each row after adding the columns of tile `s` (-inf = masked)."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
    return m_new, l


@triton.jit
def contrastive_fwd_kernel(a_ptr, v_ptr, keep_ptr, temp_ptr, lse1_ptr, lse2_ptr, loss_ptr,
                           B, B_rows, P, row_start,
                           s_al, s_ab, s_ap, s_vl, s_vb, s_vp, s_t,
                           NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                           BR: tl.constexpr, BC: tl.constexpr, PC: tl.constexpr):
    """Grid (row tiles, L). Writes lse1, lse2 and the row losses (L, B_rows), 0 for background rows."""
    tile = tl.program_id(0)
    blk = tl.program_id(1).to(tl.int64)
    a_base = a_ptr + blk * s_al
    v_base = v_ptr + blk * s_vl
    inv_t = 1.0 / tl.load(temp_ptr + blk * s_t).to(tl.float32)
    local = tile * BR + tl.arange(0, BR)
    rows = row_start + local
    rows_ok = local < B_rows
    keep_r = tl.load(keep_ptr + rows, mask=rows_ok, other=0) != 0
    m1 = tl.full([BR], NEG_INIT, tl.float32)
    m2 = tl.full([BR], NEG_INIT, tl.float32)
    l1 = tl.zeros([BR], tl.float32)
    l2 = tl.zeros([BR], tl.float32)
    pos = tl.zeros([BR], tl.float32)
    scale_vr = _inv_norms(v_base, rows, rows_ok, P, s_vb, s_vp, BR, PC, NORMALIZE) * inv_t
    scale_ar = _inv_norms(a_base, rows, rows_ok, P, s_ab, s_ap, BR, PC, NORMALIZE) * inv_t
    for c0 in range(0, B, BC):
        cols = c0 + tl.arange(0, BC)
        cols_ok = cols < B
        keep_c = tl.load(keep_ptr + cols, mask=cols_ok, other=0) != 0
        inv_ac = _inv_norms(a_base, cols, cols_ok, P, s_ab, s_ap, BC, PC, NORMALIZE)
        s1 = _logit_tile(v_base, a_base, rows, rows_ok, cols, cols_ok, P, s_vb, s_vp, s_ab, s_ap, scale_vr, inv_ac,
                         BR, BC, PC, PRECISION, UPCAST)
        pos += tl.sum(tl.where(rows[:, None] == cols[None, :], s1, 0.0), axis=1)
        m1, l1 = _online_lse(m1, l1, tl.where(keep_c[None, :], s1, float("-inf")))
        inv_vc = _inv_norms(v_base, cols, cols_ok, P, s_vb, s_vp, BC, PC, NORMALIZE)
        s2 = _logit_tile(a_base, v_base, rows, rows_ok, cols, cols_ok, P, s_ab, s_ap, s_vb, s_vp, scale_ar, inv_vc,
                         BR, BC, PC, PRECISION, UPCAST)
        m2, l2 = _online_lse(m2, l2, tl.where(keep_c[None, :], s2, float("-inf")))
    lse1 = tl.where(keep_r, m1 + tl.log(tl.where(keep_r, l1, 1.0)), 0.0)  # background rows: 0, never log(0)
    lse2 = tl.where(keep_r, m2 + tl.log(tl.where(keep_r, l2, 1.0)), 0.0)
    tl.store(lse1_ptr + blk * B_rows + local, lse1, mask=rows_ok)
    tl.store(lse2_ptr + blk * B_rows + local, lse2, mask=rows_ok)
    loss = tl.where(keep_r, 0.5 * (lse1 + lse2) - pos, 0.0)
    tl.store(loss_ptr + blk * B_rows + local, loss, mask=rows_ok)


@triton.jit
def _loss_side(keep_ptr, lse_ptr, blk, idx, ok, row_start, B_rows, half_g):
    """Keep flags of the features `idx`, and for those that are loss rows of this rank (row_start <= idx <
    row_start + B_rows) their saved log-sum-exp and loss weight; weight 0 elsewhere."""
    keep = tl.load(keep_ptr + idx, mask=ok, other=0) != 0
    local = idx - row_start
    is_row = ok & (local >= 0) & (local < B_rows)
    lse = tl.load(lse_ptr + blk * B_rows + local, mask=is_row, other=0.0)
    return keep, lse, tl.where(is_row & keep, half_g, 0.0)


@triton.jit
def _pair_grad(s, rows, cols, keep_r, keep_c, lse1_r, w_r, lse2_c, w_c):
    """dloss/dS1 of the tile S1[rows, cols] = v̂_rows · â_cols / t as two terms: the v->a softmax of the loss
    rows `rows` and the a->v softmax of the loss rows `cols` (S2 = S1ᵀ); zero outside kept pairs and loss rows."""
    eye = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
    pair = keep_r[:, None] & keep_c[None, :]
    g1 = tl.where(pair & (w_r[:, None] != 0.0), w_r[:, None] * (tl.exp(s - lse1_r[:, None]) - eye), 0.0)
    g2 = tl.where(pair & (w_c[None, :] != 0.0), w_c[None, :] * (tl.exp(s - lse2_c[None, :]) - eye), 0.0)
    return g1, g2


@triton.jit
def _store_grad(d_ptr, base, idx, ok, feat, P, s_b, s_p, inv, acc, coef, inv_t, NORMALIZE: tl.constexpr):
    """Store the raw-feature gradient of rows `idx`, features `feat` into the contiguous (B, P) d_ptr.

    acc * inv_t is dloss/d(unit vector) on these features and coef = unit vector · dloss/d(unit vector)
    (from the logits, so no program needs all P features): d raw = inv (g - unit * coef).
    """
    g = acc * inv_t
    if NORMALIZE:
        unit = _load_chunk(base, idx, ok, feat, P, s_b, s_p).to(tl.float32) * inv[:, None]
        g = (g - unit * coef[:, None]) * inv[:, None]
    tl.store(d_ptr + idx[:, None] * P + feat[None, :], g.to(d_ptr.dtype.element_ty),
             mask=ok[:, None] & (feat < P)[None, :])


@triton.jit
def _partner_range(start, N: tl.constexpr, B, row_start, B_rows):
    """Partner index range of a tile [start, start + N): all B when it holds loss rows of this rank, else
    only the loss rows (elsewhere both sides have weight 0 and the gradient vanishes)."""
    holds_rows = (start < row_start + B_rows) & (start + N > row_start)
    return tl.where(holds_rows, 0, row_start), tl.where(holds_rows, B, row_start + B_rows)


@triton.jit
def contrastive_bwd_kernel(a_ptr, v_ptr, keep_ptr, temp_ptr, lse1_ptr, lse2_ptr, gscale_ptr,
                           da_ptr, dv_ptr, dtemp_ptr,
                           B, B_rows, P, row_start,
                           s_al, s_ab, s_ap, s_vl, s_vb, s_vp, s_t,
                           NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                           BR: tl.constexpr, BC: tl.constexpr, PC: tl.constexpr, KC: tl.constexpr):
    """Grid (row tiles + column tiles of all B, gradient chunks of PC features, L).

    One logit matrix S1 = V̂ Âᵀ / t carries both directions (S2 = S1ᵀ), so with H = dloss/dS1 (`_pair_grad`)
    dV̂ = H Â / t and dÂ = Hᵀ V̂ / t. Row programs own dv of BR rows, column programs da of BC columns,
    each for PC features: every gradient element has one owner, stored once in the input dtype (no
    atomics, deterministic). Each program recomputes its S1 tiles over all P features in chunks of KC.
    `gscale` (L,) is the upstream gradient of each block / the kept count; dtemp (L, B) gets per-row
    shares of the temperature gradient.
    """
    tile = tl.program_id(0)
    feat = tl.program_id(1) * PC + tl.arange(0, PC)
    blk = tl.program_id(2).to(tl.int64)
    a_base = a_ptr + blk * s_al
    v_base = v_ptr + blk * s_vl
    da_ptr += blk * B * P
    dv_ptr += blk * B * P
    inv_t = 1.0 / tl.load(temp_ptr + blk * s_t).to(tl.float32)
    half_g = 0.5 * tl.load(gscale_ptr + blk)
    n_row_tiles = tl.cdiv(B, BR)
    if tile < n_row_tiles:
        rows = tile * BR + tl.arange(0, BR)
        rows_ok = rows < B
        keep_r, lse1_r, w_r = _loss_side(keep_ptr, lse1_ptr, blk, rows, rows_ok, row_start, B_rows, half_g)
        inv_vr = _inv_norms(v_base, rows, rows_ok, P, s_vb, s_vp, BR, KC, NORMALIZE)
        acc = tl.zeros([BR, PC], tl.float32)
        coef = tl.zeros([BR], tl.float32)
        tsum = tl.zeros([BR], tl.float32)
        lo, hi = _partner_range(tile * BR, BR, B, row_start, B_rows)
        for c0 in range(lo, hi, BC):
            cols = c0 + tl.arange(0, BC)
            cols_ok = cols < B
            keep_c, lse2_c, w_c = _loss_side(keep_ptr, lse2_ptr, blk, cols, cols_ok, row_start, B_rows, half_g)
            inv_ac = _inv_norms(a_base, cols, cols_ok, P, s_ab, s_ap, BC, KC, NORMALIZE)
            s = _logit_tile(v_base, a_base, rows, rows_ok, cols, cols_ok, P, s_vb, s_vp, s_ab, s_ap, inv_vr * inv_t,
                            inv_ac, BR, BC, KC, PRECISION, UPCAST)
            g1, g2 = _pair_grad(s, rows, cols, keep_r, keep_c, lse1_r, w_r, lse2_c, w_c)
            h = g1 + g2
            coef += tl.sum(h * s, axis=1)
            # the same sum for the temperature, less cancellation: each softmax term sums to 0, so shift S by its lse
            tsum += tl.sum(g1 * (s - lse1_r[:, None]) + g2 * (s - lse2_c[None, :]), axis=1)
            a_c = _load_chunk(a_base, cols, cols_ok, feat, P, s_ab, s_ap)
            acc = mma(h * inv_ac[None, :], a_c, acc, PRECISION, UPCAST)  # h cast to a_c's dtype
        if tl.program_id(1) == 0:
            # dS/dt = -S/t  ->  dloss/dt = -(1/t) sum(H * S)
            tl.store(dtemp_ptr + blk * B + rows, -tsum * inv_t, mask=rows_ok)
        _store_grad(dv_ptr, v_base, rows, rows_ok, feat, P, s_vb, s_vp, inv_vr, acc, coef, inv_t, NORMALIZE)
    else:
        cols = (tile - n_row_tiles) * BC + tl.arange(0, BC)
        cols_ok = cols < B
        keep_c, lse2_c, w_c = _loss_side(keep_ptr, lse2_ptr, blk, cols, cols_ok, row_start, B_rows, half_g)
        inv_ac = _inv_norms(a_base, cols, cols_ok, P, s_ab, s_ap, BC, KC, NORMALIZE)
        acc_c = tl.zeros([BC, PC], tl.float32)  # own names: with BR != BC the shapes differ from the row branch
        coef_c = tl.zeros([BC], tl.float32)
        lo, hi = _partner_range((tile - n_row_tiles) * BC, BC, B, row_start, B_rows)
        for r0 in range(lo, hi, BR):
            rows = r0 + tl.arange(0, BR)
            rows_ok = rows < B
            keep_r, lse1_r, w_r = _loss_side(keep_ptr, lse1_ptr, blk, rows, rows_ok, row_start, B_rows, half_g)
            inv_vr = _inv_norms(v_base, rows, rows_ok, P, s_vb, s_vp, BR, KC, NORMALIZE)
            s = _logit_tile(v_base, a_base, rows, rows_ok, cols, cols_ok, P, s_vb, s_vp, s_ab, s_ap, inv_vr * inv_t,
                            inv_ac, BR, BC, KC, PRECISION, UPCAST)
            g1, g2 = _pair_grad(s, rows, cols, keep_r, keep_c, lse1_r, w_r, lse2_c, w_c)
            h = g1 + g2
            coef_c += tl.sum(h * s, axis=0)
            v_r = _load_chunk(v_base, rows, rows_ok, feat, P, s_vb, s_vp)
            acc_c = mma(tl.trans(h * inv_vr[:, None]), v_r, acc_c, PRECISION, UPCAST)
        _store_grad(da_ptr, a_base, cols, cols_ok, feat, P, s_ab, s_ap, inv_ac, acc_c, coef_c, inv_t, NORMALIZE)


_FORWARD_TUNED = autotuned(contrastive_fwd_kernel, FORWARD_CONFIGS, ["B", "B_rows", "P", "PRECISION"], "a_ptr")
_BACKWARD_TUNED = autotuned(contrastive_bwd_kernel, BACKWARD_CONFIGS, ["B", "B_rows", "P", "PRECISION"], "a_ptr")


def _strides(audio: torch.Tensor, visual: torch.Tensor, temperature: torch.Tensor) -> tuple[int, ...]:
    return (*audio.stride(), *visual.stride(), 0 if temperature.numel() == 1 else temperature.stride(0))


def _precision(audio: torch.Tensor, normalize: bool, fp32_precision: str) -> dict:
    """The kernels' dtype constexprs."""
    return dict(NORMALIZE=normalize, PRECISION=dot_precision(audio.dtype, fp32_precision),
                UPCAST=upcast_operands(audio.dtype))


def contrastive_forward(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, temperature: torch.Tensor,
                        row_start: int, row_count: int, normalize: bool, fp32_precision: str = "ieee"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch for all blocks. audio, visual (L, B, P); keep (B,) uint8; temperature () or (L,) fp32.

    Returns (per-block sums of the row losses (L,), lse1 (L, row_count), lse2 (L, row_count)), fp32.
    """
    precision = _precision(audio, normalize, fp32_precision)  # first: raises TypeError on other dtypes
    L, B, P = audio.shape
    lse1 = torch.empty(L, row_count, device=audio.device, dtype=torch.float32)
    lse2 = torch.empty_like(lse1)
    losses = torch.empty_like(lse1)
    launch_tiled("contrastive_fwd", contrastive_fwd_kernel, _FORWARD_TUNED, SMALL[audio.element_size()],
                 max(B, row_count) < TINY_ROWS,
                 lambda meta: (triton.cdiv(row_count, meta["BR"]), L),
                 audio, visual, keep, temperature, lse1, lse2, losses, B, row_count, P, row_start,
                 *_strides(audio, visual, temperature), **precision)
    return losses.sum(1), lse1, lse2


def contrastive_backward(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, temperature: torch.Tensor,
                         lse1: torch.Tensor, lse2: torch.Tensor, gscale: torch.Tensor, row_start: int,
                         normalize: bool, fp32_precision: str = "ieee"
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch for all blocks; gscale (L,) fp32 = upstream gradient per block / kept count.

    Returns (d audio, d visual) in the input dtype and the per-block temperature gradient (L,) fp32.
    """
    precision = _precision(audio, normalize, fp32_precision)  # first: raises TypeError on other dtypes
    L, B, P = audio.shape
    row_count = lse1.shape[1]
    da = torch.empty(L, B, P, device=audio.device, dtype=audio.dtype)
    dv = torch.empty(L, B, P, device=visual.device, dtype=visual.dtype)
    dtemp = torch.empty(L, B, device=audio.device, dtype=torch.float32)
    launch_tiled("contrastive_bwd", contrastive_bwd_kernel, _BACKWARD_TUNED, SMALL[audio.element_size()],
                 max(B, row_count) < TINY_ROWS,
                 lambda meta: (triton.cdiv(B, meta["BR"]) + triton.cdiv(B, meta["BC"]), triton.cdiv(P, meta["PC"]), L),
                 audio, visual, keep, temperature, lse1, lse2, gscale, da, dv, dtemp, B, row_count, P, row_start,
                 *_strides(audio, visual, temperature), **precision, KC=LOGIT_CHUNK)
    return da, dv, dtemp.sum(1)
