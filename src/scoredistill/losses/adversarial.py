"""SiDA's adversarial loss: the fake score's own encoder is the discriminator."""

from __future__ import annotations

import torch

from .._validate import check_int, check_real
from .base import Evaluation, LossModule, LossOutput

__all__ = ["AdversarialEncoderLoss"]


class AdversarialEncoderLoss(LossModule):
    """Adversarial Score identity Distillation's GAN terms (Zhou et al. 2025; docs/maths.md, (SiDA-1)–(SiDA-4)).

    - Fake-score phase: per sample ``discriminator_scale * lambda(sigma_i) * l_D`` with
      ``l_D = 1/2 [BCE(d_real, 1) + BCE(d_fake, 0)]`` averaged over this process's batch and the logit map;
      real images are noised with the fake branch's sigma and noise.
    - Generator phase: per sample ``generator_scale * C*H*W * w_i * l_adv`` with
      ``l_adv = BCE(clamp(d_fake, -10, 10), 1)`` averaged over this process's batch (the paper's per-GPU batch
      normalisation), ``w_i`` SiD's L1 weight. With ``generator_weight = 1`` next to [`SiDLoss`][scoredistill.SiDLoss],
      the loop forms ``0.5 L_sid + 0.5 L_adv`` once ``generator_start_nimg`` images have been seen (SiDA-4).

    Args:
        generator_scale: The reference's ``loss_scaling_G_gan`` (0.01).
        discriminator_scale: The reference's ``loss_scaling_D`` (1 for EDM, 100 for EDM2).
        generator_start_nimg: Images before the adversarial term joins the generator objective.
        generator_weight: Its weight in the generator average (1 gives SiDA's 0.5/0.5).
    """

    name = "adv"
    needs_real_data = True

    def __init__(
        self,
        *,
        generator_scale: float = 0.01,
        discriminator_scale: float = 1.0,
        generator_start_nimg: int = 200_000,
        generator_weight: float = 1.0,
    ):
        super().__init__()
        for name, value in (
            ("generator_scale", generator_scale),
            ("discriminator_scale", discriminator_scale),
            ("generator_weight", generator_weight),
        ):
            check_real(name, value, low=0)
        check_int("generator_start_nimg", generator_start_nimg, low=0)
        self.generator_scale, self.discriminator_scale = float(generator_scale), float(discriminator_scale)
        self.generator_start_nimg, self.generator_weight = int(generator_start_nimg), float(generator_weight)

    def extra_repr(self) -> str:
        return (
            f"generator_scale={self.generator_scale}, discriminator_scale={self.discriminator_scale}, "
            f"generator_start_nimg={self.generator_start_nimg}, generator_weight={self.generator_weight}"
        )

    def generator_loss(self, ev: Evaluation) -> LossOutput:
        if ev.logits_fake is None:
            raise TypeError("AdversarialEncoderLoss needs a fake score whose backbone exposes encoder logits")
        _, _, adv = ev.generator_terms()
        assert adv is not None
        with torch.no_grad():
            logs = {"g_fool_frac": (ev.logits_fake > 0).float().mean()}
        return LossOutput(self.generator_scale * adv, logs)

    def fake_score_loss(self, ev: Evaluation) -> LossOutput:
        if ev.real is None:
            raise ValueError("AdversarialEncoderLoss needs real images in the fake-score phase (pass data)")
        if ev.logits_fake is None:
            raise TypeError("AdversarialEncoderLoss needs a fake score whose backbone exposes encoder logits")
        _, disc = ev.fake_score_terms
        assert disc is not None
        with torch.no_grad():
            logs = {
                "d_acc_real": (ev.logits_real > 0).float().mean(),
                "d_acc_fake": (ev.logits_fake < 0).float().mean(),
            }
        return LossOutput(self.discriminator_scale * disc, logs)
