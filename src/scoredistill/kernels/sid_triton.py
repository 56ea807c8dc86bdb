"""Fused Triton kernels for SiD's generator loss and SiDA's generator adversarial term.

The public function :func:`sid_generator_terms` has exactly the contract of
:func:`scoredistill.losses.functional.sid_generator_terms` (the reference): same inputs, same ``[B]`` float32
outputs, same gradients, same masking of non-finite samples. What changes is the memory traffic:

* forward, one pass over ``x_g``, ``d_real``, ``d_fake``: every sample is split over several programs (so that a
  batch of 32 CIFAR-10 images still fills the GPU), each writing three partial sums (``sum |x_g - d_real|``,
  ``sum delta (a - alpha delta)`` with ``delta = d_real - d_fake`` and ``a = d_real - x_g``, and a count of
  non-finite values) into a small ``[3, B, S]`` buffer; a second tiny kernel reduces the partials in a fixed
  order (deterministic, no atomics) and applies the L1 normaliser ``w = 1 / max(mean |x_g - d_real|, 1e-5)`` and
  the mask.
* backward, one pass reading the three inputs and writing the three gradients (in the inputs' dtypes):
  ``dL/dx_g = -w delta``, ``dL/dd_real = w ((a - alpha delta) + (1 - alpha) delta)``,
  ``dL/dd_fake = w (2 alpha delta - a)``, each times the incoming gradient, and exactly 0 for masked samples.
* the adversarial term on the small ``[B, 1, h, w]`` logit map is one single-program kernel each way.

Nothing synchronises with the host: the mask lives in the weights, never in a Python branch.

The helpers prefixed ``_`` here are shared with :mod:`scoredistill.kernels.dsm_triton`.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..losses import functional as ref

__all__ = ["sid_generator_terms"]

BLOCK = 1024  # elements per inner step of the streaming kernels
NUM_WARPS = 4
PROGRAMS_PER_SM = 4  # target occupancy of the forward split: about this many programs per SM over the whole batch
FLT_MAX = tl.constexpr(3.4028234663852886e38)  # constexpr: readable inside @triton.jit functions
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- Triton helpers


@triton.jit
def _finite(v):
    # False for NaN (every comparison with NaN is False) and for +-inf.
    return tl.abs(v) <= FLT_MAX


@triton.jit
def _softplus(z):
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)), with an accurate log1p (Goldberg's trick, no libdevice needed).
    u = tl.exp(-tl.abs(z))
    one_u = 1.0 + u
    log1p_u = tl.where(one_u == 1.0, u, tl.log(one_u) * (u / (one_u - 1.0)))
    return tl.maximum(z, 0.0) + log1p_u


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


# ------------------------------------------------------------------------------------------------ SiD kernels


@triton.jit
def _sid_fwd_partial_kernel(xg_ptr, dr_ptr, df_ptr, part_ptr, B, N, CHUNK, S, alpha, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    row = b.to(tl.int64) * N
    start = s * CHUNK
    acc_l1 = tl.zeros([BLOCK], dtype=tl.float32)
    acc_sid = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bad = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < N
        x = tl.load(xg_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        r = tl.load(dr_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        f = tl.load(df_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        a = r - x
        delta = r - f
        acc_l1 += tl.abs(a)
        acc_sid += delta * (a - alpha * delta)
        ok = _finite(x) & _finite(r) & _finite(f)
        acc_bad += tl.where(ok, 0.0, 1.0)
    base = b * S + s
    tl.store(part_ptr + base, tl.sum(acc_l1, axis=0))
    tl.store(part_ptr + B * S + base, tl.sum(acc_sid, axis=0))
    tl.store(part_ptr + 2 * B * S + base, tl.sum(acc_bad, axis=0))


@triton.jit
def _sid_fwd_final_kernel(part_ptr, sid_ptr, w_ptr, B, S, inv_n, floor, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    l1 = tl.zeros([BLOCK_B], dtype=tl.float32)
    sid = tl.zeros([BLOCK_B], dtype=tl.float32)
    bad = tl.zeros([BLOCK_B], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        cs = s0 + tl.arange(0, BLOCK_S)
        m2 = mb[:, None] & (cs < S)[None, :]
        offs = rb[:, None] * S + cs[None, :]
        l1 += tl.sum(tl.load(part_ptr + offs, mask=m2, other=0.0), axis=1)
        sid += tl.sum(tl.load(part_ptr + B * S + offs, mask=m2, other=0.0), axis=1)
        bad += tl.sum(tl.load(part_ptr + 2 * B * S + offs, mask=m2, other=0.0), axis=1)
    ok = bad == 0.0
    w = 1.0 / tl.maximum(l1 * inv_n, floor)
    w = tl.where(ok, w, 0.0)
    tl.store(w_ptr + rb, w, mask=mb)
    tl.store(sid_ptr + rb, tl.where(ok, sid * w, 0.0), mask=mb)


@triton.jit
def _sid_bwd_kernel(
    xg_ptr,
    dr_ptr,
    df_ptr,
    g_ptr,
    w_ptr,
    gx_ptr,
    gr_ptr,
    gf_ptr,
    N,
    alpha,
    GX: tl.constexpr,
    GR: tl.constexpr,
    GF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    row = b.to(tl.int64) * N
    w = tl.load(w_ptr + b)
    ok = w > 0.0  # w is 0 exactly for masked samples (and positive for every kept one)
    scale = tl.load(g_ptr + b).to(tl.float32) * w
    x = tl.load(xg_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
    r = tl.load(dr_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
    f = tl.load(df_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
    a = r - x
    delta = r - f
    if GX:
        gx = tl.where(ok, -scale * delta, 0.0)
        tl.store(gx_ptr + row + idx, gx.to(gx_ptr.dtype.element_ty), mask=m)
    if GR:
        gr = tl.where(ok, scale * ((a - alpha * delta) + (1.0 - alpha) * delta), 0.0)
        tl.store(gr_ptr + row + idx, gr.to(gr_ptr.dtype.element_ty), mask=m)
    if GF:
        gf = tl.where(ok, scale * (2.0 * alpha * delta - a), 0.0)
        tl.store(gf_ptr + row + idx, gf.to(gf_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------ small logit-map kernels (shared)
# MODE 0: SiDA generator term   out_i = ok_i * numel * w_i * mean_{ok rows} mean_p softplus(-clamp(a, -10, 10))
# MODE 1: SiDA discriminator    out_i = ok_i * lam(sigma_i) * 1/2 [mean softplus(-a) + mean softplus(b)]
# ok_i: row i of a (and b) finite, and (MODE 1) sigma_i finite. One program; the maps are tiny.


@triton.jit
def _row_coef(coef_ptr, rb, mb, numel, sigma_data, MODE: tl.constexpr):
    c = tl.load(coef_ptr + rb, mask=mb, other=0.0).to(tl.float32)
    if MODE == 0:  # noqa: SIM108 (constexpr branch inside a Triton kernel)
        coef = numel * c
    else:
        coef = (c * c + sigma_data * sigma_data) / ((c * sigma_data) * (c * sigma_data))
    return coef, mb & _finite(c)


@triton.jit
def _logit_rows(a_ptr, b_ptr, rb, mb, L, clamp_val, MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr):
    # Per row: mean softplus terms of a (and b), and whether the row is finite.
    sa = tl.zeros([BLOCK_B], dtype=tl.float32)
    sb = tl.zeros([BLOCK_B], dtype=tl.float32)
    bad = tl.zeros([BLOCK_B], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        cl = l0 + tl.arange(0, BLOCK_L)
        m2 = mb[:, None] & (cl < L)[None, :]
        offs = rb[:, None].to(tl.int64) * L + cl[None, :]
        va = tl.load(a_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        if MODE == 0:  # noqa: SIM108
            za = -tl.minimum(tl.maximum(va, -clamp_val), clamp_val)
        else:
            za = -va
        sa += tl.sum(tl.where(m2, _softplus(za), 0.0), axis=1)
        okv = _finite(va)
        if MODE == 1:
            vb = tl.load(b_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            sb += tl.sum(tl.where(m2, _softplus(vb), 0.0), axis=1)
            okv = okv & _finite(vb)
        bad += tl.sum(tl.where(okv, 0.0, 1.0), axis=1)  # masked-off entries load as 0: finite
    return sa / L, sb / L, bad == 0.0


@triton.jit
def _logit_fwd_kernel(
    a_ptr,
    b_ptr,
    coef_ptr,
    out_ptr,
    B,
    L,
    numel,
    sigma_data,
    clamp_val,
    MODE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    tot_a = tl.zeros([BLOCK_B], dtype=tl.float32)
    tot_b = tl.zeros([BLOCK_B], dtype=tl.float32)
    nok = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        ma, mbb, okr = _logit_rows(a_ptr, b_ptr, rb, mb, L, clamp_val, MODE, BLOCK_B, BLOCK_L)
        coef, okc = _row_coef(coef_ptr, rb, mb, numel, sigma_data, MODE)
        ok = okr & okc
        tot_a += tl.where(ok, ma, 0.0)
        tot_b += tl.where(ok, mbb, 0.0)
        nok += tl.where(ok, 1.0, 0.0)
    n = tl.maximum(tl.sum(nok, axis=0), 1.0)
    if MODE == 0:  # noqa: SIM108
        loss = tl.sum(tot_a, axis=0) / n
    else:
        loss = 0.5 * (tl.sum(tot_a, axis=0) / n + tl.sum(tot_b, axis=0) / n)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        ma, mbb, okr = _logit_rows(a_ptr, b_ptr, rb, mb, L, clamp_val, MODE, BLOCK_B, BLOCK_L)
        coef, okc = _row_coef(coef_ptr, rb, mb, numel, sigma_data, MODE)
        tl.store(out_ptr + rb, tl.where(okr & okc, coef * loss, 0.0), mask=mb)


@triton.jit
def _logit_bwd_kernel(
    a_ptr,
    b_ptr,
    coef_ptr,
    g_ptr,
    ga_ptr,
    gb_ptr,
    B,
    L,
    numel,
    sigma_data,
    clamp_val,
    MODE: tl.constexpr,
    GA: tl.constexpr,
    GB: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Pass 1: G = sum_i g_i ok_i coef_i and the number of kept rows.
    acc_g = tl.zeros([BLOCK_B], dtype=tl.float32)
    nok = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        _ma, _mbb, okr = _logit_rows(a_ptr, b_ptr, rb, mb, L, clamp_val, MODE, BLOCK_B, BLOCK_L)
        coef, okc = _row_coef(coef_ptr, rb, mb, numel, sigma_data, MODE)
        ok = okr & okc
        g = tl.load(g_ptr + rb, mask=mb, other=0.0).to(tl.float32)
        acc_g += tl.where(ok, g * coef, 0.0)
        nok += tl.where(ok, 1.0, 0.0)
    big_g = tl.sum(acc_g, axis=0)
    if MODE == 1:
        big_g = 0.5 * big_g
    gscale = big_g / tl.maximum(tl.sum(nok, axis=0), 1.0) / L
    # Pass 2: d out / d logits, zero on dropped rows.
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        _ma, _mbb, okr = _logit_rows(a_ptr, b_ptr, rb, mb, L, clamp_val, MODE, BLOCK_B, BLOCK_L)
        coef, okc = _row_coef(coef_ptr, rb, mb, numel, sigma_data, MODE)
        ok = okr & okc
        for l0 in range(0, L, BLOCK_L):
            cl = l0 + tl.arange(0, BLOCK_L)
            m2 = mb[:, None] & (cl < L)[None, :]
            offs = rb[:, None].to(tl.int64) * L + cl[None, :]
            keep = ok[:, None] & m2
            va = tl.load(a_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            if GA:
                if MODE == 0:
                    inside = (va >= -clamp_val) & (va <= clamp_val)
                    ca = tl.minimum(tl.maximum(va, -clamp_val), clamp_val)
                    da = tl.where(inside, -_sigmoid(-ca), 0.0)
                else:
                    da = -_sigmoid(-va)
                ga = tl.where(keep, gscale * da, 0.0)
                tl.store(ga_ptr + offs, ga.to(ga_ptr.dtype.element_ty), mask=m2)
            if GB:
                vb = tl.load(b_ptr + offs, mask=m2, other=0.0).to(tl.float32)
                gb = tl.where(keep, gscale * _sigmoid(vb), 0.0)
                tl.store(gb_ptr + offs, gb.to(gb_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------------------------------------ host helpers


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the Triton interpreter on CPU: keep the grid small


def _split(batch: int, numel: int, device: torch.device) -> tuple[int, int]:
    """Programs per sample ``S`` and elements per program ``chunk`` (a multiple of :data:`BLOCK`)."""
    n_blocks = max(1, triton.cdiv(numel, BLOCK))
    per_sample = max(1, min(n_blocks, triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), max(batch, 1))))
    chunk = triton.cdiv(n_blocks, per_sample) * BLOCK
    return triton.cdiv(numel, chunk), chunk


def _rows(t: Tensor, batch: int) -> Tensor:
    # [B, ...] -> contiguous [B, N] (a view when already contiguous).
    return t.contiguous().view(batch, -1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _supported(*tensors: Tensor) -> bool:
    """Whether the fused path can take these tensors (else the caller runs the reference)."""
    dev = tensors[0].device
    ok_dev = dev.type == "cuda" or (dev.type == "cpu" and _interpreting())
    return ok_dev and all(t.dtype in SUPPORTED_DTYPES and t.device == dev for t in tensors)


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must share one shape [B, ...], got {shapes}")


LOGIT_TILE = 8192  # elements of one logit tile: a whole [B, h*w] map in one or two tiles (one program)
LOGIT_WARPS = 8


def _logit_block(batch: int, length: int) -> tuple[int, int]:
    # One program walks the map tile by tile; big tiles keep its serial latency to a few loads.
    block_l = min(triton.next_power_of_2(max(length, 1)), 1024)
    block_b = max(1, min(triton.next_power_of_2(max(batch, 1)), LOGIT_TILE // block_l))
    return block_b, block_l


# --------------------------------------------------------------------------------------- autograd.Functions


class _SiDFunction(torch.autograd.Function):
    """``(x_g, d_real, d_fake) -> (sid [B], w [B])``; ``w`` carries no gradient."""

    @staticmethod
    def forward(ctx, x_g: Tensor, d_real: Tensor, d_fake: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        batch = x_g.shape[0]
        xf, rf, ff = _rows(x_g, batch), _rows(d_real, batch), _rows(d_fake, batch)
        numel = xf.shape[1]
        splits, chunk = _split(batch, numel, x_g.device)
        # One allocation for the partials and both outputs (fewer host-side calls on the latency-bound sizes).
        buf = torch.empty(3 * batch * splits + 2 * batch, dtype=torch.float32, device=x_g.device)
        part, sid, w = buf.split((3 * batch * splits, batch, batch))
        if batch > 0:
            _sid_fwd_partial_kernel[(batch, splits)](
                xf, rf, ff, part, batch, numel, chunk, splits, float(alpha), BLOCK=BLOCK, num_warps=NUM_WARPS
            )
            block_b = min(triton.next_power_of_2(batch), 128)
            block_s = min(triton.next_power_of_2(splits), 64)
            _sid_fwd_final_kernel[(triton.cdiv(batch, block_b),)](
                part, sid, w, batch, splits, 1.0 / max(numel, 1), ref.L1_FLOOR, BLOCK_B=block_b, BLOCK_S=block_s
            )
        ctx.save_for_backward(xf, rf, ff, w)
        ctx.alpha = float(alpha)
        ctx.shapes = (x_g.shape, d_real.shape, d_fake.shape)
        ctx.mark_non_differentiable(w)
        return sid, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sid: Tensor, _g_w: Tensor | None) -> tuple[Tensor | None, ...]:
        xf, rf, ff, w = ctx.saved_tensors
        need_x, need_r, need_f = ctx.needs_input_grad[:3]
        batch, numel = xf.shape
        gx = torch.empty_like(xf) if need_x else None
        gr = torch.empty_like(rf) if need_r else None
        gf = torch.empty_like(ff) if need_f else None
        if batch > 0 and numel > 0 and (need_x or need_r or need_f):
            g = g_sid.contiguous()
            _sid_bwd_kernel[(batch, triton.cdiv(numel, BLOCK))](
                xf,
                rf,
                ff,
                g,
                w,
                gx if need_x else xf,
                gr if need_r else rf,
                gf if need_f else ff,
                numel,
                ctx.alpha,
                GX=need_x,
                GR=need_r,
                GF=need_f,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
            )
        sx, sr, sf = ctx.shapes
        return (
            gx.view(sx) if gx is not None else None,
            gr.view(sr) if gr is not None else None,
            gf.view(sf) if gf is not None else None,
            None,
        )


class _LogitFunction(torch.autograd.Function):
    """The small logit-map terms (``MODE`` 0: generator adversarial, 1: discriminator); ``coef`` gets no grad."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor | None, coef: Tensor, mode: int, numel: float, sigma_data: float) -> Tensor:
        batch = a.shape[0]
        af = _rows(a, batch)
        bf = _rows(b, batch) if b is not None else af
        coef = coef.detach().contiguous()
        length = af.shape[1]
        out = torch.empty(batch, dtype=torch.float32, device=a.device)
        block_b, block_l = _logit_block(batch, length)
        if batch > 0:
            _logit_fwd_kernel[(1,)](
                af,
                bf,
                coef,
                out,
                batch,
                length,
                float(numel),
                float(sigma_data),
                ref.LOGIT_CLAMP,
                MODE=mode,
                BLOCK_B=block_b,
                BLOCK_L=block_l,
                num_warps=LOGIT_WARPS,
            )
        ctx.save_for_backward(af, bf, coef)
        ctx.meta = (mode, float(numel), float(sigma_data), a.shape, None if b is None else b.shape)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        af, bf, coef = ctx.saved_tensors
        mode, numel, sigma_data, a_shape, b_shape = ctx.meta
        need_a = ctx.needs_input_grad[0]
        need_b = b_shape is not None and ctx.needs_input_grad[1]
        batch, length = af.shape
        ga = torch.empty_like(af) if need_a else None
        gb = torch.empty_like(bf) if need_b else None
        if batch > 0 and length > 0 and (need_a or need_b):
            block_b, block_l = _logit_block(batch, length)
            _logit_bwd_kernel[(1,)](
                af,
                bf,
                coef,
                g.contiguous(),
                ga if need_a else af,
                gb if need_b else bf,
                batch,
                length,
                numel,
                sigma_data,
                ref.LOGIT_CLAMP,
                MODE=mode,
                GA=need_a,
                GB=need_b,
                BLOCK_B=block_b,
                BLOCK_L=block_l,
                num_warps=LOGIT_WARPS,
            )
        return (
            ga.view(a_shape) if ga is not None else None,
            gb.view(b_shape) if gb is not None else None,
            None,
            None,
            None,
            None,
        )


# ------------------------------------------------------------------------------------------------- public API


def sid_generator_terms(
    x_g: Tensor, d_real: Tensor, d_fake: Tensor, *, alpha: float, logits_fake: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fused :func:`scoredistill.losses.functional.sid_generator_terms` (same contract, same maths).

    Args:
        x_g: Generator samples ``[B, ...]`` (float32, bfloat16 or float16; any strides).
        d_real: Teacher's denoised estimate at ``x_t``, same shape.
        d_fake: Fake score's denoised estimate at ``x_t``, same shape.
        alpha: SiD's alpha.
        logits_fake: ``[B, ...]`` discriminator logits at ``x_t`` (``[B, 1, h, w]``), or ``None``.

    Returns:
        ``(sid, weight, adv)``, each ``[B]`` float32: the SiD loss per sample (pixel sum, times the L1 weight),
        the L1 weight itself (no gradient; 0 on masked samples) and, when logits are given, the adversarial
        generator term ``numel * w_i * mean softplus(-clamp(logits, -10, 10))`` (else ``None``). Gradients flow
        into ``x_g``, ``d_real``, ``d_fake`` and ``logits_fake`` in their own dtypes. Inputs the kernels do not
        take (float64, CPU without ``TRITON_INTERPRET=1``) run the reference instead.
    """
    if not (x_g.shape == d_real.shape == d_fake.shape):
        _check_same_shape(x_g=x_g, d_real=d_real, d_fake=d_fake)
    tensors = (x_g, d_real, d_fake) + ((logits_fake,) if logits_fake is not None else ())
    if not _supported(*tensors) or x_g.dim() < 1:
        return ref.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha, logits_fake=logits_fake)
    sid, weight = _SiDFunction.apply(x_g, d_real, d_fake, float(alpha))
    adv = None
    if logits_fake is not None:
        if logits_fake.shape[0] != x_g.shape[0]:
            raise ValueError(f"logits_fake must have batch {x_g.shape[0]}, got {tuple(logits_fake.shape)}")
        numel = math.prod(x_g.shape[1:])
        adv = _LogitFunction.apply(logits_fake, None, weight, 0, float(numel), 0.0)
    return sid, weight, adv
