"""An analytic teacher: a mixture of isotropic Gaussians whose denoiser is the exact posterior mean.

For data ``x0 ~ sum_k pi_k N(mu_k, s_k^2 I)`` and ``x = x0 + sigma n``, the ideal denoiser is
``D(x; sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))`` with responsibilities
``r_k(x) ∝ pi_k N(x; mu_k, (s_k^2 + sigma^2) I)``. It is exact at every sigma, in any dimension, so a student
distilled from it can be compared with the truth. Components may carry class labels; a label restricts the
mixture to its components.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._types import as_sigma

__all__ = ["MMD_BANDWIDTHS", "GaussianMixture", "energy_distance", "mmd2"]

MMD_BANDWIDTHS = (0.05, 0.2, 1.0)  # RBF bandwidths of mmd2: a ring mode's std, a mode's neighbourhood, the ring


class GaussianMixture(nn.Module):
    """A Gaussian mixture usable as a [`Teacher`][scoredistill.roles.teacher.Teacher] and as a source of real samples.

    Args:
        means: ``[K, *sample_shape]`` component means.
        stds: ``[K]`` (or scalar) isotropic standard deviations.
        weights: ``[K]`` mixture weights (normalised here); uniform if omitted.
        classes: ``[K]`` integer class of each component for conditional use, or ``None``.
    """

    def __init__(
        self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None, classes: Tensor | None = None
    ):
        super().__init__()
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float32).expand(k).clone()
        weights = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be [K] = [{k}] non-negative with a positive sum, got {weights}")
        if (stds <= 0).any():
            raise ValueError("component stds must be positive")
        self.register_buffer("means", means.float().clone())
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())
        self.label_dim = 0
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long)
            if classes.shape != (k,) or classes.min() < 0:
                raise ValueError(f"classes must be [K] = [{k}] non-negative integers")
            self.label_dim = int(classes.max()) + 1
            self.register_buffer("classes", classes)
        else:
            self.classes = None
        self.sample_shape = tuple(means.shape[1:])

    @classmethod
    def ring(
        cls,
        n_modes: int = 8,
        *,
        radius: float = 1.0,
        std: float = 0.05,
        weights: Tensor | None = None,
        conditional: bool = False,
    ) -> GaussianMixture:
        """``n_modes`` 2-D Gaussians evenly spaced on a circle (the classic mode-coverage toy)."""
        angles = torch.arange(n_modes) * 2 * math.pi / n_modes
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(means, std, weights, torch.arange(n_modes) if conditional else None)

    def _log_prior(self, labels: Tensor | None, batch: int) -> Tensor:
        log_pi = self.weights.log().expand(batch, -1)
        if self.classes is None or labels is None:
            return log_pi
        if labels.ndim == 2:
            labels = labels.argmax(dim=1)
        return torch.where(self.classes[None] == labels[:, None], log_pi, -math.inf)

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The exact denoiser ``E[x0 | x_sigma = x]``, float32 of ``x``'s shape."""
        x = x.float()
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"x must be [B, {self.sample_shape}], got {tuple(x.shape)}")
        sigma = as_sigma(sigma, x.shape[0], x.device)
        flat, mu = x.flatten(1), self.means.flatten(1)  # [B, P], [K, P]
        var = self.stds[None] ** 2 + sigma[:, None] ** 2  # [B, K]
        sq = torch.cdist(flat, mu).square()  # [B, K]
        log_r = self._log_prior(labels, x.shape[0]) - 0.5 * sq / var - 0.5 * flat.shape[1] * var.log()
        r = log_r.softmax(dim=1)  # [B, K]
        shrink = self.stds[None] ** 2 / var  # [B, K]
        # E[x0 | x, k] = mu_k + shrink_k (x - mu_k), averaged over k with the responsibilities.
        mean = (r * shrink).sum(1, keepdim=True) * flat + (r * (1 - shrink)) @ mu
        return mean.reshape(x.shape)

    def sample(self, n: int, labels: Tensor | None = None, *, rng: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` exact samples (restricted to each label's components when labels are given)."""
        probs = self._log_prior(labels, n).exp().to(self.means.device)
        k = torch.multinomial(probs, 1, generator=rng).squeeze(1)
        noise = torch.randn(n, *self.sample_shape, generator=rng, device=self.means.device)
        return self.means[k] + self.stds[k].reshape(-1, *([1] * len(self.sample_shape))) * noise

    def assign(self, x: Tensor) -> Tensor:
        """``[B]`` index of the nearest component mean (for mode-mass figures)."""
        return torch.cdist(x.flatten(1).float(), self.means.flatten(1)).argmin(dim=1)

    def mode_mass(self, x: Tensor) -> Tensor:
        """``[K]`` fraction of samples nearest to each component mean."""
        return torch.bincount(self.assign(x), minlength=self.means.shape[0]).float() / x.shape[0]

    def near_mode(self, x: Tensor, *, n_std: float = 3.0) -> Tensor:
        """Fraction of samples within ``n_std`` standard deviations of their nearest component mean."""
        dist = torch.cdist(x.flatten(1).float(), self.means.flatten(1))
        nearest = dist.argmin(dim=1)
        return (dist.gather(1, nearest[:, None]).squeeze(1) < n_std * self.stds[nearest]).float().mean()

    def batches(self, batch: int, *, rng: torch.Generator | None = None):
        """An endless iterator of real batches ``(x, None)`` (or one-hot labelled) for SiDA's discriminator."""
        while True:
            if self.classes is None:
                yield self.sample(batch, rng=rng), None
            else:
                k = torch.multinomial(self.weights, batch, replacement=True, generator=rng)
                labels = self.classes[k]
                yield self.sample(batch, labels, rng=rng), nn.functional.one_hot(labels, self.label_dim).float()


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """The energy distance ``2 E|x - y| - E|x - x'| - E|y - y'|`` between two samples (0 iff equal laws)."""
    x, y = x.flatten(1).float(), y.flatten(1).float()
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def mmd2(x: Tensor, y: Tensor, *, bandwidths: tuple[float, ...] = MMD_BANDWIDTHS) -> Tensor:
    """Unbiased squared maximum mean discrepancy between two samples with a mean of RBF kernels.

    ``k(a, b) = mean_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths`` (default 0.05, 0.2 and 1.0: the
    demo ring's mode std, a mode's neighbourhood and the ring's radius). Near 0 (it can dip below) for equal
    laws; the unbiased estimate's noise at 4000 samples each is about 1e-4.
    """
    x, y = x.flatten(1).float(), y.flatten(1).float()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 samples on each side, got {n} and {m}")

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    kxx = (k(x, x).sum() - n) / (n * (n - 1))  # the diagonal (k = 1) left out: unbiased
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    return kxx + kyy - 2 * k(x, y).mean()
