"""Fused group normalisation with the UNet block's conditioning and SiLU, forward and backward, in Triton.

Computes [`scoredistill.networks.layers.group_norm_act`][scoredistill.networks.layers.group_norm_act] (the reference),
for ``x`` of shape ``[B, C, H, W]`` stored contiguous (NCHW) or channels_last (NHWC)::

    y = silu( (group_norm(x + add) * weight + bias) * scale + shift )

with ``add``, ``scale`` and ``shift`` optional per-sample, per-channel ``[B, C]`` tensors (DDPM++ adds its noise
embedding before the norm; ADM scales and shifts after it) and the SiLU optional. The eager composition runs
the native group norm (two passes over ``x``), then one pass for each elementwise op, forward and backward, and
stores every intermediate for backward; this runs three passes forward (statistics, a tiny combine, apply) and
three backward (per-channel sums, a tiny combine, input gradient), stores only ``x`` and two ``[B, G]`` vectors,
and reads channels_last tensors in place, so the convolutions around it can stay NHWC (without the layout
transposes cuDNN otherwise inserts around every NCHW bf16 convolution).

Statistics are exact two-level Chan combinations (per-tile mean and squared deviations, then per group), in
float32 whatever the input dtype; outputs are rounded once, to ``x``'s dtype.

A second strategy, ``"one_pass"`` ([`set_strategy`][scoredistill.kernels.groupnorm_triton.set_strategy]), runs
one kernel forward and one backward: each program owns whole groups of one sample and walks its pixels twice
(statistics then output; sums then input gradient), so the combine kernels, the partials' round trip through
memory and four launches per norm go. Its programs are fewer (one per sample and channel block). On an H100 that
costs more than it saves: in a CUDA graph it takes 0.93-2.5x the time of ``"tiles"`` per norm at the networks'
shapes (slower on every large map), and a whole SiDA iteration 0.3-11% longer, so ``"tiles"`` stays the default
(``benchmarks/RESULTS.md``; ``benchmarks/bench_norms.py`` measures both on the card at hand).

A third, ``"hybrid"``, takes the one-pass kernels on small maps only (at most `ONE_PASS_MAX_HW` pixels), where the
tiles' six launches cost more than the data they move. Whether it pays depends on the network (it did on DDPM++ and
not on ADM), so a call may name the strategy it prefers (``prefer``; the network layers' ``kernel_strategy``); under
the module-wide ``"auto"``, the default, that preference is followed and a call without one takes the tiles. Any
other module-wide strategy overrides every preference (for comparisons).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import GROUP_NORM_STRATEGIES, channels_last
from .triton_utils import SUPPORTED_DTYPES
from .triton_utils import launch as _launch_any

__all__ = ["group_norm_act", "group_norm_act_with_input", "set_strategy"]

STRATEGIES = ("auto", *GROUP_NORM_STRATEGIES)  # what set_strategy takes; a call may prefer any but "auto"
_strategy = "auto"
ONE_PASS_MAX_HW = 256  # "hybrid": the one-pass kernels on maps of at most this many pixels (16x16), tiles above


def set_strategy(name: str) -> str:
    """Choose how the fused group norm is launched, for the calls (and CUDA-graph captures) that follow.

    Args:
        name: ``"auto"`` (the default: each call's preferred strategy, see
            [`group_norm_act`][scoredistill.kernels.groupnorm_triton.group_norm_act]'s ``prefer``, else
            ``"tiles"``), or one of the strategies for every call, whatever it prefers: ``"tiles"`` (statistics,
            combine and apply kernels over ``[pixels, channels]`` tiles, and three kernels backward),
            ``"one_pass"`` (one kernel each way, a program per sample and block of whole groups) or ``"hybrid"``
            (one pass on maps of at most `ONE_PASS_MAX_HW` pixels, where the tiles' six launches cost more than the
            data they move, and tiles on larger maps). All compute the same maths; only the rounding order of the
            statistics differs.

    Returns:
        The strategy in force before the call.
    """
    global _strategy
    if name not in STRATEGIES:
        raise ValueError(f"unknown group-norm strategy {name!r}: choose one of {STRATEGIES}")
    previous, _strategy = _strategy, name
    return previous


TILE = 4096  # elements of one [BLOCK_HW, BLOCK_C] tile
MAX_TILES_HW = 128  # the combine kernels hold one group's partials of all HW tiles at once
NUM_WARPS = 8  # per program, all kernels but the combines
COMBINE_WARPS = 4
# The weight's and the bias's batch sums of the backward in one reduction (one launch per norm instead of two; these
# small reductions are launch-bound). On by default; bench_step's graphs-cl-nobgrad turns it off, for comparison.
FUSED_AFFINE_GRAD_SUMS = True
MAX_HW = 128 * 128  # larger maps take the reference path (the tiles would outgrow the registers)


def launch(kernel, grid, device_index: int, num_warps: int, *args) -> None:
    _launch_any(kernel, grid, device_index, *args, num_warps=num_warps)


@triton.jit
def _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD: tl.constexpr):
    """One ``[BLOCK_HW, BLOCK_C]`` tile of ``x (+ add)`` in float32 (0 outside the tensor) and its mask."""
    cm = cols < C
    mask = (rows[:, None] < HW) & cm[None, :]
    base = x_ptr + b.to(tl.int64) * sxb
    v = tl.load(base + cols[None, :] * sxc + rows[:, None] * sxhw, mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        a = tl.load(add_ptr + b * sab + cols, mask=cm, other=0.0).to(tl.float32)
        v = tl.where(mask, v + a[None, :], 0.0)
    return v, mask


@triton.jit
def _normalised(v, mask, mean_ptr, rstd_ptr, b, cols, C, G, CG):
    cm = cols < C
    g = cols // CG
    mu = tl.load(mean_ptr + b * G + g, mask=cm, other=0.0)
    rs = tl.load(rstd_ptr + b * G + g, mask=cm, other=0.0)
    return tl.where(mask, (v - mu[None, :]) * rs[None, :], 0.0), rs


@triton.jit
def _pre_act(xhat, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, cols, C, ssb, stb, HAS_SCALE: tl.constexpr,
             HAS_SHIFT: tl.constexpr):  # fmt: skip
    """``z = (xhat w + bias) scale + shift`` and the per-element multiplier of ``xhat``'s gradient, ``w scale``."""
    cm = cols < C
    w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    z = xhat * w[None, :] + bias[None, :]
    wm = w
    if HAS_SCALE:
        s = tl.load(scale_ptr + b * ssb + cols, mask=cm, other=0.0).to(tl.float32)
        z = z * s[None, :]
        wm = w * s
    if HAS_SHIFT:
        t = tl.load(shift_ptr + b * stb + cols, mask=cm, other=0.0).to(tl.float32)
        z = z + t[None, :]
    return z, wm


@triton.jit
def _pids(CB_FIRST: tl.constexpr):
    """``(b, k, cb, B)``: sample, HW tile and channel block of this program, and the batch size. The grid runs
    ``(B, K, channel blocks)``, or ``(channel blocks, K, B)`` with ``CB_FIRST`` (the programs that share the
    pixels of a channels_last row are then launched next to each other)."""
    if CB_FIRST:
        return tl.program_id(2), tl.program_id(1), tl.program_id(0), tl.num_programs(2)
    return tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(0)


@triton.jit
def _stats_kernel(x_ptr, add_ptr, part_ptr, C, HW, K, sxb, sxc, sxhw, sab,
                  HAS_ADD: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                  CB_FIRST: tl.constexpr):  # fmt: skip
    """Per tile and channel: mean and sum of squared deviations -> ``part[2, B, K, C]``."""
    b, k, cb, B = _pids(CB_FIRST)
    rows = k * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    v, mask = _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD)
    n = tl.minimum(HW - k * BLOCK_HW, BLOCK_HW).to(tl.float32)
    mean = tl.sum(v, axis=0) / n
    d = tl.where(mask, v - mean[None, :], 0.0)
    m2 = tl.sum(d * d, axis=0)
    out = (b * K + k) * C + cols
    plane = B * K * C
    tl.store(part_ptr + out, mean, mask=cols < C)
    tl.store(part_ptr + plane + out, m2, mask=cols < C)


@triton.jit
def _combine_stats_kernel(part_ptr, mean_ptr, rstd_ptr, B, C, HW, K, G, CG, total, eps,
                          BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CG: tl.constexpr):  # fmt: skip
    """Per (sample, group): Chan's combination of the tile statistics -> mean and 1 / sqrt(var + eps)."""
    b, g = tl.program_id(0), tl.program_id(1)
    ks = tl.arange(0, BLOCK_K)
    cs = tl.arange(0, BLOCK_CG)
    m = (ks[:, None] < K) & (cs[None, :] < CG)
    idx = (b * K + ks[:, None]) * C + g * CG + cs[None, :]
    pm = tl.load(part_ptr + idx, mask=m, other=0.0)
    pm2 = tl.load(part_ptr + B * K * C + idx, mask=m, other=0.0)
    n = tl.where(ks < K, tl.minimum(HW - ks * BLOCK_HW, BLOCK_HW), 0).to(tl.float32)
    mean = tl.sum(tl.sum(pm * n[:, None], axis=1), axis=0) / total
    dev = tl.where(m, pm - mean, 0.0)
    m2 = tl.sum(tl.sum(pm2 + n[:, None] * dev * dev, axis=1), axis=0)
    tl.store(mean_ptr + b * G + g, mean)
    tl.store(rstd_ptr + b * G + g, 1.0 / tl.sqrt(m2 / total + eps))


@triton.jit
def _apply_kernel(x_ptr, add_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr,
                  C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb,
                  HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                  BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, CB_FIRST: tl.constexpr):  # fmt: skip
    b, k, cb, _ = _pids(CB_FIRST)
    rows = k * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    v, mask = _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD)
    xhat, _ = _normalised(v, mask, mean_ptr, rstd_ptr, b, cols, C, G, CG)
    z, _ = _pre_act(xhat, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, cols, C, ssb, stb, HAS_SCALE, HAS_SHIFT)
    if SILU:
        z = z * tl.sigmoid(z)
    out = y_ptr + b.to(tl.int64) * sxb + cols[None, :] * sxc + rows[:, None] * sxhw  # y shares x's strides
    tl.store(out, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_z(x_ptr, add_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, rows, cols,
            C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw,
            HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    """Recompute ``xhat`` and return it with ``dL/dz`` (the gradient before the SiLU), ``rstd`` and ``w scale``."""
    v, mask = _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD)
    xhat, rs = _normalised(v, mask, mean_ptr, rstd_ptr, b, cols, C, G, CG)
    z, wm = _pre_act(xhat, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, cols, C, ssb, stb, HAS_SCALE, HAS_SHIFT)
    dbase = dy_ptr + b.to(tl.int64) * sdb
    dz = tl.load(dbase + cols[None, :] * sdc + rows[:, None] * sdhw, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        sg = tl.sigmoid(z)
        dz = dz * sg * (1.0 + z * (1.0 - sg))
    return xhat, tl.where(mask, dz, 0.0), rs, wm, mask


@triton.jit
def _grad_sums_kernel(x_ptr, add_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, part_ptr,
                      C, HW, K, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw,
                      HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                      BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, CB_FIRST: tl.constexpr):  # fmt: skip
    """Per tile and channel: ``sum dz``, ``sum dz xhat`` and (with ``add``) ``sum xhat`` -> ``part[3, B, K, C]``."""
    b, k, cb, B = _pids(CB_FIRST)
    rows = k * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    xhat, dz, _, _, _ = _grad_z(
        x_ptr, add_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, rows, cols,
        C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, HAS_ADD, HAS_SCALE, HAS_SHIFT, SILU,
    )  # fmt: skip
    out = (b * K + k) * C + cols
    plane = B * K * C
    cm = cols < C
    tl.store(part_ptr + out, tl.sum(dz, axis=0), mask=cm)
    tl.store(part_ptr + plane + out, tl.sum(dz * xhat, axis=0), mask=cm)
    if HAS_ADD:
        tl.store(part_ptr + 2 * plane + out, tl.sum(xhat, axis=0), mask=cm)


@triton.jit
def _combine_grads_kernel(part_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, coef_ptr, pc_ptr,
                          B, C, HW, K, G, CG, n, ssb,
                          HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_CG: tl.constexpr):  # fmt: skip
    """Per (sample, group): the input-gradient coefficients ``mean(dxhat)``, ``mean(dxhat xhat)`` -> ``coef[2, B, G]``
    and the per-(sample, channel) parameter gradients -> ``pc[5, B, C]``: ``sum dz``, ``w S2 + bias S1`` (the
    scale's), ``scale S2`` and ``scale S1`` (summed over the batch: the weight's and bias's), ``sum dx`` (add's)."""
    b, g = tl.program_id(0), tl.program_id(1)
    ks = tl.arange(0, BLOCK_K)
    cs = tl.arange(0, BLOCK_CG)
    cm = cs < CG
    m = (ks[:, None] < K) & cm[None, :]
    idx = (b * K + ks[:, None]) * C + g * CG + cs[None, :]
    plane = B * K * C
    s1 = tl.sum(tl.load(part_ptr + idx, mask=m, other=0.0), axis=0)  # [BLOCK_CG]
    s2 = tl.sum(tl.load(part_ptr + plane + idx, mask=m, other=0.0), axis=0)
    col = g * CG + cs
    w = tl.load(w_ptr + col, mask=cm, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + col, mask=cm, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s = tl.load(scale_ptr + b * ssb + col, mask=cm, other=0.0).to(tl.float32)
    else:
        s = tl.full([BLOCK_CG], 1.0, tl.float32)
    a = tl.sum(w * s * s1, axis=0) / n
    q = tl.sum(w * s * s2, axis=0) / n
    tl.store(coef_ptr + b * G + g, a)
    tl.store(coef_ptr + B * G + b * G + g, q)
    out = b * C + col
    bc = B * C
    tl.store(pc_ptr + out, s1, mask=cm)
    tl.store(pc_ptr + bc + out, w * s2 + bias * s1, mask=cm)
    tl.store(pc_ptr + 2 * bc + out, s * s2, mask=cm)
    tl.store(pc_ptr + 3 * bc + out, s * s1, mask=cm)
    if HAS_ADD:
        s3 = tl.sum(tl.load(part_ptr + 2 * plane + idx, mask=m, other=0.0), axis=0)
        rs = tl.load(rstd_ptr + b * G + g)
        tl.store(pc_ptr + 4 * bc + out, rs * (w * s * s1 - HW * a - s3 * q), mask=cm)


@triton.jit
def _res_tile(res_ptr, b, rows, cols, srb, src, srhw, mask):
    """One tile of the gradient of ``x``'s other use, in float32 (added to ``dx`` before its one rounding)."""
    base = res_ptr + b.to(tl.int64) * srb
    return tl.load(base + cols[None, :] * src + rows[:, None] * srhw, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _grad_x_kernel(x_ptr, add_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, coef_ptr,
                   res_ptr, dx_ptr, B, C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, srb, src, srhw,
                   HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                   HAS_RES: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                   CB_FIRST: tl.constexpr):  # fmt: skip
    """``dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`` with ``dxhat = dz w scale``, plus (with
    ``HAS_RES``) the gradient ``res`` that ``x``'s other use returned."""
    b, k, cb, _ = _pids(CB_FIRST)
    rows = k * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    xhat, dz, rs, wm, mask = _grad_z(
        x_ptr, add_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, rows, cols,
        C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, HAS_ADD, HAS_SCALE, HAS_SHIFT, SILU,
    )  # fmt: skip
    cm = cols < C
    g = cols // CG
    a = tl.load(coef_ptr + b * G + g, mask=cm, other=0.0)
    q = tl.load(coef_ptr + B * G + b * G + g, mask=cm, other=0.0)
    dx = rs[None, :] * (dz * wm[None, :] - a[None, :] - xhat * q[None, :])
    if HAS_RES:
        dx += _res_tile(res_ptr, b, rows, cols, srb, src, srhw, mask)
    out = dx_ptr + b.to(tl.int64) * sxb + cols[None, :] * sxc + rows[:, None] * sxhw  # dx shares x's strides
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _one_pass_ids(CB_FIRST: tl.constexpr):
    """``(b, cb)``: the sample and channel block of a one-pass program (grid ``(blocks, B)`` or ``(B, blocks)``)."""
    if CB_FIRST:
        return tl.program_id(1), tl.program_id(0)
    return tl.program_id(0), tl.program_id(1)


@triton.jit
def _group_sum(v, lane, own, CG):
    """Each lane's sum of ``v`` over the lanes of its group (lanes ``own``: this program's whole groups)."""
    same = ((lane[:, None] // CG) == (lane[None, :] // CG)) & own[None, :]
    return tl.sum(tl.where(same, v[None, :], 0.0), axis=1)


@triton.jit
def _one_pass_fwd_kernel(x_ptr, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, stats_ptr,
                         B, C, HW, G, CG, CPB, n, eps, sxb, sxc, sxhw, sab, ssb, stb,
                         HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                         BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, TILES: tl.constexpr,
                         CB_FIRST: tl.constexpr):  # fmt: skip
    """One sample's whole groups ``[cb * CPB, (cb + 1) * CPB)``: per-channel Chan statistics over the pixel tiles,
    then per group, then ``y`` tile by tile; the group statistics go to ``stats[2, B, G]`` for the backward."""
    b, cb = _one_pass_ids(CB_FIRST)
    lane = tl.arange(0, BLOCK_C)
    cols = cb * CPB + lane
    own = (lane < CPB) & (cols < C)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for t in range(TILES):
        p0 = t * BLOCK_HW
        rows = p0 + tl.arange(0, BLOCK_HW)
        v, mask = _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD)
        n_k = tl.minimum(HW - p0, BLOCK_HW) * 1.0
        t_mean = tl.sum(v, axis=0) / n_k
        d = tl.where(mask, v - t_mean[None, :], 0.0)
        n_before = p0 * 1.0
        delta = t_mean - mean
        mean = mean + delta * (n_k / (n_before + n_k))
        m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * (n_before * n_k / (n_before + n_k))
    # Chan across the channels of each group (every channel counts HW pixels).
    g_mean = _group_sum(mean, lane, own, CG) / CG
    dev = mean - g_mean
    g_m2 = _group_sum(m2 + HW * dev * dev, lane, own, CG)
    rs = 1.0 / tl.sqrt(g_m2 / n + eps)
    g = cols // CG
    first = own & (lane % CG == 0)
    tl.store(stats_ptr + b * G + g, g_mean, mask=first)
    tl.store(stats_ptr + B * G + b * G + g, rs, mask=first)
    for t in range(TILES):
        p0 = t * BLOCK_HW
        rows = p0 + tl.arange(0, BLOCK_HW)
        v, mask = _tile(x_ptr, add_ptr, b, rows, cols, C, HW, sxb, sxc, sxhw, sab, HAS_ADD)
        xhat = tl.where(mask, (v - g_mean[None, :]) * rs[None, :], 0.0)
        z, _ = _pre_act(xhat, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, cols, C, ssb, stb, HAS_SCALE, HAS_SHIFT)
        if SILU:
            z = z * tl.sigmoid(z)
        out = y_ptr + b.to(tl.int64) * sxb + cols[None, :] * sxc + rows[:, None] * sxhw  # y shares x's strides
        tl.store(out, z.to(y_ptr.dtype.element_ty), mask=mask & own[None, :])


@triton.jit
def _one_pass_bwd_kernel(x_ptr, add_ptr, dy_ptr, stats_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, res_ptr, dx_ptr,
                         pc_ptr, B, C, HW, G, CG, CPB, n, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, srb, src, srhw,
                         HAS_ADD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                         HAS_RES: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, TILES: tl.constexpr,
                         CB_FIRST: tl.constexpr):  # fmt: skip
    """The backward of `_one_pass_fwd_kernel` for the same groups: the per-channel sums over the pixel tiles, the
    group coefficients and parameter partials (``pc[5, B, C]`` as `_combine_grads_kernel` writes them), then ``dx``
    tile by tile."""
    b, cb = _one_pass_ids(CB_FIRST)
    lane = tl.arange(0, BLOCK_C)
    cols = cb * CPB + lane
    own = (lane < CPB) & (cols < C)
    s1 = tl.zeros([BLOCK_C], tl.float32)
    s2 = tl.zeros([BLOCK_C], tl.float32)
    s3 = tl.zeros([BLOCK_C], tl.float32)
    for t in range(TILES):
        p0 = t * BLOCK_HW
        rows = p0 + tl.arange(0, BLOCK_HW)
        xhat, dz, _, _, _ = _grad_z(
            x_ptr, add_ptr, dy_ptr, stats_ptr, stats_ptr + B * G, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, rows,
            cols, C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, HAS_ADD, HAS_SCALE, HAS_SHIFT, SILU,
        )  # fmt: skip
        s1 += tl.sum(dz, axis=0)
        s2 += tl.sum(dz * xhat, axis=0)
        if HAS_ADD:
            s3 += tl.sum(xhat, axis=0)
    w = tl.load(w_ptr + cols, mask=own, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=own, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s = tl.load(scale_ptr + b * ssb + cols, mask=own, other=0.0).to(tl.float32)
    else:
        s = tl.full([BLOCK_C], 1.0, tl.float32)
    a = _group_sum(w * s * s1, lane, own, CG) / n  # mean(dxhat) of each lane's group
    q = _group_sum(w * s * s2, lane, own, CG) / n  # mean(dxhat xhat)
    out = b * C + cols
    bc = B * C
    tl.store(pc_ptr + out, s1, mask=own)
    tl.store(pc_ptr + bc + out, w * s2 + bias * s1, mask=own)
    tl.store(pc_ptr + 2 * bc + out, s * s2, mask=own)
    tl.store(pc_ptr + 3 * bc + out, s * s1, mask=own)
    if HAS_ADD:
        rs = tl.load(stats_ptr + B * G + b * G + cols // CG, mask=own, other=0.0)
        tl.store(pc_ptr + 4 * bc + out, rs * (w * s * s1 - HW * a - s3 * q), mask=own)
    for t in range(TILES):
        p0 = t * BLOCK_HW
        rows = p0 + tl.arange(0, BLOCK_HW)
        xhat, dz, rs_t, wm, mask = _grad_z(
            x_ptr, add_ptr, dy_ptr, stats_ptr, stats_ptr + B * G, w_ptr, bias_ptr, scale_ptr, shift_ptr, b, rows,
            cols, C, HW, G, CG, sxb, sxc, sxhw, sab, ssb, stb, sdb, sdc, sdhw, HAS_ADD, HAS_SCALE, HAS_SHIFT, SILU,
        )  # fmt: skip
        dx = rs_t[None, :] * (dz * wm[None, :] - a[None, :] - xhat * q[None, :])
        if HAS_RES:
            dx += _res_tile(res_ptr, b, rows, cols, srb, src, srhw, mask)
        dst = dx_ptr + b.to(tl.int64) * sxb + cols[None, :] * sxc + rows[:, None] * sxhw  # dx shares x's strides
        tl.store(dst, dx.to(dx_ptr.dtype.element_ty), mask=mask & own[None, :])


# ------------------------------------------------------------------------------------------------ host helpers


class Plan(NamedTuple):
    """Tiling of one pass: ``[block_hw, block_c]`` tiles, ``k`` of them along HW, and the launches' warps."""

    block_hw: int
    block_c: int
    k: int
    block_k: int  # k rounded up to a power of 2 (the combine kernels' tile)
    block_cg: int  # channels per group, rounded up to a power of 2
    num_warps: int
    cb_first: bool  # grid (channel blocks, k, B) instead of (B, k, channel blocks)


def _tiles(C: int, HW: int, nhwc: bool, backward: bool) -> tuple[int, int, int, bool]:
    """``(block_hw, block_c, num_warps, cb_first)``: tiles run along the contiguous dimension.

    channels_last: tiles of 128 pixels by 32 channels (64 channels on maps of at most 64 pixels), 4 warps, the grid
    ordered channel blocks first, forward and backward: the best or within 4% of the best tiling at every shape of
    the CIFAR-10 and ImageNet-64 networks in ``benchmarks/tune_norms.py`` on an H100 (``bench_norms``: 31% less
    device time than the earlier 64 x 64 tiles with 8 warps at the 192-channel 64x64 map). Contiguous: 4096-element
    tiles, 128 pixels by up to 32 channels, 8 warps (the sweep found nothing more than 6% faster).
    """
    if nhwc:
        block_hw = max(min(128, triton.next_power_of_2(HW)), triton.next_power_of_2(triton.cdiv(HW, MAX_TILES_HW)))
        block_c = max(1, min(triton.next_power_of_2(C), 64 if HW <= 64 else 32))
        return block_hw, block_c, 4, True
    else:
        block_hw = max(min(triton.next_power_of_2(HW), 128), triton.next_power_of_2(triton.cdiv(HW, 64)))
        block_c = max(1, min(triton.next_power_of_2(C), TILE // block_hw))
    return block_hw, block_c, NUM_WARPS, False


@functools.lru_cache(maxsize=1024)
def _plan(C: int, HW: int, groups: int, nhwc: bool, backward: bool) -> Plan:
    """The tiling of the forward or backward pass for one shape and layout (see `_tiles`)."""
    block_hw, block_c, num_warps, cb_first = _tiles(C, HW, nhwc, backward)
    k = triton.cdiv(HW, block_hw)
    if k > MAX_TILES_HW:
        raise ValueError(f"{k} tiles along H * W = {HW}: at most {MAX_TILES_HW} (block_hw {block_hw} too small)")
    block_k, block_cg = triton.next_power_of_2(k), triton.next_power_of_2(C // groups)
    return Plan(block_hw, block_c, k, block_k, block_cg, num_warps, cb_first)


def _one_pass(HW: int, prefer: str | None = None) -> bool:
    """Whether the strategy in force takes the one-pass kernels for maps of ``HW`` pixels, for a call that prefers
    ``prefer`` (followed under ``"auto"``; ``None``: the tiles)."""
    strategy = (prefer or "tiles") if _strategy == "auto" else _strategy
    return strategy == "one_pass" or (strategy == "hybrid" and HW <= ONE_PASS_MAX_HW)


class OnePassPlan(NamedTuple):
    """One-pass tiling: ``[block_hw, block_c]`` tiles, ``cpb`` channels (whole groups) per program, warps."""

    block_hw: int
    block_c: int
    cpb: int
    num_warps: int
    cb_first: bool


def _one_pass_tiles(C: int, HW: int, cg: int, nhwc: bool) -> tuple[int, int, int, bool]:
    """``(block_hw, block_c, num_warps, cb_first)`` of the one-pass kernels: 128 pixels by at least 32 channels
    (enough for one whole group), 4 warps, channel blocks first (a first choice, not yet swept on a GPU)."""
    block_c = max(triton.next_power_of_2(cg), min(32, triton.next_power_of_2(C)))
    return min(128, triton.next_power_of_2(HW)), block_c, 4, True


@functools.lru_cache(maxsize=1024)
def _one_pass_plan(C: int, HW: int, groups: int, nhwc: bool) -> OnePassPlan:
    cg = C // groups
    block_hw, block_c, num_warps, cb_first = _one_pass_tiles(C, HW, cg, nhwc)
    if block_c < cg:
        raise ValueError(f"a one-pass program holds whole groups: block_c {block_c} < {cg} channels per group")
    return OnePassPlan(block_hw, block_c, (block_c // cg) * cg, num_warps, cb_first)


def _flat_strides(t: Tensor) -> tuple[int, int, int] | None:
    """``(stride_b, stride_c, stride_hw)`` when ``H`` and ``W`` merge into one strided dimension, else ``None``."""
    sb, sc, sh, sw = t.stride()
    if t.shape[3] == 1 or sh == sw * t.shape[3]:
        return sb, sc, sw if t.shape[3] > 1 else sh
    if t.shape[2] == 1:
        return sb, sc, sw
    return None


def _rows(t: Tensor | None, batch: int, channels: int) -> tuple[Tensor | None, int]:
    """A ``[B, C]`` (or ``[B, C, 1, 1]``) conditioning tensor as rows with unit column stride, and its row stride."""
    if t is None:
        return None, 0
    t2 = t.reshape(batch, channels) if t.dim() != 2 else t
    if t2.shape != (batch, channels):
        raise ValueError(f"per-channel conditioning must be [B, C] = [{batch}, {channels}], got {tuple(t.shape)}")
    if t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2, t2.stride(0)


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, add, scale, shift, groups: int, eps: float, silu: bool, prefer: str | None,
                with_input: bool):  # fmt: skip
        x_in = x
        B, C, H, W = x.shape
        HW = H * W
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()  # y and dx are allocated like x and written with x's strides: x must be dense
        nhwc = channels_last(x)
        strides = _flat_strides(x)
        add2, sab = _rows(add, B, C)
        scale2, ssb = _rows(scale, B, C)
        shift2, stb = _rows(shift, B, C)
        dev = x.get_device()
        cg = C // groups
        stats = torch.empty(2, B, groups, device=x.device, dtype=torch.float32)
        y = torch.empty_like(x)  # same strides as x (preserve_format on a dense tensor)
        xa, sa, ta = (x if t is None else t for t in (add2, scale2, shift2))  # (x: a placeholder pointer)
        has = (add2 is not None, scale2 is not None, shift2 is not None, silu)
        one_pass = _one_pass(HW, prefer)  # the backward takes the same kernels
        if one_pass and B > 0 and HW > 0:
            op = _one_pass_plan(C, HW, groups, nhwc)
            blocks = triton.cdiv(C, op.cpb)
            launch(_one_pass_fwd_kernel, (blocks, B) if op.cb_first else (B, blocks), dev, op.num_warps, x, xa,
                    weight, bias, sa, ta, y, stats, B, C, HW, groups, cg, op.cpb, float(HW * cg), eps, *strides, sab,
                    ssb, stb, *has, op.block_hw, op.block_c, triton.cdiv(HW, op.block_hw), op.cb_first)  # fmt: skip
        elif B > 0 and HW > 0:
            block_hw, block_c, k, block_k, block_cg, warps, cb_first = _plan(C, HW, groups, nhwc, False)
            part = torch.empty(2, B, k, C, device=x.device, dtype=torch.float32)
            grid = (triton.cdiv(C, block_c), k, B) if cb_first else (B, k, triton.cdiv(C, block_c))
            launch(_stats_kernel, grid, dev, warps, x, xa, part, C, HW, k, *strides, sab, has[0], block_hw, block_c,
                    cb_first)  # fmt: skip
            launch(_combine_stats_kernel, (B, groups), dev, COMBINE_WARPS, part, stats[0], stats[1], B, C, HW, k,
                    groups, cg, float(HW * cg), eps, block_hw, block_k, block_cg)  # fmt: skip
            launch(_apply_kernel, grid, dev, warps, x, xa, stats[0], stats[1], weight, bias, sa, ta, y, C, HW,
                    groups, cg, *strides, sab, ssb, stb, *has, block_hw, block_c, cb_first)  # fmt: skip
        ctx.save_for_backward(x, weight, bias, add2, scale2, shift2, stats)
        ctx.meta = (groups, silu, nhwc, strides, sab, ssb, stb, one_pass)
        ctx.shapes = tuple(None if t is None else t.shape for t in (add, scale, shift))
        ctx.set_materialize_grads(False)
        # With the input as a second output (autograd makes it a view of x whose node is this one), x's other use
        # hands its gradient to this backward, which adds it in the input-gradient kernel.
        return (y, x_in) if with_input else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, res=None):
        x, weight, bias, add2, scale2, shift2, stats = ctx.saved_tensors
        groups, silu, nhwc, strides, sab, ssb, stb, one_pass = ctx.meta
        if dy is None:
            return (res if ctx.needs_input_grad[0] else None,) + (None,) * 10
        B, C, H, W = x.shape
        HW = H * W
        dstrides = _flat_strides(dy)
        if dstrides is None or (dy.stride(1) == 1) != nhwc:
            dy = dy.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
            dstrides = _flat_strides(dy)
        dev = x.get_device()
        cg = C // groups
        has = (add2 is not None, scale2 is not None, shift2 is not None, silu)
        xa, sa, ta = (x if t is None else t for t in (add2, scale2, shift2))
        rstrides = (0, 0, 0)
        if res is not None:
            rstrides = _flat_strides(res)
            if rstrides is None:
                res = res.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
                rstrides = _flat_strides(res)
        has_res = res is not None
        pc = torch.empty(5 if has[0] else 4, B, C, device=x.device, dtype=torch.float32)
        dx = torch.empty_like(x)
        if one_pass and B > 0 and HW > 0:
            op = _one_pass_plan(C, HW, groups, nhwc)
            blocks = triton.cdiv(C, op.cpb)
            launch(_one_pass_bwd_kernel, (blocks, B) if op.cb_first else (B, blocks), dev, op.num_warps, x, xa, dy,
                    stats, weight, bias, sa, ta, res if has_res else x, dx, pc, B, C, HW, groups, cg, op.cpb,
                    float(HW * cg), *strides, sab, ssb, stb, *dstrides, *rstrides, *has, has_res, op.block_hw,
                    op.block_c, triton.cdiv(HW, op.block_hw), op.cb_first)  # fmt: skip
            return _grads(ctx, dx, pc, weight, bias, add2, scale2, shift2, has)
        block_hw, block_c, k, block_k, block_cg, warps, cb_first = _plan(C, HW, groups, nhwc, True)
        part = torch.empty(3 if has[0] else 2, B, k, C, device=x.device, dtype=torch.float32)
        coef = torch.empty(2, B, groups, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(C, block_c), k, B) if cb_first else (B, k, triton.cdiv(C, block_c))
        if B > 0 and HW > 0:
            common = (C, HW)
            launch(_grad_sums_kernel, grid, dev, warps, x, xa, dy, stats[0], stats[1], weight, bias, sa, ta, part,
                    *common, k, groups, cg, *strides, sab, ssb, stb, *dstrides, *has, block_hw, block_c,
                    cb_first)  # fmt: skip
            launch(_combine_grads_kernel, (B, groups), dev, COMBINE_WARPS, part, stats[1], weight, bias, sa, coef, pc,
                    B, C, HW, k, groups, cg, float(HW * cg), ssb, has[0], has[1], block_k, block_cg)  # fmt: skip
            launch(_grad_x_kernel, grid, dev, warps, x, xa, dy, stats[0], stats[1], weight, bias, sa, ta, coef,
                    res if has_res else x, dx, B, *common, groups, cg, *strides, sab, ssb, stb, *dstrides, *rstrides,
                    *has, has_res, block_hw, block_c, cb_first)  # fmt: skip
        else:
            pc.zero_()
            dx.zero_()
        return _grads(ctx, dx, pc, weight, bias, add2, scale2, shift2, has)


def _grads(ctx, dx, pc, weight, bias, add2, scale2, shift2, has) -> tuple:
    """The backward's outputs from ``dx`` and the per-(sample, channel) partials ``pc`` (batch sums for the weight
    and bias), each in its input's dtype and shape."""
    need = ctx.needs_input_grad
    if FUSED_AFFINE_GRAD_SUMS and need[1] and need[2]:
        g_w, g_b = pc[2:4].sum(1)
        g_w, g_b = g_w.to(weight.dtype), g_b.to(bias.dtype)
    else:
        g_w = pc[2].sum(0).to(weight.dtype) if need[1] else None
        g_b = pc[3].sum(0).to(bias.dtype) if need[2] else None
    g_add = pc[4].to(add2.dtype).reshape(ctx.shapes[0]) if has[0] and need[3] else None
    g_scale = pc[1].to(scale2.dtype).reshape(ctx.shapes[1]) if has[1] and need[4] else None
    g_shift = pc[0].to(shift2.dtype).reshape(ctx.shapes[2]) if has[2] and need[5] else None
    return dx if need[0] else None, g_w, g_b, g_add, g_scale, g_shift, None, None, None, None, None


def supported(x: Tensor, num_groups: int) -> bool:
    """Whether the fused path takes this input (4-D, a supported dtype, channels divisible by the groups)."""
    return (
        x.dim() == 4
        and x.dtype in SUPPORTED_DTYPES
        and x.shape[1] % num_groups == 0
        and x.shape[2] * x.shape[3] <= MAX_HW
    )


def group_norm_act(
    x: Tensor,
    num_groups: int,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    *,
    add: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    silu: bool = False,
    prefer: str | None = None,
) -> Tensor:
    """Fused [`scoredistill.networks.layers.group_norm_act`][scoredistill.networks.layers.group_norm_act] (same
    contract): output in ``x``'s dtype and memory format; gradients into every tensor argument in its own dtype.

    ``prefer`` names the launch strategy this call prefers (``"tiles"``, ``"one_pass"`` or ``"hybrid"``; ``None``:
    ``"tiles"``), followed while the module-wide strategy is ``"auto"`` (see
    [`set_strategy`][scoredistill.kernels.groupnorm_triton.set_strategy]). The maths is the same either way.
    """
    return _apply(x, num_groups, weight, bias, eps, add, scale, shift, silu, prefer, with_input=False)


def group_norm_act_with_input(
    x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float, **options: Any
) -> tuple[Tensor, Tensor]:
    """[`group_norm_act`][scoredistill.kernels.groupnorm_triton.group_norm_act] and ``x`` itself, for a second use
    of ``x`` (a residual block's skip path): the gradient that use returns is added to the norm's input gradient in
    the norm's backward kernel, instead of by autograd's separate sum of the two (an extra pass over ``x``'s size).

    Args:
        x: As for ``group_norm_act``.
        num_groups: As for ``group_norm_act``.
        weight: As for ``group_norm_act``.
        bias: As for ``group_norm_act``.
        eps: As for ``group_norm_act``.
        **options: ``group_norm_act``'s keywords (``add``, ``scale``, ``shift``, ``silu``, ``prefer``).

    Returns:
        ``(y, x)``: the norm's output and the same values as ``x`` (a view of it that autograd routes through the
        norm's backward). The gradients are those of using ``x`` twice, up to the sum's rounding (once, in float32,
        instead of twice).
    """
    return _apply(x, num_groups, weight, bias, eps, **options, with_input=True)


def _apply(x, num_groups, weight, bias, eps, add=None, scale=None, shift=None, silu=False, prefer=None, *, with_input):
    C = x.shape[1]
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"weight and bias must be [C] = [{C}], got {tuple(weight.shape)}, {tuple(bias.shape)}")
    if prefer is not None and prefer not in GROUP_NORM_STRATEGIES:
        raise ValueError(f"unknown group-norm strategy {prefer!r} preferred: choose one of {GROUP_NORM_STRATEGIES}")
    return _GroupNormAct.apply(
        x, weight, bias, add, scale, shift, int(num_groups), float(eps), bool(silu), prefer, with_input
    )
