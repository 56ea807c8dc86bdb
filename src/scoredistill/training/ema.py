"""Exponential moving average of the generator's weights, with EDM's half-life in images."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import check_real

__all__ = ["EMA", "ema_beta"]


def ema_beta(nimg: int, batch: int, *, halflife_nimg: float, rampup_ratio: float | None = 0.05) -> float:
    """EDM's EMA decay for one step (EMA-1).

    ``h = min(halflife_nimg, rampup_ratio * nimg)`` and ``beta = 0.5 ** (batch / max(h, 1e-8))``; at
    ``nimg = 0`` with a ramp-up, ``beta = 0`` (the average restarts from the current weights).
    """
    h = halflife_nimg if rampup_ratio is None else min(halflife_nimg, nimg * rampup_ratio)
    return 0.5 ** (batch / max(h, 1e-8))


class EMA(nn.Module):
    """A frozen copy of a module updated as ``theta_ema <- beta theta_ema + (1 - beta) theta`` (EMA-1).

    Args:
        module: The module to average (its copy is made here).
        halflife_nimg: Half-life in images (0.5 Mimg for CIFAR-10, 2 Mimg for ImageNet-64).
        rampup_ratio: EDM's ramp-up: the half-life is at most this fraction of the images seen (``None``: off).
    """

    def __init__(self, module: nn.Module, *, halflife_nimg: float = 500_000, rampup_ratio: float | None = 0.05):
        super().__init__()
        check_real("halflife_nimg", halflife_nimg, low=0, low_open=True)
        # A ratio <= 0 makes the half-life 0, i.e. the average a plain copy: None is the way to turn ramp-up off.
        check_real("rampup_ratio", rampup_ratio, low=0, low_open=True, optional=True, hint=" (None: no ramp-up)")
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.halflife_nimg, self.rampup_ratio = float(halflife_nimg), rampup_ratio

    @torch.no_grad()
    def update(self, source: nn.Module, *, nimg: int, batch: int) -> float:
        """Move the average towards ``source`` after a step of ``batch`` images at ``nimg``; returns beta."""
        beta = ema_beta(nimg, batch, halflife_nimg=self.halflife_nimg, rampup_ratio=self.rampup_ratio)
        dst = [p for p in self.module.parameters()]
        src = [p.detach() for p in source.parameters()]
        if len(dst) != len(src):
            raise ValueError("the EMA and the source module have different parameter lists")
        torch._foreach_lerp_(dst, src, 1.0 - beta)
        for b_dst, b_src in zip(self.module.buffers(), source.buffers()):
            b_dst.copy_(b_src)
        return beta

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
