"""The frozen teacher role."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._types import as_sigma, resolve_sample_shape

__all__ = ["Teacher"]


class Teacher(nn.Module):
    """A frozen pretrained denoiser ``f_phi``: eval mode, no parameter gradients, ever.

    Gradients still flow through its *input* (SiD backpropagates through ``x_t`` into the generator).

    Args:
        denoiser: Any module or callable speaking ``D(x, sigma, labels)``, e.g. a
            [`Precond`][scoredistill.roles.precond.Precond]-wrapped EDM network or an analytic
            [`GaussianMixture`][scoredistill.demo.analytic.GaussianMixture].
        label_dim: Number of classes; read from the denoiser when it has ``label_dim``.
        sample_shape: Shape of one sample, ``(C, H, W)`` or ``(D,)``; read from the denoiser (or its backbone)
            when omitted, by the same rule as every role. ``None`` when neither says (a resolution-agnostic
            network); the [`Distiller`][scoredistill.training.distill.Distiller] checks every known shape against the
            generator's.

    Example:
        >>> import torch
        >>> from scoredistill.demo.analytic import GaussianMixture
        >>> teacher = Teacher(GaussianMixture.ring(n_modes=8))
        >>> teacher(torch.zeros(3, 2), torch.full((3,), 0.5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        denoiser: nn.Module | Callable[..., Tensor],
        *,
        label_dim: int | None = None,
        sample_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"a teacher needs a callable D(x, sigma, labels), got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.label_dim = int(label_dim if label_dim is not None else getattr(denoiser, "label_dim", 0))
        self.sample_shape = resolve_sample_shape(denoiser, sample_shape, role="Teacher", required=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode (no dropout) whatever the caller asks."""
        return super().train(False)

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``D_phi(x; sigma, labels)`` as float32."""
        return self.denoiser(x, as_sigma(sigma, x.shape[0], x.device), labels).float()
