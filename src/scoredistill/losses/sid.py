"""SiD: the score-identity generator loss and the fake score's denoising score matching loss."""

from __future__ import annotations

import torch

from .._validate import check_real
from ..schedules import KarrasUniform, LogNormal
from .base import Evaluation, LossModule, LossOutput

__all__ = ["DSMLoss", "SiDLoss"]


class SiDLoss(LossModule):
    """Score identity Distillation's generator loss (Zhou et al. 2024; docs/maths.md, (SiD-2)–(SiD-6)).

    Per sample: ``scale * w_i * sum_p (f_phi - f_psi)_p [(f_phi - x_g)_p - alpha (f_phi - f_psi)_p]`` at
    ``x_t = x_g + sigma n``, ``sigma`` from SiD's Karras-uniform schedule, ``w_i`` the stop-gradient L1
    normaliser. The loop then averages over the per-process batch, which reproduces the reference's
    ``sum * 100 / B_gpu``.

    Args:
        alpha: SiD's alpha (1.2 in the SiD paper, 1.0 for SiDA and SiD²A).
        t_max: Largest noise index as a fraction (the reference's ``--tmax 800`` is 0.8).
        scale: Loss scale (the reference's ``loss_scaling_G``).

    Logs:
        ``weight_mean`` (mean of w), ``score_gap`` (mean |f_phi - f_psi|, a readable progress signal while the
        raw loss oscillates around zero), ``nonfinite_frac`` (fraction of samples masked out).
    """

    name = "sid"

    def __init__(self, *, alpha: float = 1.2, t_max: float = 0.8, scale: float = 100.0):
        super().__init__()
        check_real("alpha", alpha, low=0, low_open=True, hint=" (1.2 for SiD, 1.0 for SiDA)")
        check_real("t_max", t_max, low=0, high=1, low_open=True, hint=" (0.8 reproduces --tmax 800)")
        check_real("scale", scale, low=0, low_open=True)
        self.alpha, self.t_max, self.scale = float(alpha), float(t_max), float(scale)
        self.generator_sigma = KarrasUniform(t_max=t_max)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, t_max={self.t_max}, scale={self.scale}"

    def generator_loss(self, ev: Evaluation) -> LossOutput:
        sid, weight, _ = ev.generator_terms(self.alpha)
        with torch.no_grad():
            kept = weight > 0
            gap = (ev.d_real - ev.d_fake).abs().flatten(1).mean(1)
            logs = {
                "weight_mean": (weight.sum() / kept.sum().clamp_min(1)),
                "score_gap": torch.where(kept, gap, 0).sum() / kept.sum().clamp_min(1),
                "nonfinite_frac": 1 - kept.float().mean(),
            }
        return LossOutput(self.scale * sid, logs)


class DSMLoss(LossModule):
    """The fake score's denoising score matching loss on detached generator samples (docs/maths.md, (DSM-1)–(DSM-2)).

    Per sample: ``scale * lambda(sigma) ||f_psi(x_g + sigma n; sigma) - x_g||^2`` with EDM's log-normal
    ``sigma`` and ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``.

    Args:
        p_mean: Mean of ``ln(sigma)`` (P_mean in EDM).
        p_std: Standard deviation of ``ln(sigma)`` (P_std in EDM).
        scale: Loss scale (the reference's ``loss_scaling``).
    """

    name = "dsm"

    def __init__(self, *, p_mean: float = -1.2, p_std: float = 1.2, scale: float = 1.0):
        super().__init__()
        check_real("p_mean", p_mean)
        check_real("p_std", p_std, low=0, low_open=True)
        check_real("scale", scale, low=0, low_open=True)
        self.p_mean, self.p_std, self.scale = float(p_mean), float(p_std), float(scale)
        self.fake_score_sigma = LogNormal(p_mean=p_mean, p_std=p_std)

    def extra_repr(self) -> str:
        return f"p_mean={self.p_mean}, p_std={self.p_std}, scale={self.scale}"

    def fake_score_loss(self, ev: Evaluation) -> LossOutput:
        dsm, _ = ev.fake_score_terms
        with torch.no_grad():
            kept = torch.isfinite(ev.d_fake).flatten(1).all(1)
            logs = {"loss_mean": dsm.sum() / kept.sum().clamp_min(1), "nonfinite_frac": 1 - kept.float().mean()}
        return LossOutput(self.scale * dsm, logs)
