"""The decoder's skip concatenation ``torch.cat([a, b], dim=1)`` of channels_last tensors, in Triton.

In channels_last memory a channel concatenation interleaves the two inputs pixel by pixel: each output pixel row is
``a``'s ``Ca`` channels followed by ``b``'s ``Cb``. PyTorch's general concatenation kernel ran this at 19-50% of
the copy bandwidth in the decoders of the EDM UNets (H100 profile, ``benchmarks/RESULTS.md``). This kernel copies
``[pixels, channels]`` tiles of both inputs into the output's rows, so each program reads and writes contiguous row
segments. The result is the same tensor, bit for bit. Its backward could hand back two channel slices of the
gradient, as ``torch.cat``'s does.

Those slices are not dense: in channels_last memory ``dy[:, :Ca]`` steps over the other input's channels at every
pixel. A consumer that needs a dense gradient copies it, e.g. cuDNN's backward of the convolution that made the
encoder's skip (on ImageNet-64, 40 copies of ``[32, 192, 64, 64]`` per iteration at about a quarter of the copy
bandwidth, H100 profile). With ``DENSE_SPLIT`` on (the default), the backward splits the gradient into two dense
channels_last tensors in one pass of the same tiles instead (the same values). Measured on an H200 (2026-12-07,
``bench_step.py``, bf16 + CUDA graphs + channels_last): +0.8% at CIFAR-10 batch 32 and 128 and +1.3% on ImageNet-64
batch 32, at no cost in peak memory (0.01 GiB at most); ``bench_step.py`` setting ``graphs-cl-nodensecat`` turns it
off, for comparison. A gradient that is not dense channels_last still gets the two slices.

The kernel is on by default (``FUSED_CAT``; ``benchmarks/bench_step.py`` setting ``graphs-cl-nocat`` turns it off, for
comparison). [`cat_channels`][scoredistill.networks.layers.cat_channels] dispatches to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import channels_last
from .triton_utils import SUPPORTED_DTYPES
from .triton_utils import launch as _launch_any

__all__ = ["cat_channels", "supported"]

FUSED_CAT = True  # False: torch.cat everywhere (see the module docstring)
DENSE_SPLIT = True  # the backward writes the two gradients densely; False: two slices of dy (see the docstring)
BLOCK_P = 32  # pixels per program
BLOCK_C = 128  # output channels per program
NUM_WARPS = 4


@triton.jit
def _tile(P, CA, CB, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # This program's [BLOCK_P, BLOCK_C] tile of the [P, CA + CB] concatenation: its rows and columns, which rows
    # exist, and which columns fall in the first input or the second.
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_a = (cols < CA)[None, :]
    in_b = ((cols >= CA) & (cols < CA + CB))[None, :]
    return rows, cols, (rows < P)[:, None], in_a, in_b


@triton.jit
def _cat_kernel(a_ptr, b_ptr, y_ptr, P, CA, CB, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # y as a [P, CA + CB] row-major matrix (channels_last), a as [P, CA], b as [P, CB].
    rows, cols, row_mask, in_a, in_b = _tile(P, CA, CB, BLOCK_P, BLOCK_C)
    va = tl.load(a_ptr + rows[:, None] * CA + cols[None, :], mask=row_mask & in_a, other=0.0)
    vb = tl.load(b_ptr + rows[:, None] * CB + (cols[None, :] - CA), mask=row_mask & in_b, other=0.0)
    tl.store(y_ptr + rows[:, None] * (CA + CB) + cols[None, :], tl.where(in_a, va, vb), mask=row_mask & (in_a | in_b))


@triton.jit
def _split_kernel(dy_ptr, da_ptr, db_ptr, P, CA, CB, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # The concatenation's tiles in reverse: dy as [P, CA + CB] rows, da as [P, CA], db as [P, CB].
    rows, cols, row_mask, in_a, in_b = _tile(P, CA, CB, BLOCK_P, BLOCK_C)
    v = tl.load(dy_ptr + rows[:, None] * (CA + CB) + cols[None, :], mask=row_mask & (in_a | in_b), other=0.0)
    tl.store(da_ptr + rows[:, None] * CA + cols[None, :], v, mask=row_mask & in_a)
    tl.store(db_ptr + rows[:, None] * CB + (cols[None, :] - CA), v, mask=row_mask & in_b)


def supported(a: Tensor, b: Tensor) -> bool:
    """Whether the kernel takes these operands: 4-D channels_last tensors of one dtype, device, batch and size."""
    return (
        a.dim() == 4
        and b.dim() == 4
        and a.dtype == b.dtype
        and a.dtype in SUPPORTED_DTYPES
        and a.device == b.device
        and a.shape[0] == b.shape[0]
        and a.shape[2:] == b.shape[2:]
        and all(channels_last(t) and t.is_contiguous(memory_format=torch.channels_last) for t in (a, b))
        and a.numel() + b.numel() < 2**31
    )


class _CatChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        n, ca, h, w = a.shape
        cb = b.shape[1]
        y = torch.empty((n, ca + cb, h, w), device=a.device, dtype=a.dtype, memory_format=torch.channels_last)
        pixels = n * h * w
        if pixels:
            grid = (triton.cdiv(pixels, BLOCK_P), triton.cdiv(ca + cb, BLOCK_C))
            _launch_any(_cat_kernel, grid, a.get_device(), a, b, y, pixels, ca, cb, BLOCK_P, BLOCK_C,
                        num_warps=NUM_WARPS)  # fmt: skip
        ctx.ca = ca
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        if not (DENSE_SPLIT and dy.is_contiguous(memory_format=torch.channels_last)):
            return dy[:, : ctx.ca], dy[:, ctx.ca :]
        n, c, h, w = dy.shape
        ca, cb = ctx.ca, c - ctx.ca
        da, db = (
            torch.empty((n, k, h, w), device=dy.device, dtype=dy.dtype, memory_format=torch.channels_last)
            for k in (ca, cb)
        )
        pixels = n * h * w
        if pixels:
            grid = (triton.cdiv(pixels, BLOCK_P), triton.cdiv(c, BLOCK_C))
            _launch_any(_split_kernel, grid, dy.get_device(), dy, da, db, pixels, ca, cb, BLOCK_P, BLOCK_C,
                        num_warps=NUM_WARPS)  # fmt: skip
        return da, db


def cat_channels(a: Tensor, b: Tensor) -> Tensor:
    """``torch.cat([a, b], dim=1)`` of channels_last tensors, by the kernel; see `supported`."""
    if not supported(a, b):
        raise ValueError(
            "cat_channels needs two 4-D channels_last tensors of one dtype, device, batch and spatial size; got "
            f"{tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}"
        )
    return _CatChannels.apply(a, b)
