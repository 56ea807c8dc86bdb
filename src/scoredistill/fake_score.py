"""The fake-score role: a denoiser of the generator's distribution whose encoder is SiDA's discriminator."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import Self, override

from ._types import ScoreOutput, as_sigma, infer_sample_shape
from .hub import HubMixin
from .precond import Precond

__all__ = ["FakeScore"]


class FakeScore(nn.Module, HubMixin):
    """``f_psi``: trained by denoising score matching on generator samples; SiDA reads its encoder as ``D``.

    Args:
        denoiser: A trainable denoiser. When it exposes ``score`` and ``logits`` (a
            [`Precond`][scoredistill.precond.Precond] around an encoder backbone),
            [`score`][scoredistill.FakeScore.score] returns the discriminator logits from the same pass and
            [`logits`][scoredistill.FakeScore.logits] runs the encoder alone.

    References:
        Zhou et al. 2025 (SiDA); docs/maths.md, (SiDA-1).
    """

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.label_dim = int(getattr(denoiser, "label_dim", 0))
        self.sample_shape = infer_sample_shape(denoiser)

    @classmethod
    def from_teacher(cls, teacher: nn.Module) -> FakeScore:
        """A fake score initialised as a trainable copy of the teacher's network."""
        net = copy.deepcopy(getattr(teacher, "denoiser", teacher))
        if not isinstance(net, nn.Module):
            raise TypeError("the teacher's denoiser is not an nn.Module: build the fake score from a network instead")
        return cls(net.requires_grad_(True).train())

    @property
    def has_encoder(self) -> bool:
        """Whether this fake score can act as SiDA's discriminator."""
        return bool(getattr(self.denoiser, "has_encoder", False))

    def forward(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """``D_psi(x; sigma, labels)`` as float32 (the denoiser contract)."""
        return self.score(x, sigma, labels, augment_labels).denoised

    def score(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> ScoreOutput:
        """Denoised output and, with an encoder, the ``[B, 1, h, w]`` logits, from one forward pass."""
        sigma = as_sigma(sigma, x.shape[0], x.device)
        if hasattr(self.denoiser, "score"):
            out = self.denoiser.score(x, sigma, labels, augment_labels)
            return ScoreOutput(out.denoised.float(), None if out.logits is None else out.logits.float())
        if augment_labels is not None:
            raise ValueError("this fake score's denoiser takes no augment_labels")
        return ScoreOutput(self.denoiser(x, sigma, labels).float(), None)

    def logits(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """The discriminator logits alone (encoder-only pass, used on real images)."""
        if not self.has_encoder:
            raise TypeError("this fake score has no encoder: SiDA needs a backbone with encoder logits")
        return self.denoiser.logits(x, as_sigma(sigma, x.shape[0], x.device), labels, augment_labels).float()

    # config.json (scoredistill.hub): the Precond's config.

    @override
    def to_config(self) -> dict[str, Any]:
        """The [`Precond`][scoredistill.Precond]'s config (a fake score adds no arguments of its own)."""
        if type(self.denoiser) is not Precond:
            raise TypeError(
                f"cannot save a FakeScore around a {type(self.denoiser).__name__}: public artefacts hold a "
                "Precond around a registered backbone (see scoredistill.networks.registry.BACKBONES)"
            )
        return self.denoiser.to_config()

    @classmethod
    @override
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A freshly initialised fake score from [`to_config`][scoredistill.FakeScore.to_config] output."""
        return cls(Precond.from_config(config))
