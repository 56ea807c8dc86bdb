"""The loss terms with their fused kernels: the reference of [`functional`][scoredistill.losses.functional] everywhere,
the Triton kernels of `scoredistill.kernels` where they can run (same signatures, same maths).

The same pattern as the networks' layers: ask `scoredistill.kernels` whether the fused path is available for
these operands, import the kernel lazily if so, and run the reference otherwise.
"""

from __future__ import annotations

from torch import Tensor

from .. import kernels
from . import functional as F

__all__ = ["fake_score_terms", "sid_generator_terms"]


def sid_generator_terms(
    x_g: Tensor,
    d_real: Tensor,
    d_fake: Tensor,
    *,
    alpha: float,
    logits_fake: Tensor | None = None,
    use_kernels: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dispatching
    [`scoredistill.losses.functional.sid_generator_terms`][scoredistill.losses.functional.sid_generator_terms].

    Example:
        >>> import torch
        >>> x, r, f = torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3)
        >>> sid, weight, adv = sid_generator_terms(x, r, f, alpha=1.2)
        >>> weight.tolist(), adv
        ([1.0, 1.0], None)
    """
    if kernels.fused_sid_available(x_g, d_real, d_fake, logits_fake, use_kernels):
        from ..kernels.sid_triton import sid_generator_terms as fused

        return fused(
            x_g, d_real, d_fake, alpha=alpha, logits_fake=logits_fake, l1_floor=F.L1_FLOOR, logit_clamp=F.LOGIT_CLAMP
        )
    return F.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha, logits_fake=logits_fake)


def fake_score_terms(
    denoised: Tensor,
    x0: Tensor,
    sigma: Tensor,
    *,
    sigma_data: float = 0.5,
    logits_real: Tensor | None = None,
    logits_fake: Tensor | None = None,
    use_kernels: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Dispatching
    [`scoredistill.losses.functional.fake_score_terms`][scoredistill.losses.functional.fake_score_terms]."""
    if kernels.fused_fake_score_available(denoised, x0, sigma, logits_real, logits_fake, use_kernels):
        from ..kernels.dsm_triton import fake_score_terms as fused

        return fused(denoised, x0, sigma, sigma_data=sigma_data, logits_real=logits_real, logits_fake=logits_fake)
    return F.fake_score_terms(
        denoised, x0, sigma, sigma_data=sigma_data, logits_real=logits_real, logits_fake=logits_fake
    )
