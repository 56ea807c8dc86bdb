"""Fused Triton kernels for SiD's generator loss and SiDA's generator adversarial term.

The public function `sid_generator_terms` has exactly the contract of
[`scoredistill.losses.functional.sid_generator_terms`][scoredistill.losses.functional.sid_generator_terms] (the
reference): same inputs, same ``[B]`` float32 outputs, same gradients, same masking of non-finite samples. What changes
is the memory traffic and the number of
launches: one kernel launch each way, whatever the options.

* forward, one pass over ``x_g``, ``d_real``, ``d_fake``: every sample is split over several programs (so that a
  batch of 32 CIFAR-10 images still fills the GPU), each writing three partial sums (``sum |x_g - d_real|``,
  ``sum delta (a - alpha delta)`` with ``delta = d_real - d_fake`` and ``a = d_real - x_g``, and a count of
  non-finite values) into a small buffer. The first program of each sample also reduces that sample's row of the
  ``[B, 1, h, w]`` logit map (the SiDA term), so the logits cost no extra launch and are spread over ``B``
  programs. The last program to finish (an arrival counter, see `arrival_counter`) reduces all partials in a fixed
  order (deterministic: the order never depends on which program came last), applies the L1 normaliser
  ``w = 1 / max(mean |x_g - d_real|, 1e-5)``, the mask and the batch mean of the adversarial term.
* backward, one pass reading the three inputs and writing the three gradients (in the inputs' dtypes):
  ``dL/dx_g = -w delta``, ``dL/dd_real = w ((a - alpha delta) + (1 - alpha) delta)``,
  ``dL/dd_fake = w (2 alpha delta - a)``, each times the incoming gradient, and exactly 0 for masked samples.
  The first program of each sample also writes that sample's logit gradient; the batch-wide factor it needs
  (``sum_i g_i coef_i``) is ``B`` multiply-adds that every such program recomputes in the same order.

Nothing synchronises with the host: the mask lives in the weights, never in a Python branch. Inputs that are
contiguous or channels_last (all with one layout) are read in place; the per-sample sums do not depend on the
order of the elements inside a sample.

The helpers shared with the other kernels live in `scoredistill.kernels.triton_utils`. This module imports
nothing from `scoredistill.losses`: the dispatch there passes the reference's constants in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._types import check_same_shape
from .triton_utils import (
    BLOCK,
    backward_plan,
    dense,
    empty_grads,
    finite,
    last_arrival,
    launch,
    launch_reduction,
    logit_grad_factor,
    logit_row_sums,
    reduce_parts,
    sigmoid,
    streaming_reduction,
    supported_tensors,
)

__all__ = ["L1_FLOOR", "LOGIT_CLAMP", "sid_generator_terms", "supported"]

L1_FLOOR = 1e-5  # defaults for direct calls: the values of scoredistill.losses.functional, which the dispatch passes
LOGIT_CLAMP = 10.0


@triton.jit
def _sid_finish(
    buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    lsum_ptr = part_ptr + 3 * B * S
    loss = 0.0
    n = 1.0
    if HAS_LOGITS:
        # Pass 1: the batch mean over kept rows of the per-row mean softplus term.
        tot = tl.zeros([BLOCK_B], dtype=tl.float32)
        nok = tl.zeros([BLOCK_B], dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rb = b0 + tl.arange(0, BLOCK_B)
            mb = rb < B
            sa = tl.load(lsum_ptr + rb, mask=mb, other=0.0, cache_modifier=".cg")
            okl = mb & (tl.load(lsum_ptr + B + rb, mask=mb, other=1.0, cache_modifier=".cg") == 0.0)
            tot += tl.where(okl, sa / L, 0.0)
            nok += tl.where(okl, 1.0, 0.0)
        n = tl.maximum(tl.sum(nok, axis=0), 1.0)
        loss = tl.sum(tot, axis=0) / n
    # Pass 2: per sample, w, the SiD loss and (with logits) the adversarial term.
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        l1, sid, bad = reduce_parts(part_ptr, rb, mb, B, S, 3, BLOCK_B, BLOCK_S)
        ok = bad == 0.0
        w = tl.where(ok, 1.0 / tl.maximum(l1 * inv_n, floor), 0.0)
        tl.store(buf_ptr + rb, tl.where(ok, sid * w, 0.0), mask=mb)
        tl.store(buf_ptr + B + rb, w, mask=mb)
        if HAS_LOGITS:
            okl = tl.load(lsum_ptr + B + rb, mask=mb, other=1.0, cache_modifier=".cg") == 0.0
            coef = numel_f * w
            tl.store(buf_ptr + 2 * B + rb, tl.where(okl, coef * loss, 0.0), mask=mb)
            tl.store(buf_ptr + 3 * B + rb, tl.where(okl, coef / n / L, 0.0), mask=mb)
            tl.store(buf_ptr + 4 * B + rb, tl.where(okl, 1.0, 0.0), mask=mb)


@triton.jit
def _sid_fwd_kernel(
    xg_ptr,
    dr_ptr,
    df_ptr,
    lg_ptr,
    buf_ptr,
    cnt_ptr,
    B,
    N,
    CHUNK,
    L,
    alpha,
    inv_n,
    floor,
    numel_f,
    clamp_val,
    HAS_LOGITS: tl.constexpr,
    FUSED: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1)
    S = tl.num_programs(1)
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
        ok = finite(x) & finite(r) & finite(f)
        acc_bad += tl.where(ok, 0.0, 1.0)
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    base = b * S + s
    tl.store(part_ptr + base, tl.sum(acc_l1, axis=0))
    tl.store(part_ptr + B * S + base, tl.sum(acc_sid, axis=0))
    tl.store(part_ptr + 2 * B * S + base, tl.sum(acc_bad, axis=0))
    if HAS_LOGITS:  # noqa: SIM102 (constexpr test, then a runtime one)
        if s == 0:
            lsum_ptr = part_ptr + 3 * B * S
            sa, _sb, lbad = logit_row_sums(lg_ptr, lg_ptr, b, L, clamp_val, 0, BLOCK_L)
            tl.store(lsum_ptr + b, sa)
            tl.store(lsum_ptr + B + b, lbad)
    if FUSED:  # noqa: SIM102 (constexpr test, then a runtime one)
        if last_arrival(cnt_ptr):
            _sid_finish(buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _sid_finish_kernel(
    buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    _sid_finish(buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _sid_bwd_kernel(
    xg_ptr,
    dr_ptr,
    df_ptr,
    lg_ptr,
    buf_ptr,
    gs_ptr,
    gs_stride,
    ga_ptr,
    ga_stride,
    gx_ptr,
    gr_ptr,
    gf_ptr,
    glg_ptr,
    B,
    N,
    L,
    alpha,
    clamp_val,
    GX: tl.constexpr,
    GR: tl.constexpr,
    GF: tl.constexpr,
    GL: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if GX or GR or GF:
        idx = blk * BLOCK + tl.arange(0, BLOCK)
        m = idx < N
        row = b.to(tl.int64) * N
        w = tl.load(buf_ptr + B + b)
        ok = w > 0.0  # w is 0 exactly for masked samples (and positive for every kept one)
        scale = tl.load(gs_ptr + b.to(tl.int64) * gs_stride).to(tl.float32) * w
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
    if GL:  # noqa: SIM102 (constexpr test, then a runtime one)
        if blk == 0:
            big_g = logit_grad_factor(ga_ptr, ga_stride, buf_ptr + 3 * B, buf_ptr + 4 * B, B, BLOCK_B)
            keep = tl.load(buf_ptr + 4 * B + b) > 0.0
            lbase = b.to(tl.int64) * L
            for l0 in range(0, L, BLOCK_L):
                cl = l0 + tl.arange(0, BLOCK_L)
                ml = cl < L
                va = tl.load(lg_ptr + lbase + cl, mask=ml, other=0.0).to(tl.float32)
                inside = (va >= -clamp_val) & (va <= clamp_val)  # clamp's gradient: 1 inside [-c, c] (inclusive)
                ca = tl.minimum(tl.maximum(va, -clamp_val), clamp_val)
                gl = tl.where(keep, tl.where(inside, big_g * -sigmoid(-ca), 0.0), 0.0)
                tl.store(glg_ptr + lbase + cl, gl.to(glg_ptr.dtype.element_ty), mask=ml)


# --------------------------------------------------------------------------------------- autograd.Function


class _SiDFunction(torch.autograd.Function):
    """``(x_g, d_real, d_fake, logits | None) -> (sid [B], w [B][, adv [B]])``; ``w`` carries no gradient."""

    @staticmethod
    def forward(
        ctx,
        x_g: Tensor,
        d_real: Tensor,
        d_fake: Tensor,
        logits: Tensor | None,
        alpha: float,
        floor: float,
        clamp: float,
    ):
        x, r, f = dense(x_g, d_real, d_fake)
        has_l = logits is not None
        lg = logits.contiguous() if has_l else None
        plan = streaming_reduction(x, lg, results=(2, 5), partials=3, logit_sums=2)
        inv_n, numel_f = 1.0 / max(plan.numel, 1), float(plan.numel)
        launch_reduction(
            _sid_fwd_kernel, _sid_finish_kernel, plan, has_logits=has_l,
            pointers=(x, r, f, lg if has_l else x), scalars=(alpha, inv_n, floor, numel_f, clamp),
            finish_scalars=(inv_n, floor, numel_f),
        )  # fmt: skip
        batch, buf = plan.batch, plan.buf
        n_part = 3 * batch * plan.splits + (2 * batch if has_l else 0)
        ctx.save_for_backward(x, r, f, lg, buf)
        ctx.alpha, ctx.clamp = alpha, clamp
        ctx.set_materialize_grads(False)
        if has_l:
            sid, w, adv, _ = buf.split((batch, batch, batch, n_part + 2 * batch))
            ctx.mark_non_differentiable(w)
            return sid, w, adv
        sid, w, _ = buf.split((batch, batch, n_part))
        ctx.mark_non_differentiable(w)
        return sid, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sid: Tensor | None, _g_w: Tensor | None, g_adv: Tensor | None = None):
        x, r, f, lg, buf = ctx.saved_tensors
        need_x, need_r, need_f, need_l = ctx.needs_input_grad[:4]
        big = g_sid is not None
        need_x, need_r, need_f = need_x and big, need_r and big, need_f and big
        need_l = need_l and g_adv is not None
        gx, gr, gf, gl = empty_grads((x, need_x), (r, need_r), (f, need_f), (lg, need_l))
        batch = x.shape[0]
        if batch > 0 and (need_x or need_r or need_f or need_l):
            numel = x.numel() // batch
            length = lg.numel() // batch if lg is not None else 1
            any_big = need_x or need_r or need_f
            per_sample, block_b, block_l = backward_plan(batch, numel, length, any_big)
            g_big = g_sid if any_big else buf
            g_l = g_adv if need_l else buf
            launch(
                _sid_bwd_kernel, (batch, per_sample), x.get_device(),
                x, r, f, x if lg is None else lg, buf,
                g_big, g_big.stride(0), g_l, g_l.stride(0),
                x if gx is None else gx, r if gr is None else gr, f if gf is None else gf, buf if gl is None else gl,
                batch, numel, length, ctx.alpha, ctx.clamp,
                need_x, need_r, need_f, need_l, BLOCK, block_b, block_l,
            )  # fmt: skip
        return gx, gr, gf, gl, None, None, None


# ------------------------------------------------------------------------------------------------- public API


def supported(x_g: Tensor, d_real: Tensor, d_fake: Tensor, logits_fake: Tensor | None = None) -> bool:
    """Whether `sid_generator_terms` takes these inputs: float32, bfloat16 or float16 tensors of one CUDA
    device (or any device under ``TRITON_INTERPRET=1``), at least one-dimensional."""
    tensors = (x_g, d_real, d_fake) if logits_fake is None else (x_g, d_real, d_fake, logits_fake)
    return x_g.dim() >= 1 and supported_tensors(*tensors)


def sid_generator_terms(
    x_g: Tensor,
    d_real: Tensor,
    d_fake: Tensor,
    *,
    alpha: float,
    logits_fake: Tensor | None = None,
    l1_floor: float = L1_FLOOR,
    logit_clamp: float = LOGIT_CLAMP,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fused [`scoredistill.losses.functional.sid_generator_terms`][scoredistill.losses.functional.sid_generator_terms]
    (same contract, same maths).

    Args:
        x_g: Generator samples ``[B, ...]`` (float32, bfloat16 or float16; any strides).
        d_real: Teacher's denoised estimate at ``x_t``, same shape.
        d_fake: Fake score's denoised estimate at ``x_t``, same shape.
        alpha: SiD's alpha.
        logits_fake: ``[B, ...]`` discriminator logits at ``x_t`` (``[B, 1, h, w]``), or ``None``.
        l1_floor: Lower bound of the mean absolute error inside the weight (the reference's ``L1_FLOOR``).
        logit_clamp: Clamp of the logits in the adversarial term (the reference's ``LOGIT_CLAMP``).

    Returns:
        ``(sid, weight, adv)``, each ``[B]`` float32: the SiD loss per sample (pixel sum, times the L1 weight),
        the L1 weight itself (no gradient; 0 on masked samples) and, when logits are given, the adversarial
        generator term ``numel * w_i * mean softplus(-clamp(logits, -10, 10))`` (else ``None``). Gradients flow
        into ``x_g``, ``d_real``, ``d_fake`` and ``logits_fake`` in their own dtypes.

    Raises:
        ValueError: Inputs that `supported` refuses (the dispatch in `scoredistill.losses.dispatch`
            runs the reference for those), or shapes that do not match.
    """
    if not (x_g.shape == d_real.shape == d_fake.shape):
        check_same_shape(x_g=x_g, d_real=d_real, d_fake=d_fake)
    if not supported(x_g, d_real, d_fake, logits_fake):
        raise ValueError(
            "the fused SiD kernel takes float32/bfloat16/float16 tensors on one CUDA device: "
            "call scoredistill.losses.functional.sid_generator_terms for these inputs"
        )
    if logits_fake is None:
        sid, weight = _SiDFunction.apply(x_g, d_real, d_fake, None, float(alpha), float(l1_floor), float(logit_clamp))
        return sid, weight, None
    if logits_fake.shape[0] != x_g.shape[0]:
        raise ValueError(f"logits_fake must have batch {x_g.shape[0]}, got {tuple(logits_fake.shape)}")
    return _SiDFunction.apply(x_g, d_real, d_fake, logits_fake, float(alpha), float(l1_floor), float(logit_clamp))
