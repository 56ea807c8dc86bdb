"""Fused Triton kernels for the fake-score phase: EDM's DSM loss and SiDA's discriminator loss.

`fake_score_terms` has exactly the contract of
[`scoredistill.losses.functional.fake_score_terms`][scoredistill.losses.functional.fake_score_terms], in one kernel
launch each way:

* forward: one pass over ``denoised`` and ``x0`` (each sample split over several programs) writing partial sums
  of ``(D - x0)^2`` and of non-finite counts; the first program of each sample also reduces that sample's rows of
  the two ``[B, 1, h, w]`` logit maps (the discriminator term). The last program to finish (arrival counter,
  `scoredistill.kernels.triton_utils.arrival_counter`) reduces everything in a fixed order and applies
  ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``, the masks (a sample is dropped when ``D``,
  ``x0`` or ``sigma`` holds a non-finite value; a logit row when its logits or ``sigma`` do) and the batch mean
  of the discriminator term.
* backward: one pass writing ``dL/dD = 2 lambda g (D - x0)`` and, when ``x0`` requires a gradient,
  ``dL/dx0 = -dL/dD``, in the inputs' dtypes, exactly 0 on dropped samples; the first program of each sample also
  writes that sample's logit gradients. ``sigma`` gets no gradient here: when it requires one the reference runs
  instead.

No host synchronisation anywhere.
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

__all__ = ["fake_score_terms", "supported"]


# Buffer (float32): dsm [B] | lam [B] | (disc [B] | gfac [B] | okl [B])? | partials [2, B, S] | (logit sums [3, B])?
# gfac_i = okl_i lambda_i / (2 n L) (n = kept logit rows), okl_i = 1.0 where both logit rows and sigma_i are finite.


@triton.jit
def _lambda(sig, sigma_data):
    return (sig * sig + sigma_data * sigma_data) / ((sig * sigma_data) * (sig * sigma_data))


@triton.jit
def _dsm_finish(
    buf_ptr, sigma_ptr, B, S, L, sigma_data, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    lsum_ptr = part_ptr + 2 * B * S
    loss = 0.0
    n = 1.0
    if HAS_LOGITS:
        # Pass 1: l_D = 1/2 [mean softplus(-real) + mean softplus(fake)], means over the kept rows.
        tot_a = tl.zeros([BLOCK_B], dtype=tl.float32)
        tot_b = tl.zeros([BLOCK_B], dtype=tl.float32)
        nok = tl.zeros([BLOCK_B], dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rb = b0 + tl.arange(0, BLOCK_B)
            mb = rb < B
            sa = tl.load(lsum_ptr + rb, mask=mb, other=0.0, cache_modifier=".cg")
            sb = tl.load(lsum_ptr + B + rb, mask=mb, other=0.0, cache_modifier=".cg")
            lbad = tl.load(lsum_ptr + 2 * B + rb, mask=mb, other=1.0, cache_modifier=".cg")
            sig = tl.load(sigma_ptr + rb, mask=mb, other=1.0).to(tl.float32)
            okl = mb & (lbad == 0.0) & finite(sig)
            tot_a += tl.where(okl, sa / L, 0.0)
            tot_b += tl.where(okl, sb / L, 0.0)
            nok += tl.where(okl, 1.0, 0.0)
        n = tl.maximum(tl.sum(nok, axis=0), 1.0)
        loss = 0.5 * (tl.sum(tot_a, axis=0) / n + tl.sum(tot_b, axis=0) / n)
    # Pass 2: per sample, lambda, the DSM loss and (with logits) the discriminator term.
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        sq, bad, _unused = reduce_parts(part_ptr, rb, mb, B, S, 2, BLOCK_B, BLOCK_S)
        sig = tl.load(sigma_ptr + rb, mask=mb, other=1.0).to(tl.float32)
        lam_raw = _lambda(sig, sigma_data)
        ok = (bad == 0.0) & finite(sig)
        lam = tl.where(ok, lam_raw, 0.0)
        tl.store(buf_ptr + B + rb, lam, mask=mb)
        tl.store(buf_ptr + rb, tl.where(ok, lam * sq, 0.0), mask=mb)
        if HAS_LOGITS:
            lbad = tl.load(lsum_ptr + 2 * B + rb, mask=mb, other=1.0, cache_modifier=".cg")
            okl = (lbad == 0.0) & finite(sig)
            lam_l = tl.where(okl, lam_raw, 0.0)
            tl.store(buf_ptr + 2 * B + rb, tl.where(okl, lam_l * loss, 0.0), mask=mb)
            tl.store(buf_ptr + 3 * B + rb, tl.where(okl, lam_l * 0.5 / n / L, 0.0), mask=mb)
            tl.store(buf_ptr + 4 * B + rb, tl.where(okl, 1.0, 0.0), mask=mb)


@triton.jit
def _dsm_fwd_kernel(
    d_ptr,
    x_ptr,
    lr_ptr,
    lf_ptr,
    sigma_ptr,
    buf_ptr,
    cnt_ptr,
    B,
    N,
    CHUNK,
    L,
    sigma_data,
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
    acc_sq = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bad = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < N
        d = tl.load(d_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        e = d - x
        acc_sq += e * e
        acc_bad += tl.where(finite(d) & finite(x), 0.0, 1.0)
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    base = b * S + s
    tl.store(part_ptr + base, tl.sum(acc_sq, axis=0))
    tl.store(part_ptr + B * S + base, tl.sum(acc_bad, axis=0))
    if HAS_LOGITS:  # noqa: SIM102 (constexpr test, then a runtime one)
        if s == 0:
            lsum_ptr = part_ptr + 2 * B * S
            sa, sb, lbad = logit_row_sums(lr_ptr, lf_ptr, b, L, 0.0, 1, BLOCK_L)
            tl.store(lsum_ptr + b, sa)
            tl.store(lsum_ptr + B + b, sb)
            tl.store(lsum_ptr + 2 * B + b, lbad)
    if FUSED:  # noqa: SIM102 (constexpr test, then a runtime one)
        if last_arrival(cnt_ptr):
            _dsm_finish(buf_ptr, sigma_ptr, B, S, L, sigma_data, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _dsm_finish_kernel(
    buf_ptr, sigma_ptr, B, S, L, sigma_data, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    _dsm_finish(buf_ptr, sigma_ptr, B, S, L, sigma_data, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _dsm_bwd_kernel(
    d_ptr,
    x_ptr,
    lr_ptr,
    lf_ptr,
    buf_ptr,
    g_ptr,
    gd_stride,
    gdisc_ptr,
    gl_stride,
    gd_ptr,
    gx_ptr,
    glr_ptr,
    glf_ptr,
    B,
    N,
    L,
    GD: tl.constexpr,
    GX: tl.constexpr,
    GLR: tl.constexpr,
    GLF: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if GD or GX:
        idx = blk * BLOCK + tl.arange(0, BLOCK)
        m = idx < N
        row = b.to(tl.int64) * N
        lam = tl.load(buf_ptr + B + b)
        ok = lam > 0.0  # lambda(sigma) >= 1/sigma_d^2 > 0 on kept samples, 0 on dropped ones
        scale = tl.load(g_ptr + b.to(tl.int64) * gd_stride).to(tl.float32) * lam
        d = tl.load(d_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        gd = tl.where(ok, scale * (2.0 * (d - x)), 0.0)
        if GD:
            tl.store(gd_ptr + row + idx, gd.to(gd_ptr.dtype.element_ty), mask=m)
        if GX:
            tl.store(gx_ptr + row + idx, (-gd).to(gx_ptr.dtype.element_ty), mask=m)
    if GLR or GLF:  # noqa: SIM102 (constexpr test, then a runtime one)
        if blk == 0:
            big_g = logit_grad_factor(gdisc_ptr, gl_stride, buf_ptr + 3 * B, buf_ptr + 4 * B, B, BLOCK_B)
            keep = tl.load(buf_ptr + 4 * B + b) > 0.0
            lbase = b.to(tl.int64) * L
            for l0 in range(0, L, BLOCK_L):
                cl = l0 + tl.arange(0, BLOCK_L)
                ml = cl < L
                if GLR:
                    va = tl.load(lr_ptr + lbase + cl, mask=ml, other=0.0).to(tl.float32)
                    ga = tl.where(keep, big_g * -sigmoid(-va), 0.0)
                    tl.store(glr_ptr + lbase + cl, ga.to(glr_ptr.dtype.element_ty), mask=ml)
                if GLF:
                    vb = tl.load(lf_ptr + lbase + cl, mask=ml, other=0.0).to(tl.float32)
                    gb = tl.where(keep, big_g * sigmoid(vb), 0.0)
                    tl.store(glf_ptr + lbase + cl, gb.to(glf_ptr.dtype.element_ty), mask=ml)


class _DSMFunction(torch.autograd.Function):
    """``(denoised, x0, sigma, logits_real | None, logits_fake | None) -> dsm [B] (, disc [B])``; no grad to sigma."""

    @staticmethod
    def forward(ctx, denoised: Tensor, x0: Tensor, sigma: Tensor, lr: Tensor | None, lf: Tensor | None, sd: float):
        d, x = dense(denoised, x0)
        has_l = lr is not None
        if has_l:
            lr, lf = lr.contiguous(), lf.contiguous()
        sig = sigma.detach().contiguous()
        r = streaming_reduction(d, lr, results=(2, 5), partials=2, logit_sums=3)
        launch_reduction(
            _dsm_fwd_kernel, _dsm_finish_kernel, r, has_logits=has_l,
            pointers=(d, x, lr if has_l else d, lf if has_l else d, sig), scalars=(sd,),
            finish_pointers=(sig,), finish_scalars=(sd,),
        )  # fmt: skip
        batch, buf = r.batch, r.buf
        n_part = 2 * batch * r.splits + (3 * batch if has_l else 0)
        ctx.save_for_backward(d, x, lr, lf, buf)
        ctx.set_materialize_grads(False)
        if has_l:
            dsm, _, disc, _ = buf.split((batch, batch, batch, n_part + 2 * batch))
            return dsm, disc
        dsm, _ = buf.split((batch, n_part + batch))
        return dsm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_dsm: Tensor | None, g_disc: Tensor | None = None):
        d, x, lr, lf, buf = ctx.saved_tensors
        need_d, need_x, _, need_lr, need_lf = ctx.needs_input_grad[:5]
        need_d, need_x = need_d and g_dsm is not None, need_x and g_dsm is not None
        need_lr, need_lf = need_lr and g_disc is not None, need_lf and g_disc is not None
        gd, gx, glr, glf = empty_grads((d, need_d), (x, need_x), (lr, need_lr), (lf, need_lf))
        batch = d.shape[0]
        if batch > 0 and (need_d or need_x or need_lr or need_lf):
            numel = d.numel() // batch
            length = lr.numel() // batch if lr is not None else 1
            per_sample, block_b, block_l = backward_plan(batch, numel, length, need_d or need_x)
            g_big = g_dsm if need_d or need_x else buf
            g_l = g_disc if need_lr or need_lf else buf
            launch(
                _dsm_bwd_kernel, (batch, per_sample), d.get_device(),
                d, x, d if lr is None else lr, d if lf is None else lf, buf,
                g_big, g_big.stride(0), g_l, g_l.stride(0),
                d if gd is None else gd, x if gx is None else gx, buf if glr is None else glr,
                buf if glf is None else glf,
                batch, numel, length,
                need_d, need_x, need_lr, need_lf, BLOCK, block_b, block_l,
            )  # fmt: skip
        return gd, gx, None, glr, glf, None


def supported(
    denoised: Tensor, x0: Tensor, sigma: Tensor, *, logits_real: Tensor | None = None, logits_fake: Tensor | None = None
) -> bool:
    """Whether `fake_score_terms` takes these inputs: float32, bfloat16 or float16 tensors of one CUDA
    device (or any device under ``TRITON_INTERPRET=1``), at least one-dimensional, ``sigma`` without gradient."""
    logits = tuple(t for t in (logits_real, logits_fake) if t is not None)
    return denoised.dim() >= 1 and not sigma.requires_grad and supported_tensors(denoised, x0, sigma, *logits)


def fake_score_terms(
    denoised: Tensor,
    x0: Tensor,
    sigma: Tensor,
    *,
    sigma_data: float = 0.5,
    logits_real: Tensor | None = None,
    logits_fake: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fused [`scoredistill.losses.functional.fake_score_terms`][scoredistill.losses.functional.fake_score_terms] (same
    contract, same maths).

    Args:
        denoised: The fake score's output ``[B, ...]`` (float32, bfloat16 or float16; any strides).
        x0: The clean samples it was noised from, same shape (usually detached; a gradient is supported).
        sigma: ``[B]`` noise levels (no gradient flows into them).
        sigma_data: Standard deviation of the data.
        logits_real: ``[B, 1, h, w]`` discriminator logits of noised real images, or ``None``.
        logits_fake: ``[B, 1, h, w]`` discriminator logits of noised generator samples, or ``None``.

    Returns:
        ``(dsm, disc)``, each ``[B]`` float32: ``lambda(sigma_i) ||D_i - x0_i||^2`` and, when both logit maps are
        given, ``lambda(sigma_i) * 1/2 [mean softplus(-logits_real) + mean softplus(logits_fake)]`` (else
        ``None``); non-finite samples give 0 and zero gradient.

    Raises:
        ValueError: Inputs that `supported` refuses (the dispatch in `scoredistill.losses.dispatch`
            runs the reference for those), or shapes that do not match.
    """
    if denoised.shape != x0.shape:
        check_same_shape(denoised=denoised, x0=x0)
    if sigma.shape != (x0.shape[0],):
        raise ValueError(f"sigma must have shape [B] = [{x0.shape[0]}], got {tuple(sigma.shape)}")
    if (logits_real is None) != (logits_fake is None):
        raise ValueError("pass both logits_real and logits_fake, or neither")
    if not supported(denoised, x0, sigma, logits_real=logits_real, logits_fake=logits_fake):
        raise ValueError(
            "the fused DSM kernel takes float32/bfloat16/float16 tensors on one CUDA device and a sigma without "
            "gradient: call scoredistill.losses.functional.fake_score_terms for these inputs"
        )
    if logits_real is None or logits_fake is None:
        return _DSMFunction.apply(denoised, x0, sigma, None, None, float(sigma_data)), None
    if logits_real.shape != logits_fake.shape:
        check_same_shape(logits_real=logits_real, logits_fake=logits_fake)
    if logits_real.shape[0] != x0.shape[0]:
        raise ValueError(f"logits must have batch {x0.shape[0]}, got {tuple(logits_real.shape)}")
    return _DSMFunction.apply(denoised, x0, sigma, logits_real, logits_fake, float(sigma_data))
