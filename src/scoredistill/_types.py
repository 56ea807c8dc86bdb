"""Typed records and protocols shared by every part of scoredistill.

The whole library speaks one denoiser contract, ``D(x, sigma, labels=None) -> Tensor``, that predicts the
clean sample x_0 from a noisy input (EDM, Karras et al. 2022). Backbones are the raw networks ``F`` inside
EDM's preconditioning and speak ``F(x, noise_labels, class_labels, augment_labels)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Backbone", "Denoiser", "EncoderBackbone", "Noised", "Phase", "ScoreOutput"]

Phase = Literal["generator", "fake_score"]
"""The two phases of one distillation iteration."""


@runtime_checkable
class Denoiser(Protocol):
    """Anything that maps a noisy batch to its denoised estimate: ``D(x, sigma, labels) -> x0_hat``.

    Shape:
        x: ``[B, ...]``; sigma: ``[B]``; labels: ``[B, L]`` one-hot or ``None``; returns ``[B, ...]`` float32.
    """

    def __call__(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class Backbone(Protocol):
    """A raw network ``F`` inside EDM preconditioning (EDM's ``SongUNet`` / ``DhariwalUNet`` signature).

    Shape:
        x: ``[B, C, H, W]`` (already scaled by c_in); noise_labels: ``[B]`` (c_noise); class_labels: ``[B, L]``
        or ``None``; augment_labels: ``[B, A]`` or ``None``; returns ``[B, C, H, W]``.
    """

    def __call__(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor: ...


@runtime_checkable
class EncoderBackbone(Backbone, Protocol):
    """A backbone whose encoder doubles as SiDA's discriminator.

    The logit map is the channel mean of the last encoder block's output (before the decoder's middle
    blocks), shape ``[B, 1, h, w]``, float32.

    Optional: ``forward_with_logits_shared(x, noise_labels, class_labels, augment_labels, *, decode)``, one
    encoder pass over the batch and the decoder over its first ``decode`` samples, returning
    ``(F(x[:decode]), logits)``; ``DistillConfig.share_encoder_pass`` needs it.
    """

    def forward_with_logits(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One pass returning ``(F(x), logits)``."""
        ...

    def encoder_logits(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        """The logit map alone; the decoder is skipped."""
        ...


@dataclass(frozen=True)
class ScoreOutput:
    """What a fake-score network returns from one forward pass.

    Attributes:
        denoised: ``[B, ...]`` float32, the denoiser output ``D_psi(x_t; sigma)``.
        logits: ``[B, 1, h, w]`` float32 discriminator logits, or ``None`` when the backbone has no encoder.
    """

    denoised: Tensor
    logits: Tensor | None = None


@dataclass(frozen=True)
class Noised:
    """One noise draw: a clean batch, the noise and the noise levels, shared by every loss in a phase.

    Attributes:
        x0: ``[B, ...]`` clean samples (generator samples ``x_g`` or real data ``x_real``).
        noise: ``[B, ...]`` standard normal noise ``n``.
        sigma: ``[B]`` float32 noise levels.
        labels: ``[B, L]`` one-hot class labels, or ``None``.
        augment_labels: ``[B, A]`` augmentation conditioning (EDM's 9-dim vector), or ``None``.
    """

    x0: Tensor
    noise: Tensor
    sigma: Tensor
    labels: Tensor | None = None
    augment_labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.x0.shape != self.noise.shape:
            raise ValueError(f"x0 {tuple(self.x0.shape)} and noise {tuple(self.noise.shape)} must have one shape")
        if self.sigma.shape != (self.x0.shape[0],):
            raise ValueError(f"sigma must have shape [B] = [{self.x0.shape[0]}], got {tuple(self.sigma.shape)}")
        if self.labels is not None and self.labels.shape[0] != self.x0.shape[0]:
            raise ValueError(f"labels batch {self.labels.shape[0]} != x0 batch {self.x0.shape[0]}")

    @property
    def x_t(self) -> Tensor:
        """The noisy input ``x0 + sigma * noise`` (SiD-3); variance-exploding, no signal scaling."""
        return self.x0 + expand_as(self.sigma, self.x0) * self.noise

    def with_x0(self, x0: Tensor, augment_labels: Tensor | None = None) -> Noised:
        """The same sigma, noise and labels on other data (SiDA's real branch)."""
        return replace(self, x0=x0, augment_labels=augment_labels)


def expand_as(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``[B]`` tensor so that it broadcasts against ``x`` of shape ``[B, ...]``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ``ValueError`` naming every tensor's shape unless they all share one (the losses' and kernels' check).

    Example:
        >>> check_same_shape(x_g=torch.zeros(2, 3), d_real=torch.zeros(2, 4))
        Traceback (most recent call last):
        ValueError: inputs must share one shape [B, ...], got {'x_g': (2, 3), 'd_real': (2, 4)}
    """
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must share one shape [B, ...], got {shapes}")


def batch_dims(x: Tensor) -> tuple[int, ...]:
    """The non-batch dimensions of ``x``, the ones every per-sample loss sums over."""
    return tuple(range(1, x.ndim))


def as_sigma(sigma: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Broadcast a scalar or ``[B]`` noise level to a float32 ``[B]`` tensor, checking its shape."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if sigma.ndim == 0:
        return sigma.expand(batch)
    sigma = sigma.reshape(-1) if sigma.ndim > 1 and sigma.numel() == batch else sigma
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape [B] = [{batch}], got {tuple(sigma.shape)}")
    return sigma


def infer_sample_shape(denoiser: object) -> tuple[int, ...] | None:
    """The shape of one sample, ``(C, H, W)`` or ``(D,)``, read from a denoiser or its backbone if it says.

    Looks for a ``sample_shape`` attribute, then for an EDM-style ``config`` with ``img_channels`` and
    ``img_resolution`` on the denoiser's ``model``.
    """
    for obj in (denoiser, getattr(denoiser, "denoiser", None), getattr(denoiser, "model", None)):
        shape = getattr(obj, "sample_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
        config = getattr(obj, "config", None)
        if config is not None and hasattr(config, "img_channels") and hasattr(config, "img_resolution"):
            return (int(config.img_channels), int(config.img_resolution), int(config.img_resolution))
    return None


def resolve_sample_shape(
    denoiser: object, sample_shape: tuple[int, ...] | None, *, role: str, required: bool = True
) -> tuple[int, ...] | None:
    """The sample shape every role (teacher, generator, fake score) settles on, by one rule.

    ``sample_shape`` when given, else what `infer_sample_shape` reads from the denoiser or its backbone.
    The generator must know it (it draws the noise); a teacher or fake score around a resolution-agnostic
    network (a convolutional backbone, a plain function) may leave it ``None`` (``required=False``).

    Raises:
        ValueError: If ``required`` and neither says, naming the role and what to pass.
    """
    shape = tuple(sample_shape) if sample_shape is not None else infer_sample_shape(denoiser)
    if shape is None and not required:
        return None
    if shape is None:
        raise ValueError(
            f"{role}: pass sample_shape=(C, H, W) or (D,): the {type(denoiser).__name__} does not say its sample "
            "shape (no sample_shape attribute, and no backbone config with img_channels and img_resolution)"
        )
    return tuple(int(s) for s in shape)
