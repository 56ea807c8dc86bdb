"""The pure maths of SiD and SiDA: functions of tensors, never of networks.

Every function returns a float32 per-sample loss of shape ``[B]``, summed over the non-batch dimensions,
before any loss scaling or batch averaging (the plug-in modules in ``scoredistill.losses`` apply those).
Inputs may be float32, bfloat16 or float16; the maths runs in float32. A sample whose inputs hold a
non-finite value gets loss 0 and zero gradient, chosen with ``torch.where`` so that no host synchronisation
happens and the other samples are untouched; ``finite_samples`` tells which samples were kept.

Equation labels refer to docs/maths.md (Zhou et al. 2024, SiD; Zhou et al. 2025, SiDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._types import batch_dims, check_same_shape, expand_as

__all__ = [
    "adversarial_discriminator_loss",
    "adversarial_generator_loss",
    "dsm_loss",
    "dsm_weight",
    "fake_score_terms",
    "finite_samples",
    "l1_weight",
    "sid_generator_loss",
    "sid_generator_terms",
]

L1_FLOOR = 1e-5  # the reference's lower bound on the mean absolute error inside w (SiD-4)
LOGIT_CLAMP = 10.0  # generator-side clamp of the discriminator logits (SiDA-3)


def finite_samples(*tensors: Tensor) -> Tensor:
    """``[B]`` bool: True where every value of the sample is finite in all the given ``[B, ...]`` tensors."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok = ok & torch.isfinite(t).flatten(1).all(dim=1)
    return ok


def _masked_float(ok: Tensor, *tensors: Tensor) -> list[Tensor]:
    # Zero the non-finite samples BEFORE any arithmetic, so that their (zero) gradients never meet a NaN.
    return [torch.where(expand_as(ok, t), t.float(), 0.0) for t in tensors]


def l1_weight(x_g: Tensor, d_real: Tensor) -> Tensor:
    """SiD's per-sample normaliser ``w = 1 / max(mean_p |x_g - d_real|, 1e-5)`` (SiD-4), float32, no gradient.

    Shape:
        x_g, d_real: ``[B, ...]``; returns ``[B]``. Non-finite samples get ``w = 0``.
    """
    check_same_shape(x_g=x_g, d_real=d_real)
    with torch.no_grad():
        ok = finite_samples(x_g, d_real)
        x_g, d_real = _masked_float(ok, x_g, d_real)
        w = 1.0 / (x_g - d_real).abs().mean(dim=batch_dims(x_g)).clamp_min(L1_FLOOR)
        return torch.where(ok, w, 0.0)


def sid_generator_loss(x_g: Tensor, d_real: Tensor, d_fake: Tensor, *, alpha: float) -> Tensor:
    """Score-identity generator loss per sample (SiD-4–SiD-5).

    ``L_i = w_i * sum_p (d_real - d_fake)_p [(d_real - x_g)_p - alpha (d_real - d_fake)_p]`` with ``w_i`` from
    [`l1_weight`][scoredistill.losses.functional.l1_weight] under stop-gradient. Gradients flow into all three inputs
    (the reference freezes the score networks' parameters, not their outputs).

    Args:
        x_g: Generator samples.
        d_real: Teacher's denoised estimate at ``x_t = x_g + sigma n``.
        d_fake: Fake score's denoised estimate at the same ``x_t``.
        alpha: SiD's alpha (1.2 for SiD, 1.0 for SiDA).

    Returns:
        ``[B]`` float32, before SiD's loss scale (100) and the batch mean.

    Shape:
        x_g, d_real, d_fake: ``[B, ...]``, one shape.

    References:
        Zhou et al. 2024; docs/maths.md, (SiD-4)–(SiD-5).
    """
    check_same_shape(x_g=x_g, d_real=d_real, d_fake=d_fake)
    ok = finite_samples(x_g, d_real, d_fake)
    x_g, d_real, d_fake = _masked_float(ok, x_g, d_real, d_fake)
    with torch.no_grad():
        w = 1.0 / (x_g - d_real).abs().mean(dim=batch_dims(x_g)).clamp_min(L1_FLOOR)
    diff = d_real - d_fake
    loss = (diff * ((d_real - x_g) - alpha * diff)).sum(dim=batch_dims(x_g)) * w
    return torch.where(ok, loss, 0.0)


def dsm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` (DSM-1), float32."""
    sigma = sigma.float()
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dsm_loss(denoised: Tensor, x0: Tensor, sigma: Tensor, *, sigma_data: float = 0.5) -> Tensor:
    """Denoising score matching per sample: ``lambda(sigma_i) ||D(x0_i + sigma_i n_i) - x0_i||^2`` (DSM-1–DSM-2).

    Args:
        denoised: The fake score's output at the noisy input.
        x0: The clean (augmented, detached) generator samples it was noised from.
        sigma: ``[B]`` noise levels.
        sigma_data: Standard deviation of the data.

    Returns:
        ``[B]`` float32, non-negative.

    References:
        Karras et al. 2022; docs/maths.md, (DSM-1)–(DSM-2).
    """
    check_same_shape(denoised=denoised, x0=x0)
    if sigma.shape != (x0.shape[0],):
        raise ValueError(f"sigma must have shape [B] = [{x0.shape[0]}], got {tuple(sigma.shape)}")
    ok = finite_samples(denoised, x0) & torch.isfinite(sigma)
    denoised, x0 = _masked_float(ok, denoised, x0)
    lam = torch.where(ok, dsm_weight(sigma, sigma_data), 0.0)
    return lam * (denoised - x0).square().sum(dim=batch_dims(x0))


def _masked_batch_mean(values: Tensor, ok: Tensor) -> Tensor:
    # Mean over the finite samples' entries; a batch with none kept gives 0, not NaN.
    per_sample = torch.where(ok, values.float().flatten(1).mean(dim=1), 0.0)
    return per_sample.sum() / ok.sum().clamp_min(1)


def adversarial_discriminator_loss(
    logits_real: Tensor, logits_fake: Tensor, sigma: Tensor, *, sigma_data: float = 0.5
) -> Tensor:
    """SiDA's discriminator loss per sample (SiDA-2).

    ``l_D = 1/2 [mean softplus(-d_real) + mean softplus(d_fake)]`` is one scalar for the whole per-GPU batch
    (mean over samples and positions); each sample's loss is ``lambda(sigma_i) l_D``.

    Args:
        logits_real: ``[B, 1, h, w]`` encoder logits of noised real images.
        logits_fake: ``[B, 1, h, w]`` encoder logits of noised generator samples (same sigma and noise).
        sigma: ``[B]`` noise levels shared by both branches.
        sigma_data: Standard deviation of the data.

    Returns:
        ``[B]`` float32.

    References:
        Zhou et al. 2025; docs/maths.md, (SiDA-2).
    """
    check_same_shape(logits_real=logits_real, logits_fake=logits_fake)
    ok = finite_samples(logits_real, logits_fake) & torch.isfinite(sigma)
    logits_real, logits_fake = _masked_float(ok, logits_real, logits_fake)
    l_d = 0.5 * (_masked_batch_mean(F.softplus(-logits_real), ok) + _masked_batch_mean(F.softplus(logits_fake), ok))
    # Mask lambda before the product: an inf/NaN lambda on a dropped sample would otherwise send 0 * NaN = NaN
    # back into l_d, i.e. into every sample's logit gradient.
    lam = torch.where(ok, dsm_weight(sigma, sigma_data), 0.0)
    return torch.where(ok, lam * l_d, 0.0)


def adversarial_generator_loss(logits_fake: Tensor, weight: Tensor, *, numel: int) -> Tensor:
    """SiDA's generator adversarial loss per sample (SiDA-3), before the ``0.01 / B`` scaling.

    ``l_adv = mean softplus(-clamp(d_fake, -10, 10))`` over this process's batch and positions (the
    paper's per-GPU batch normalisation); each sample's loss is ``numel * w_i * l_adv``, on the same
    pixel-sum scale as SiD and normalised by the same L1 weight.

    Args:
        logits_fake: ``[B, 1, h, w]`` encoder logits at the generator phase's ``x_t``.
        weight: ``[B]`` SiD's L1 normaliser ``w`` ([`l1_weight`][scoredistill.losses.functional.l1_weight]).
        numel: Elements per sample of the generated image, ``C * H * W``.

    Returns:
        ``[B]`` float32.

    References:
        Zhou et al. 2025; docs/maths.md, (SiDA-3).
    """
    if weight.shape != (logits_fake.shape[0],):
        raise ValueError(f"weight must have shape [B] = [{logits_fake.shape[0]}], got {tuple(weight.shape)}")
    if numel <= 0:
        raise ValueError(f"numel is C*H*W of a sample, got {numel}")
    ok = finite_samples(logits_fake) & torch.isfinite(weight)
    (logits_fake,) = _masked_float(ok, logits_fake)
    l_adv = _masked_batch_mean(F.softplus(-logits_fake.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)), ok)
    return torch.where(ok, numel * weight.detach().float() * l_adv, 0.0)


def sid_generator_terms(
    x_g: Tensor, d_real: Tensor, d_fake: Tensor, *, alpha: float, logits_fake: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Everything the generator phase needs from the big tensors, in one call (the fused kernels' contract).

    Args:
        x_g: Generator samples ``[B, ...]``.
        d_real: Teacher's denoised estimate at ``x_t``.
        d_fake: Fake score's denoised estimate at ``x_t``.
        alpha: SiD's alpha.
        logits_fake: ``[B, 1, h, w]`` discriminator logits at ``x_t``, or ``None`` (no adversarial term).

    Returns:
        ``(sid, weight, adv)``: [`sid_generator_loss`][scoredistill.losses.functional.sid_generator_loss],
        [`l1_weight`][scoredistill.losses.functional.l1_weight] and, when logits are given,
        [`adversarial_generator_loss`][scoredistill.losses.functional.adversarial_generator_loss] with ``numel =
        C*H*W``; each ``[B]`` float32.
    """
    sid = sid_generator_loss(x_g, d_real, d_fake, alpha=alpha)
    weight = l1_weight(x_g, d_real) * finite_samples(d_fake)
    adv = None
    if logits_fake is not None:
        adv = adversarial_generator_loss(logits_fake, weight, numel=x_g[0].numel())
    return sid, weight, adv


def fake_score_terms(
    denoised: Tensor,
    x0: Tensor,
    sigma: Tensor,
    *,
    sigma_data: float = 0.5,
    logits_real: Tensor | None = None,
    logits_fake: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Everything the fake-score phase needs, in one call (the fused kernels' contract).

    Returns:
        ``(dsm, disc)``: [`dsm_loss`][scoredistill.losses.functional.dsm_loss] and, when both logit maps are given,
        [`adversarial_discriminator_loss`][scoredistill.losses.functional.adversarial_discriminator_loss]; each ``[B]``
        float32.
    """
    dsm = dsm_loss(denoised, x0, sigma, sigma_data=sigma_data)
    disc = None
    if (logits_real is None) != (logits_fake is None):
        raise ValueError("pass both logits_real and logits_fake, or neither")
    if logits_real is not None and logits_fake is not None:
        disc = adversarial_discriminator_loss(logits_real, logits_fake, sigma, sigma_data=sigma_data)
    return dsm, disc


LN2 = math.log(2.0)  # BCE of a zero logit; handy in hand checks
