"""The fake-score role: a denoiser of the generator's distribution whose encoder is SiDA's discriminator."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import Self, override

from .._types import ScoreOutput, as_sigma, resolve_sample_shape
from ..io.hub import HubMixin
from .precond import Precond, _saved_precond

__all__ = ["FakeScore", "trainable_copy"]


def trainable_copy(teacher: nn.Module, *, role: str) -> nn.Module:
    """A trainable deep copy of the teacher's network, or a ``TypeError`` saying how to get one.

    SiD starts the generator and the fake score as copies of the teacher. A teacher without parameters (an
    analytic [`GaussianMixture`][scoredistill.demo.analytic.GaussianMixture], a plain function) has nothing to copy.
    """
    source = getattr(teacher, "denoiser", teacher)
    if not isinstance(source, nn.Module) or not any(True for _ in source.parameters()):
        raise TypeError(
            f"{role}.from_teacher: the teacher's {type(source).__name__} has no trainable network to copy. Fit one "
            "to it first: net = scoredistill.training.fit.fit_denoiser(teacher, Precond(MLP(dim))), then "
            f"{role}.from_teacher(Teacher(net)) (or pass a network to {role}(...))"
        )
    return copy.deepcopy(source).requires_grad_(True).train()


class FakeScore(nn.Module, HubMixin):
    """``f_psi``: trained by denoising score matching on generator samples; SiDA reads its encoder as ``D``.

    Args:
        denoiser: A trainable denoiser. When it exposes ``score`` and ``logits`` (a
            [`Precond`][scoredistill.roles.precond.Precond] around an encoder backbone),
            [`score`][scoredistill.FakeScore.score] returns the discriminator logits from the same pass and
            [`logits`][scoredistill.FakeScore.logits] runs the encoder alone.
        sample_shape: Shape of one sample, ``(C, H, W)`` or ``(D,)``; read from the denoiser (or its backbone)
            when omitted, by the same rule as every role. ``None`` when neither says (a resolution-agnostic
            network); the [`Distiller`][scoredistill.training.distill.Distiller] checks every known shape against the
            generator's.

    References:
        Zhou et al. 2025 (SiDA); docs/maths.md, (SiDA-1).
    """

    def __init__(self, denoiser: nn.Module, *, sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.label_dim = int(getattr(denoiser, "label_dim", 0))
        self.sample_shape = resolve_sample_shape(denoiser, sample_shape, role="FakeScore", required=False)

    @classmethod
    def from_teacher(cls, teacher: nn.Module) -> FakeScore:
        """A fake score initialised as a trainable copy of the teacher's network.

        Raises:
            TypeError: If the teacher has no network to copy (an analytic or parameter-free denoiser): fit one
                with [`fit_denoiser`][scoredistill.training.fit.fit_denoiser] and start from ``Teacher(net)``.
        """
        net = trainable_copy(teacher, role="FakeScore")
        return cls(net, sample_shape=getattr(teacher, "sample_shape", None))

    @property
    def has_encoder(self) -> bool:
        """Whether this fake score can act as SiDA's discriminator."""
        return bool(getattr(self.denoiser, "has_encoder", False))

    @property
    def can_share_encoder(self) -> bool:
        """Whether [`score_and_logits`][scoredistill.FakeScore.score_and_logits] can run (``share_encoder_pass``)."""
        return bool(getattr(self.denoiser, "can_share_encoder", False))

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

    def score_and_logits(
        self,
        x: Tensor,
        sigma: Tensor | float,
        labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        other: Tensor,
        other_augment_labels: Tensor | None = None,
    ) -> tuple[ScoreOutput, Tensor]:
        """[`score`][scoredistill.FakeScore.score] of ``x`` and [`logits`][scoredistill.FakeScore.logits] of
        ``other`` (same sigma and labels) from one encoder pass over both batches (see
        [`Precond.score_and_logits`][scoredistill.Precond.score_and_logits]).

        Raises:
            TypeError: The fake score has no encoder, or its backbone cannot share the pass.
        """
        if not self.can_share_encoder:
            raise TypeError("this fake score cannot share one encoder pass between two batches")
        sigma = as_sigma(sigma, x.shape[0], x.device)
        out, other_logits = self.denoiser.score_and_logits(
            x, sigma, labels, augment_labels, other=other, other_augment_labels=other_augment_labels
        )
        return ScoreOutput(out.denoised.float(), out.logits.float()), other_logits.float()

    def logits(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """The discriminator logits alone (encoder-only pass, used on real images)."""
        if not self.has_encoder:
            raise TypeError("this fake score has no encoder: SiDA needs a backbone with encoder logits")
        return self.denoiser.logits(x, as_sigma(sigma, x.shape[0], x.device), labels, augment_labels).float()

    # config.json (scoredistill.io.hub): the Precond's config.

    @override
    def to_config(self) -> dict[str, Any]:
        """The [`Precond`][scoredistill.Precond]'s config (a fake score adds no arguments of its own)."""
        return _saved_precond(self, self.denoiser).to_config()

    @classmethod
    @override
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A freshly initialised fake score from [`to_config`][scoredistill.FakeScore.to_config] output."""
        return cls(Precond.from_config(config))
