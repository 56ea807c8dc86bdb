"""Box (two-tap) resampling by 2 in Triton: 2x2 average pooling and nearest-neighbour up-sampling, both ways.

ADM and DDPM++ resample with the filter ``(1, 1)``: down-sampling averages each 2x2 patch (``F.avg_pool2d(x, 2)``)
and up-sampling repeats each pixel 2x2 (``F.interpolate(x, scale_factor=2, mode="nearest")``). PyTorch's
channels_last kernels for these (and for their backward passes) run far below the memory bandwidth; these two
kernels cover all four directions at any strides:

* ``_pool`` writes ``y[b, c, i, j] = scale * sum of x[b, c, 2i + di, 2j + dj]`` (down-sampling with ``scale = 1/4``;
  the up-sampling's backward with ``scale = 1``);
* ``_spread`` writes ``y[b, c, h, w] = scale * x[b, c, h // 2, w // 2]`` (up-sampling with ``scale = 1``; the
  down-sampling's backward with ``scale = 1/4``, and 0 for a last odd row or column, which pooling drops).

Each program covers ``[BLOCK_P, BLOCK_C]`` tiles of output pixels by channels: on channels_last tensors every
pixel's channels are contiguous, so the loads and stores are vectorised. Sums run in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import channels_last
from .triton_utils import SUPPORTED_DTYPES
from .triton_utils import launch as _launch_any

__all__ = ["box_down", "box_up", "supported"]

TILE = 4096
NUM_WARPS = 4


@triton.jit
def _pool(x_ptr, y_ptr, P, C, Ho, Wo, sxb, sxc, sxh, sxw, syb, syc, syh, syw, scale,
          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (p < P)[:, None] & (c < C)[None, :]
    b = (p // (Ho * Wo)).to(tl.int64)
    r = p % (Ho * Wo)
    i, j = r // Wo, r % Wo
    src = x_ptr + (b * sxb + (2 * i) * sxh + (2 * j) * sxw)[:, None] + c[None, :] * sxc
    acc = tl.load(src, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(src + sxw, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(src + sxh, mask=m, other=0.0).to(tl.float32)
    acc += tl.load(src + sxh + sxw, mask=m, other=0.0).to(tl.float32)
    dst = y_ptr + (b * syb + i * syh + j * syw)[:, None] + c[None, :] * syc
    tl.store(dst, (acc * scale).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _spread(x_ptr, y_ptr, P, C, H, W, Hs, Ws, sxb, sxc, sxh, sxw, syb, syc, syh, syw, scale,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (p < P)[:, None] & (c < C)[None, :]
    b = (p // (H * W)).to(tl.int64)
    r = p % (H * W)
    h, w = r // W, r % W
    inside = (h // 2 < Hs) & (w // 2 < Ws)  # pooling drops a last odd row or column: its gradient is 0
    src = x_ptr + (b * sxb + (h // 2) * sxh + (w // 2) * sxw)[:, None] + c[None, :] * sxc
    v = tl.load(src, mask=m & inside[:, None], other=0.0).to(tl.float32)
    dst = y_ptr + (b * syb + h * syh + w * syw)[:, None] + c[None, :] * syc
    tl.store(dst, (v * scale).to(y_ptr.dtype.element_ty), mask=m)


def _blocks(C: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(C), 64)
    return TILE // block_c, block_c


def _like(x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """A new tensor of ``shape`` in ``x``'s memory format (channels_last or contiguous)."""
    fmt = torch.channels_last if channels_last(x) else torch.contiguous_format
    return torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)


def _run_pool(x: Tensor, out_hw: tuple[int, int], scale: float) -> Tensor:
    B, C = x.shape[:2]
    Ho, Wo = out_hw
    y = _like(x, (B, C, Ho, Wo))
    P = B * Ho * Wo
    if P and C:
        block_p, block_c = _blocks(C)
        grid = (triton.cdiv(P, block_p), triton.cdiv(C, block_c))
        _launch_any(_pool, grid, x.get_device(), x, y, P, C, Ho, Wo, *x.stride(), *y.stride(), float(scale),
                    block_p, block_c, num_warps=NUM_WARPS)  # fmt: skip
    return y


def _run_spread(x: Tensor, out_hw: tuple[int, int], scale: float) -> Tensor:
    B, C, Hs, Ws = x.shape
    H, W = out_hw
    y = _like(x, (B, C, H, W))
    P = B * H * W
    if P and C:
        block_p, block_c = _blocks(C)
        grid = (triton.cdiv(P, block_p), triton.cdiv(C, block_c))
        _launch_any(_spread, grid, x.get_device(), x, y, P, C, H, W, Hs, Ws, *x.stride(), *y.stride(), float(scale),
                    block_p, block_c, num_warps=NUM_WARPS)  # fmt: skip
    return y


class _BoxDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.in_hw = tuple(x.shape[2:])
        return _run_pool(x, (x.shape[2] // 2, x.shape[3] // 2), 0.25)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        return _run_spread(dy, ctx.in_hw, 0.25)


class _BoxUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _run_spread(x, (2 * x.shape[2], 2 * x.shape[3]), 1.0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        return _run_pool(dy, (dy.shape[2] // 2, dy.shape[3] // 2), 1.0)


def supported(x: Tensor) -> bool:
    """Whether the kernels take ``x``: 4-D, a supported dtype, fewer than 2^31 elements either side."""
    return x.dim() == 4 and x.dtype in SUPPORTED_DTYPES and 4 * x.numel() < 2**31


def box_down(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)``, fused; output in ``x``'s memory format."""
    if not supported(x):
        raise ValueError(f"box_down needs a 4-D float tensor, got {tuple(x.shape)} {x.dtype}")
    return _BoxDown.apply(x)


def box_up(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2, mode="nearest")``, fused; output in ``x``'s memory format."""
    if not supported(x):
        raise ValueError(f"box_up needs a 4-D float tensor, got {tuple(x.shape)} {x.dtype}")
    return _BoxUp.apply(x)
