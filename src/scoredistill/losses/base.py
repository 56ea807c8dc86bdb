"""The plug-in loss protocol: ``Evaluation`` (network outputs of one phase, each computed once),
``LossOutput`` and ``DistillLoss``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .. import _streams
from .._types import Noised, ScoreOutput
from ..schedules import SigmaSampler
from . import dispatch

__all__ = ["DistillLoss", "Evaluation", "LossModule", "LossOutput"]


@dataclass
class LossOutput:
    """What a plug-in returns for one phase.

    Attributes:
        loss: ``[B]`` float32, weighted and scaled, summed over the non-batch dimensions. The loop divides the
            sum over the batch by the per-process batch size (the reference's ``/ B_gpu``).
        logs: Detached scalar tensors for the logs; the loop prefixes them with the plug-in's ``name``.
    """

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Evaluation:
    """The network outputs of one phase, each network run at most once and only when a loss asks.

    Args:
        fake: The noised generator samples (``x0 = x_g``; with gradient in the generator phase, detached and
            possibly augmented in the fake-score phase).
        fake_score: The fake-score network ``f_psi``.
        teacher: The teacher ``f_phi`` (needed by the generator phase only).
        real: The noised real images with the SAME sigma and noise (SiDA's fake-score phase), or ``None``.
        nimg: Images seen so far (losses with a schedule read it).
        use_kernels: Passed to `scoredistill.losses.dispatch` (``None``: fused on CUDA when available).
        side_stream: A second CUDA stream on which the teacher runs while the fake score runs on the current one,
            when a loss asks for both (``DistillConfig.overlap_teacher``). Same inputs, same maths; the two
            networks' forward and backward passes overlap on the GPU. ``None``: one after the other.
        share_encoder: With ``real``, compute the fake score's output on ``fake`` and its logits on ``real`` from
            one encoder pass over both batches (``DistillConfig.share_encoder_pass``); the same values up to
            rounding and dropout's draws.
    """

    def __init__(
        self,
        fake: Noised,
        *,
        fake_score: nn.Module,
        teacher: nn.Module | None = None,
        real: Noised | None = None,
        nimg: int = 0,
        use_kernels: bool | None = None,
        side_stream: torch.cuda.Stream | None = None,
        share_encoder: bool = False,
    ):
        if real is not None and real.x0.shape != fake.x0.shape:
            raise ValueError(f"real {tuple(real.x0.shape)} and fake {tuple(fake.x0.shape)} batches must match")
        if side_stream is not None and not fake.x0.is_cuda:
            raise ValueError(f"side_stream overlaps CUDA work; these samples are on {fake.x0.device}")
        self.fake, self.real, self.nimg = fake, real, nimg
        self._fake_score, self._teacher, self._use_kernels = fake_score, teacher, use_kernels
        self._side = side_stream
        self._share_encoder = share_encoder and real is not None
        if self._share_encoder and (real.sigma is not fake.sigma or real.labels is not fake.labels):
            raise ValueError("share_encoder needs real images noised with the fakes' sigma and labels (with_x0)")
        self._terms: dict[float, tuple[Tensor, Tensor, Tensor | None]] = {}

    @cached_property
    def x_t(self) -> Tensor:
        """The noisy generator samples ``x_g + sigma n``."""
        return self.fake.x_t

    @cached_property
    def d_real(self) -> Tensor:
        """The teacher's denoised estimate ``f_phi(x_t; sigma)`` (augment labels zero: docs/maths.md)."""
        if self._teacher is None:
            raise RuntimeError("this evaluation has no teacher (the fake-score phase does not query it)")
        if self._side is None or "fake_out" in self.__dict__:
            return self._teacher(self.x_t, self.fake.sigma, self.fake.labels)
        # The teacher on the side stream, the fake score meanwhile on this one: the same input, neither needs the
        # other, and their backward passes (input gradients only, in the generator phase) overlap too.
        side = self._side
        x_t = _streams.fork(self.x_t, side)
        sigma, labels = _streams.lend(self.fake.sigma, side), _streams.lend(self.fake.labels, side)
        with torch.cuda.stream(side):
            d_real = self._teacher(x_t, sigma, labels)
        self.fake_out  # noqa: B018 (computed and cached here, on the current stream)
        return _streams.join(d_real, side)

    @cached_property
    def fake_out(self) -> ScoreOutput:
        """The fake score's denoised estimate and logits at ``x_t``, from one forward pass."""
        fake = self.fake
        if self._share_encoder:  # the real images' logits from the same encoder pass (cached for logits_real)
            assert self.real is not None
            out, self.__dict__["logits_real"] = self._fake_score.score_and_logits(
                self.x_t,
                fake.sigma,
                fake.labels,
                fake.augment_labels,
                other=self.real.x_t,
                other_augment_labels=self.real.augment_labels,
            )
            return out
        return self._fake_score.score(self.x_t, fake.sigma, fake.labels, fake.augment_labels)

    @property
    def d_fake(self) -> Tensor:
        """``f_psi(x_t; sigma)``."""
        return self.fake_out.denoised

    @property
    def logits_fake(self) -> Tensor | None:
        """Discriminator logits of the noised generator samples, ``[B, 1, h, w]``, or ``None``."""
        return self.fake_out.logits

    @cached_property
    def logits_real(self) -> Tensor:
        """Discriminator logits of the noised real images (an encoder-only pass), ``[B, 1, h, w]``."""
        if self.real is None:
            raise RuntimeError("this evaluation has no real images: pass real=... (SiDA needs data)")
        if self._share_encoder:
            self.fake_out  # noqa: B018 (one pass over both batches; it caches these logits)
            return self.__dict__["logits_real"]
        return self._fake_score.logits(self.real.x_t, self.real.sigma, self.real.labels, self.real.augment_labels)

    def generator_terms(self, alpha: float | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(sid, weight, adv)`` of [`sid_generator_terms`][scoredistill.losses.functional.sid_generator_terms],
        memoised.

        The adversarial term is included whenever the fake score returns logits. ``weight`` and ``adv`` do not
        depend on alpha: ``alpha=None`` reuses the terms another plug-in already asked for (alpha 1 if none).
        """
        if alpha is None:
            alpha = next(iter(self._terms), 1.0)
        if alpha not in self._terms:
            self._terms[alpha] = dispatch.sid_generator_terms(
                self.fake.x0,
                self.d_real,
                self.d_fake,
                alpha=alpha,
                logits_fake=self.logits_fake,
                use_kernels=self._use_kernels,
            )
        return self._terms[alpha]

    @cached_property
    def fake_score_terms(self) -> tuple[Tensor, Tensor | None]:
        """``(dsm, disc)`` of [`fake_score_terms`][scoredistill.losses.functional.fake_score_terms].

        The discriminator term is included when real images are present and the fake score has an encoder.
        """
        with_disc = self.real is not None and self.logits_fake is not None
        return dispatch.fake_score_terms(
            self.d_fake,
            self.fake.x0,
            self.fake.sigma,
            sigma_data=getattr(self._fake_score, "sigma_data", 0.5),
            logits_real=self.logits_real if with_disc else None,
            logits_fake=self.logits_fake if with_disc else None,
            use_kernels=self._use_kernels,
        )


@runtime_checkable
class DistillLoss(Protocol):
    """A distillation loss plug-in.

    Attributes:
        name: Prefix of the plug-in's log keys.
        generator_weight: Weight in the generator objective: the loop averages the losses of the active
            plug-ins with these weights (normalised to sum to one), which gives SiDA's ``0.5 L_sid + 0.5 L_adv``.
        generator_start_nimg: The plug-in's generator loss joins once this many images have been seen.
        generator_sigma: The noise-level sampler the generator phase should use, or ``None`` (no opinion).
        fake_score_sigma: The sampler the fake-score phase should use, or ``None``.
    """

    name: str
    generator_weight: float
    generator_start_nimg: int
    generator_sigma: SigmaSampler | None
    fake_score_sigma: SigmaSampler | None

    def generator_loss(self, ev: Evaluation) -> LossOutput | None:
        """The generator-phase loss, or ``None`` if this plug-in takes no part in that phase."""
        ...

    def fake_score_loss(self, ev: Evaluation) -> LossOutput | None:
        """The fake-score-phase loss, or ``None`` if this plug-in takes no part in that phase."""
        ...


class LossModule(nn.Module):
    """Convenience base for plug-ins: an ``nn.Module`` with the protocol's defaults (no part in either phase)."""

    name: str = "loss"
    needs_real_data: bool = False
    generator_weight: float = 1.0
    generator_start_nimg: int = 0
    generator_sigma: SigmaSampler | None = None
    fake_score_sigma: SigmaSampler | None = None

    def generator_loss(self, ev: Evaluation) -> LossOutput | None:
        """No generator-phase loss by default."""
        return None

    def fake_score_loss(self, ev: Evaluation) -> LossOutput | None:
        """No fake-score-phase loss by default."""
        return None
