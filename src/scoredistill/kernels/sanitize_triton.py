"""The optimiser steps' NaN/Inf rule and value clipping in one pass over a gradient, in Triton.

Before each optimiser step the `Distiller` applies the reference's rule to every gradient (NaN to 0, +-Inf to
+-1e5, other values unchanged) and then, for the fake score under SiDA, clips values to ``[-clip, clip]``. In
PyTorch that is ``nan_to_num_`` followed by a clamp: two passes over the gradient (three with the multi-tensor
``clamp_min`` and ``clamp_max``). This kernel reads and writes each element once, with the same values (the
`Distiller` runs it where ``training.distill.ONE_PASS_SANITIZE`` is on, the default)::

    g = nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5)
    g = clamp(g, -clip, clip)          # when clip is given

``x`` must be dense (contiguous or channels_last, which both fill their storage span); `supported` says whether a
call qualifies, and the caller
([`scoredistill.training.distill.sanitize_grads`][scoredistill.training.distill.sanitize_grads]) runs the PyTorch
ops otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_utils import FLT_MAX, SUPPORTED_DTYPES
from .triton_utils import launch as _launch_any

__all__ = ["POSINF", "sanitize_", "supported"]

POSINF = 1e5  # what +Inf becomes (and -Inf its negative): the reference's rule
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _sanitize_kernel(x_ptr, N, big, clip, CLIP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    v = tl.where(v != v, 0.0, v)  # NaN
    v = tl.where(v > FLT_MAX, big, tl.where(v < -FLT_MAX, -big, v))  # +-Inf
    if CLIP:
        v = tl.minimum(tl.maximum(v, -clip), clip)
    tl.store(x_ptr + offs, v.to(x_ptr.dtype.element_ty), mask=m)


def _dense(x: Tensor) -> bool:
    """Whether ``x`` can be swept as a flat buffer: contiguous, or channels_last (4-D) without gaps."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def supported(x: Tensor) -> bool:
    """Whether `sanitize_` takes ``x``: a dense, non-empty tensor of a supported dtype (on CUDA, or on the CPU
    under Triton's interpreter)."""
    return x.dtype in SUPPORTED_DTYPES and 0 < x.numel() < 2**31 and _dense(x)


def sanitize_(x: Tensor, clip: float | None = None) -> Tensor:
    """In place: NaN to 0, +-Inf to +-1e5, then (with ``clip``) values clamped to ``[-clip, clip]``.

    Args:
        x: A dense gradient (`supported`).
        clip: The clipping value (positive), or ``None`` for the NaN/Inf rule alone.

    Returns:
        ``x``.
    """
    if not supported(x):
        raise ValueError(
            f"sanitize_ needs a dense (contiguous or channels_last), non-empty tensor of {SUPPORTED_DTYPES}; got "
            f"{x.dtype}, shape {tuple(x.shape)}, strides {x.stride()}"
        )
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    n = x.numel()
    flat = x.as_strided((n,), (1,), x.storage_offset())  # the span its elements fill (`_dense`)
    c = float(clip) if clip is not None else 0.0
    _launch_any(_sanitize_kernel, (triton.cdiv(n, BLOCK),), x.get_device(), flat, n, POSINF, c, clip is not None,
                BLOCK, num_warps=NUM_WARPS)  # fmt: skip
    return x
