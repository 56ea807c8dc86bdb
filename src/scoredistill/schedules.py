"""Noise-level samplers for the two phases of SiD (docs/maths.md, (SiD-2) and (DSM-1)).

Samplers are tiny frozen dataclasses; ``sample(n, rng=...)`` draws ``[n]`` float32 noise levels from an
explicit ``torch.Generator`` so that every draw is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ._validate import check_real

__all__ = ["SIGMA_INIT", "KarrasUniform", "LogNormal", "SigmaSampler", "check_sigma_init", "karras_sigmas", "sid_sigma"]

SIGMA_INIT = 2.5
"""The one-step generator's input noise level: ``x_g = D_theta(sigma_init z; sigma_init)`` (SiD-1; the paper's 2.5)."""


def check_sigma_init(value: object) -> float:
    """``value`` as the generator's input noise level, or ``ValueError``/``TypeError``: a positive finite real.

    Example:
        >>> check_sigma_init(2.5)
        2.5
    """
    check_real("sigma_init", value, low=0, low_open=True)
    return float(value)  # type: ignore[arg-type]


def sid_sigma(
    u: Tensor, *, t_max: float = 0.8, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Map a uniform variate to SiD's noise level (SiD-2).

    The EDM Karras discretisation read as a continuous index: ``t = u * t_max`` and
    ``sigma = (sigma_max^(1/rho) + (1 - t) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Args:
        u: Uniform variates in ``[0, 1]``, any shape.
        t_max: Largest index as a fraction in ``[0, 1]`` (the reference's ``--tmax 800`` is 0.8).
        sigma_min: Noise level at index 0.
        sigma_max: Noise level at index 1.
        rho: Karras schedule curvature.

    Returns:
        Float32 noise levels of ``u``'s shape: ``u = 0`` gives 0.002, ``u = 1`` gives 24.408 with the defaults.

    References:
        Zhou et al. 2024 (SiD); docs/maths.md, (SiD-2).
    """
    t = u.float() * t_max
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + (1 - t) * (lo - hi)) ** rho


def karras_sigmas(
    n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device: torch.device | None = None
) -> Tensor:
    """The EDM sampling schedule: ``n`` noise levels from ``sigma_max`` down to ``sigma_min``."""
    if n < 2:
        raise ValueError(f"karras_sigmas needs n >= 2, got {n}")
    ramp = torch.linspace(0, 1, n, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@runtime_checkable
class SigmaSampler(Protocol):
    """Draws ``[n]`` float32 noise levels."""

    def sample(self, n: int, *, device: torch.device | str = "cpu", rng: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True, kw_only=True)
class KarrasUniform:
    """SiD's generator-phase sampler: ``sigma = sid_sigma(u)``, ``u ~ U[0, 1]`` (SiD-2)."""

    t_max: float = 0.8  # largest index as a fraction in [0, 1] (reference: --tmax 800)
    sigma_min: float = 0.002  # noise level at index 0
    sigma_max: float = 80.0  # noise level at index 1
    rho: float = 7.0  # schedule curvature

    def __post_init__(self) -> None:
        check_real("t_max", self.t_max, low=0, high=1, low_open=True, hint=" (0.8 reproduces --tmax 800)")
        check_real("sigma_min", self.sigma_min, low=0, low_open=True)
        check_real("sigma_max", self.sigma_max, low=0, low_open=True)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        check_real("rho", self.rho, low=0, low_open=True)

    def sample(self, n: int, *, device: torch.device | str = "cpu", rng: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` noise levels."""
        u = torch.rand(n, generator=rng, device=device)
        return sid_sigma(u, t_max=self.t_max, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)


@dataclass(frozen=True, kw_only=True)
class LogNormal:
    """EDM's training noise distribution: ``ln(sigma) ~ N(p_mean, p_std^2)`` (DSM-1)."""

    p_mean: float = -1.2  # P_mean in EDM
    p_std: float = 1.2  # P_std in EDM

    def __post_init__(self) -> None:
        check_real("p_mean", self.p_mean)
        check_real("p_std", self.p_std, low=0, low_open=True)

    def sample(self, n: int, *, device: torch.device | str = "cpu", rng: torch.Generator | None = None) -> Tensor:
        """Draw ``[n]`` noise levels."""
        return (self.p_mean + self.p_std * torch.randn(n, generator=rng, device=device)).exp()
