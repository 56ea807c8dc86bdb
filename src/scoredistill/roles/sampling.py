"""Multi-step sampling from a denoiser (to compare a teacher with its one-step student)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._types import Denoiser
from ..schedules import karras_sigmas

__all__ = ["edm_sample"]


@torch.no_grad()
def edm_sample(
    denoiser: Denoiser,
    noise: Tensor,
    labels: Tensor | None = None,
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> Tensor:
    """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) from ``noise ~ N(0, I)``.

    Uses ``2 * steps - 1`` denoiser evaluations (the last step, to sigma 0, is a plain Euler step).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    # One step is a single Euler step from sigma_max to 0, i.e. the denoiser's output at sigma_max (1 NFE).
    karras = (
        karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=noise.device)
        if steps > 1
        else torch.full((1,), float(sigma_max), device=noise.device)
    )
    sigmas = torch.cat([karras, noise.new_zeros(1)])
    x = noise.float() * sigmas[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser(x, s.expand(x.shape[0]), labels)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next.expand(x.shape[0]), labels)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x
