"""Fused Triton kernels, and whether they can run here.

The ``fused_*_available`` functions answer, for given operands, whether the fused path runs: on CUDA tensors with
Triton installed, unless ``SCOREDISTILL_KERNELS=0`` is set or ``use_kernels=False`` is passed. The callers (the
layers in `scoredistill.networks.layers`, the loss dispatch in `scoredistill.losses.dispatch`) import a
kernel module lazily when the answer is yes and run their reference otherwise. The choice never changes the maths,
only the speed. This package imports only the base layer (`scoredistill._types`) of scoredistill.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = [
    "GROUP_NORM_STRATEGIES",
    "available",
    "channels_last",
    "fused_cat_available",
    "fused_fake_score_available",
    "fused_group_norm_available",
    "fused_resample_available",
    "fused_residual_available",
    "fused_sanitize_available",
    "fused_sid_available",
]


GROUP_NORM_STRATEGIES = ("tiles", "one_pass", "hybrid")
"""The fused group norm's launch strategies a layer may prefer (`scoredistill.kernels.groupnorm_triton`)."""


def available() -> bool:
    """Whether the fused kernels can run here (Triton importable and a CUDA device present)."""
    return _available()


@functools.cache
def _available() -> bool:
    # Cached: the dispatch runs on every loss call, and neither answer changes within a process.
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _use_fused(t: Tensor, use_kernels: bool | None) -> bool:
    if use_kernels is False or os.environ.get("SCOREDISTILL_KERNELS", "1") == "0":
        return False
    return t.is_cuda and available()


def channels_last(t: Tensor) -> bool:
    """Whether the 4-D ``t`` has channels_last strides (channels innermost) rather than contiguous ones.

    The test the kernels use to pick their indexing and their outputs' layout; ambiguous tensors (one channel, or
    contiguous in both senses) count as contiguous.
    """
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and not t.is_contiguous()


def fused_group_norm_available(x: Tensor, num_groups: int, use_kernels: bool | None = None) -> bool:
    """Whether [`GroupNorm`][scoredistill.networks.layers.GroupNorm] runs its fused Triton kernels on ``x``."""
    if not _use_fused(x, use_kernels):
        return False
    from .groupnorm_triton import supported

    return supported(x, num_groups)


def fused_resample_available(x: Tensor, use_kernels: bool | None = None) -> bool:
    """Whether box resampling (`Conv2d`) runs its Triton kernels on ``x``.

    Only channels_last tensors: PyTorch's own kernels are fast on contiguous ones.
    """
    if not (_use_fused(x, use_kernels) and channels_last(x)):
        return False
    from .resample_triton import supported

    return supported(x)


def fused_residual_available(h: Tensor, x: Tensor | None, bias: Tensor, use_kernels: bool | None = None) -> bool:
    """Whether [`residual_add`][scoredistill.networks.layers.residual_add] runs its fused Triton kernel on these
    operands."""
    if not _use_fused(h, use_kernels):
        return False
    from .residual_triton import supported

    return supported(h, x, bias)


def fused_cat_available(a: Tensor, b: Tensor, use_kernels: bool | None = None) -> bool:
    """Whether [`cat_channels`][scoredistill.networks.layers.cat_channels] runs its Triton kernel on these operands
    (channels_last only, and only with the switch ``concat_triton.FUSED_CAT`` on, its default)."""
    if not _use_fused(a, use_kernels):
        return False
    from . import concat_triton

    return concat_triton.FUSED_CAT and concat_triton.supported(a, b)


def fused_sanitize_available(grad: Tensor, use_kernels: bool | None = None) -> bool:
    """Whether the optimiser steps' NaN/Inf rule and clipping run in one Triton pass over ``grad``
    (`sanitize_triton`)."""
    if not _use_fused(grad, use_kernels):
        return False
    from .sanitize_triton import supported

    return supported(grad)


def fused_sid_available(
    x_g: Tensor, d_real: Tensor, d_fake: Tensor, logits_fake: Tensor | None, use_kernels: bool | None = None
) -> bool:
    """Whether SiD's generator terms run their fused kernel (`sid_triton`) here."""
    if not _use_fused(x_g, use_kernels):
        return False
    from .sid_triton import supported

    return supported(x_g, d_real, d_fake, logits_fake)


def fused_fake_score_available(
    denoised: Tensor,
    x0: Tensor,
    sigma: Tensor,
    logits_real: Tensor | None,
    logits_fake: Tensor | None,
    use_kernels: bool | None = None,
) -> bool:
    """Whether the fake-score terms run their fused kernel (`dsm_triton`) here."""
    if not _use_fused(denoised, use_kernels):
        return False
    from .dsm_triton import supported

    return supported(denoised, x0, sigma, logits_real=logits_real, logits_fake=logits_fake)
