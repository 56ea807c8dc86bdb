"""The one-step generator role."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Self, override

from .._types import resolve_sample_shape
from ..io.hub import HubMixin
from ..schedules import SIGMA_INIT, check_sigma_init
from .fake_score import trainable_copy
from .precond import Precond, _check_keys, _saved_precond

__all__ = ["OneStepGenerator"]


class OneStepGenerator(nn.Module, HubMixin):
    """``x_g = D_theta(sigma_init z; sigma_init, labels)``, ``z ~ N(0, I)``: one network evaluation (SiD-1).

    Args:
        denoiser: A trainable denoiser ``D(x, sigma, labels)``, usually a copy of the teacher's network.
        sample_shape: Shape of one sample, ``(C, H, W)`` or ``(D,)``; read from the denoiser if omitted.
        sigma_init: The fixed input noise level (the reference's ``--init_sigma``).
        label_dim: Number of classes (0 for unconditional); read from the denoiser if omitted.

    Example:
        >>> import torch
        >>> from scoredistill.roles.precond import Precond
        >>> from scoredistill.networks import MLP
        >>> G = OneStepGenerator(Precond(MLP(dim=2)), sample_shape=(2,))
        >>> G.sample(5, rng=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])

    References:
        Zhou et al. 2024 (SiD); docs/maths.md, (SiD-1).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        *,
        sample_shape: tuple[int, ...] | None = None,
        sigma_init: float = SIGMA_INIT,
        label_dim: int | None = None,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.sample_shape = resolve_sample_shape(denoiser, sample_shape, role="OneStepGenerator")
        self.sigma_init = check_sigma_init(sigma_init)
        self.label_dim = int(label_dim if label_dim is not None else getattr(denoiser, "label_dim", 0))

    @classmethod
    def from_teacher(cls, teacher: nn.Module, *, sigma_init: float = SIGMA_INIT) -> OneStepGenerator:
        """A generator initialised as a trainable copy of the teacher's network (SiD, SiDA).

        Raises:
            TypeError: If the teacher has no network to copy (an analytic or parameter-free denoiser): fit one
                with [`fit_denoiser`][scoredistill.training.fit.fit_denoiser] and start from ``Teacher(net)``.
        """
        net = trainable_copy(teacher, role="OneStepGenerator")
        return cls(
            net,
            sample_shape=getattr(teacher, "sample_shape", None),
            sigma_init=sigma_init,
            label_dim=getattr(teacher, "label_dim", None),
        )

    def extra_repr(self) -> str:
        return f"sample_shape={self.sample_shape}, sigma_init={self.sigma_init}, label_dim={self.label_dim}"

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Map standard normal ``z`` of shape ``[B, *sample_shape]`` to samples ``x_g`` (float32)."""
        if tuple(z.shape[1:]) != self.sample_shape:
            raise ValueError(f"z must be [B, {', '.join(map(str, self.sample_shape))}], got {tuple(z.shape)}")
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device)
        return self.denoiser(self.sigma_init * z.float(), sigma, labels).float()

    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        *,
        rng: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``n`` samples; conditional generators draw uniform labels when ``labels`` is ``None``."""
        device = device or next(self.parameters()).device
        z = torch.randn(n, *self.sample_shape, generator=rng, device=device)
        if labels is None and self.label_dim > 0:
            labels = torch.randint(self.label_dim, (n,), generator=rng, device=device)
        return self(z, labels)

    # config.json (scoredistill.io.hub): the role's init args beside its Precond's config.

    @override
    def to_config(self) -> dict[str, Any]:
        """``sigma_init``, ``sample_shape`` and ``label_dim`` beside the [`Precond`][scoredistill.Precond]'s config."""
        precond = _saved_precond(self, self.denoiser)
        role = {"sigma_init": self.sigma_init, "sample_shape": list(self.sample_shape), "label_dim": self.label_dim}
        return {**role, **precond.to_config()}

    @classmethod
    @override
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A freshly initialised generator from [`to_config`][scoredistill.OneStepGenerator.to_config] output; unknown
        keys raise ``ValueError``."""
        own = ("sigma_init", "sample_shape", "label_dim")
        _check_keys(config, required=(*own, "precond", "backbone"), where="the config")
        net = Precond.from_config({k: v for k, v in config.items() if k not in own})
        shape = tuple(config["sample_shape"])
        return cls(net, sample_shape=shape, sigma_init=config["sigma_init"], label_dim=config["label_dim"])
