"""Fused Triton kernels for the fake-score phase: EDM's DSM loss and SiDA's discriminator loss.

:func:`fake_score_terms` has exactly the contract of :func:`scoredistill.losses.functional.fake_score_terms`:

* DSM, forward: one pass over ``denoised`` and ``x0`` (each sample split over several programs) writing partial
  sums of ``(D - x0)^2`` and of non-finite counts; a tiny kernel reduces them in a fixed order and applies
  ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` and the mask (a sample is dropped when ``D``,
  ``x0`` or ``sigma`` holds a non-finite value).
* DSM, backward: one pass writing ``dL/dD = 2 lambda g (D - x0)`` and, when ``x0`` requires a gradient,
  ``dL/dx0 = -dL/dD``, in the inputs' dtypes, exactly 0 on dropped samples. ``sigma`` gets no gradient here:
  when it requires one the reference runs instead.
* The discriminator term on the small logit maps is one single-program kernel each way (shared with
  :mod:`scoredistill.kernels.sid_triton`).

No host synchronisation anywhere.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..losses import functional as ref
from .sid_triton import (
    BLOCK,
    NUM_WARPS,
    _check_same_shape,
    _finite,
    _LogitFunction,
    _rows,
    _split,
    _supported,
)

__all__ = ["fake_score_terms"]


@triton.jit
def _dsm_fwd_partial_kernel(d_ptr, x_ptr, part_ptr, B, N, CHUNK, S, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
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
        acc_bad += tl.where(_finite(d) & _finite(x), 0.0, 1.0)
    base = b * S + s
    tl.store(part_ptr + base, tl.sum(acc_sq, axis=0))
    tl.store(part_ptr + B * S + base, tl.sum(acc_bad, axis=0))


@triton.jit
def _dsm_fwd_final_kernel(
    part_ptr, sigma_ptr, dsm_ptr, lam_ptr, B, S, sigma_data, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    sq = tl.zeros([BLOCK_B], dtype=tl.float32)
    bad = tl.zeros([BLOCK_B], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        cs = s0 + tl.arange(0, BLOCK_S)
        m2 = mb[:, None] & (cs < S)[None, :]
        offs = rb[:, None] * S + cs[None, :]
        sq += tl.sum(tl.load(part_ptr + offs, mask=m2, other=0.0), axis=1)
        bad += tl.sum(tl.load(part_ptr + B * S + offs, mask=m2, other=0.0), axis=1)
    sig = tl.load(sigma_ptr + rb, mask=mb, other=1.0).to(tl.float32)
    ok = (bad == 0.0) & _finite(sig)
    lam = (sig * sig + sigma_data * sigma_data) / ((sig * sigma_data) * (sig * sigma_data))
    lam = tl.where(ok, lam, 0.0)
    tl.store(lam_ptr + rb, lam, mask=mb)
    tl.store(dsm_ptr + rb, tl.where(ok, lam * sq, 0.0), mask=mb)


@triton.jit
def _dsm_bwd_kernel(
    d_ptr, x_ptr, g_ptr, lam_ptr, gd_ptr, gx_ptr, N, GD: tl.constexpr, GX: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    row = b.to(tl.int64) * N
    lam = tl.load(lam_ptr + b)
    ok = lam > 0.0  # lambda(sigma) >= 1/sigma_d^2 > 0 on kept samples, 0 on dropped ones
    scale = tl.load(g_ptr + b).to(tl.float32) * lam
    d = tl.load(d_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
    gd = tl.where(ok, scale * (2.0 * (d - x)), 0.0)
    if GD:
        tl.store(gd_ptr + row + idx, gd.to(gd_ptr.dtype.element_ty), mask=m)
    if GX:
        tl.store(gx_ptr + row + idx, (-gd).to(gx_ptr.dtype.element_ty), mask=m)


class _DSMFunction(torch.autograd.Function):
    """``(denoised, x0, sigma) -> dsm [B]``; ``sigma`` gets no gradient."""

    @staticmethod
    def forward(ctx, denoised: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
        batch = denoised.shape[0]
        df, xf = _rows(denoised, batch), _rows(x0, batch)
        numel = df.shape[1]
        splits, chunk = _split(batch, numel, denoised.device)
        buf = torch.empty(2 * batch * splits + 2 * batch, dtype=torch.float32, device=denoised.device)
        part, dsm, lam = buf.split((2 * batch * splits, batch, batch))
        if batch > 0:
            _dsm_fwd_partial_kernel[(batch, splits)](
                df, xf, part, batch, numel, chunk, splits, BLOCK=BLOCK, num_warps=NUM_WARPS
            )
            block_b = min(triton.next_power_of_2(batch), 128)
            block_s = min(triton.next_power_of_2(splits), 64)
            _dsm_fwd_final_kernel[(triton.cdiv(batch, block_b),)](
                part,
                sigma.detach().contiguous(),
                dsm,
                lam,
                batch,
                splits,
                float(sigma_data),
                BLOCK_B=block_b,
                BLOCK_S=block_s,
            )
        ctx.save_for_backward(df, xf, lam)
        ctx.shapes = (denoised.shape, x0.shape)
        return dsm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        df, xf, lam = ctx.saved_tensors
        need_d, need_x = ctx.needs_input_grad[:2]
        batch, numel = df.shape
        gd = torch.empty_like(df) if need_d else None
        gx = torch.empty_like(xf) if need_x else None
        if batch > 0 and numel > 0 and (need_d or need_x):
            _dsm_bwd_kernel[(batch, triton.cdiv(numel, BLOCK))](
                df,
                xf,
                g.contiguous(),
                lam,
                gd if need_d else df,
                gx if need_x else xf,
                numel,
                GD=need_d,
                GX=need_x,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
            )
        sd, sx = ctx.shapes
        return (gd.view(sd) if gd is not None else None, gx.view(sx) if gx is not None else None, None, None)


def fake_score_terms(
    denoised: Tensor,
    x0: Tensor,
    sigma: Tensor,
    *,
    sigma_data: float = 0.5,
    logits_real: Tensor | None = None,
    logits_fake: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fused :func:`scoredistill.losses.functional.fake_score_terms` (same contract, same maths).

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
        ``None``); non-finite samples give 0 and zero gradient. Inputs the kernels do not take (float64, CPU
        without ``TRITON_INTERPRET=1``, a ``sigma`` that requires grad) run the reference instead.
    """
    if denoised.shape != x0.shape:
        _check_same_shape(denoised=denoised, x0=x0)
    if sigma.shape != (x0.shape[0],):
        raise ValueError(f"sigma must have shape [B] = [{x0.shape[0]}], got {tuple(sigma.shape)}")
    if (logits_real is None) != (logits_fake is None):
        raise ValueError("pass both logits_real and logits_fake, or neither")
    logits = () if logits_real is None else (logits_real, logits_fake)
    if not _supported(denoised, x0, sigma, *logits) or sigma.requires_grad or denoised.dim() < 1:
        return ref.fake_score_terms(
            denoised, x0, sigma, sigma_data=sigma_data, logits_real=logits_real, logits_fake=logits_fake
        )
    dsm = _DSMFunction.apply(denoised, x0, sigma, float(sigma_data))
    disc = None
    if logits_real is not None and logits_fake is not None:
        _check_same_shape(logits_real=logits_real, logits_fake=logits_fake)
        if logits_real.shape[0] != x0.shape[0]:
            raise ValueError(f"logits must have batch {x0.shape[0]}, got {tuple(logits_real.shape)}")
        disc = _LogitFunction.apply(logits_real, logits_fake, sigma.detach(), 1, 0.0, float(sigma_data))
    return dsm, disc
