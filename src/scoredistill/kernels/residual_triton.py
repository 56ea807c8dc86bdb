"""A residual sum with the branch's convolution bias folded in, ``y = (h + x + bias) * scale``, in Triton.

cuDNN returns a convolution's output without its bias; PyTorch then adds the bias as a separate broadcast pass
over the whole output (forward) and reduces the output gradient for it (backward). In a residual block the
branch's last convolution is followed by the residual sum anyway, so the bias is added there: one pass reading
``h`` and ``x`` and writing ``y`` instead of two. Backward, ``h`` and ``x`` receive the incoming gradient (times
``scale``) and the bias its per-channel sum, as for the unfused ops.

With ``FUSED_BIAS_GRAD`` (on by default; ``benchmarks/bench_step.py`` setting ``graphs-cl-nobgrad`` turns it and
the group norms' ``FUSED_AFFINE_GRAD_SUMS`` off, for comparison), a channels_last backward also runs in one kernel:
it reads the incoming gradient once, writes it times ``scale`` (when ``scale != 1``) and sums it per channel, in
float32, into per-program partials that one small reduction finishes, in a fixed order (deterministic). Otherwise
PyTorch scales and then reduces the channels_last gradient over its outer dimensions, a separate pass each.

``h`` and ``x`` must be dense with the same strides (both contiguous or both channels_last) and dtype; the sum
runs in float32 and is rounded once to their dtype. `supported` says whether a call qualifies; the
dispatching [`scoredistill.networks.layers.residual_add`][scoredistill.networks.layers.residual_add] runs the native ops
otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import channels_last
from .triton_utils import SUPPORTED_DTYPES
from .triton_utils import launch as _launch_any

__all__ = ["residual_add", "supported"]

BLOCK = 2048
NUM_WARPS = 4
FUSED_BIAS_GRAD = True  # the one-kernel channels_last backward (see the module docstring)
GRAD_ROWS = 512  # pixels (rows of the [pixels, channels] view) per program of the backward kernel
GRAD_BLOCK_P = 32  # rows per inner step


@triton.jit
def _residual_kernel(h_ptr, x_ptr, b_ptr, y_ptr, N, C, INNER, scale, HAS_X: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    v = tl.load(h_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_X:
        v += tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    c = (offs // INNER) % C  # INNER: 1 for channels_last, H * W for contiguous
    v += tl.load(b_ptr + c, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (v * scale).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _residual_grad_kernel(
    dy_ptr, g_ptr, part_ptr, P, C, scale,
    ROWS: tl.constexpr, WRITE_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # A channels_last gradient as a [P, C] matrix: this program scales rows [ROWS * i, ROWS * (i + 1)) of a block
    # of channels (writing them when WRITE_G) and stores their float32 column sums as partial row i.
    pid_p, pid_c = tl.program_id(0), tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, ROWS, BLOCK_P):
        rows = pid_p * ROWS + start + tl.arange(0, BLOCK_P)
        m = (rows < P)[:, None] & col_mask[None, :]
        offs = rows[:, None] * C + cols[None, :]
        v = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32) * scale
        if WRITE_G:
            tl.store(g_ptr + offs, v.to(g_ptr.dtype.element_ty), mask=m)
        acc += tl.sum(v, axis=0)
    tl.store(part_ptr + pid_p * C + cols, acc, mask=col_mask)


def _fused_grad(dy: Tensor, scale: float, bias_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(dy * scale, (dy * scale).sum((0, 2, 3)))`` of a channels_last ``dy`` in one pass (the sum in float32)."""
    n, c, h, w = dy.shape
    rows = n * h * w
    g = dy if scale == 1 else torch.empty_like(dy)
    if rows == 0:
        return g, torch.zeros(c, device=dy.device, dtype=bias_dtype)
    block_c = min(128, triton.next_power_of_2(c))
    grid = (triton.cdiv(rows, GRAD_ROWS), triton.cdiv(c, block_c))
    partials = torch.empty(grid[0], c, device=dy.device, dtype=torch.float32)
    _launch_any(_residual_grad_kernel, grid, dy.get_device(), dy, g, partials, rows, c, float(scale),
                GRAD_ROWS, scale != 1, GRAD_BLOCK_P, block_c, num_warps=NUM_WARPS)  # fmt: skip
    return g, partials.sum(0).to(bias_dtype)


def supported(h: Tensor, x: Tensor | None, bias: Tensor) -> bool:
    """Whether the kernel takes these operands: 4-D ``h`` (and ``x`` like it), a ``[C]`` bias, one device."""
    if h.dim() != 4 or h.dtype not in SUPPORTED_DTYPES or h.numel() >= 2**31:
        return False
    if not (h.is_contiguous() or h.is_contiguous(memory_format=torch.channels_last)):
        return False
    if bias.shape != (h.shape[1],) or bias.device != h.device or bias.dtype not in SUPPORTED_DTYPES:
        return False
    return x is None or (
        x.shape == h.shape and x.dtype == h.dtype and x.stride() == h.stride() and x.device == h.device
    )


class _ResidualAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, x, bias, scale: float):
        _, C, H, W = h.shape
        inner = 1 if channels_last(h) else H * W
        y = torch.empty_like(h)  # dense: the same strides as h
        n = h.numel()
        if n:
            grid = (triton.cdiv(n, BLOCK),)
            _launch_any(_residual_kernel, grid, h.get_device(), h, h if x is None else x, bias, y, n, C, inner,
                        float(scale), x is not None, BLOCK, num_warps=NUM_WARPS)  # fmt: skip
        ctx.scale, ctx.bias_dtype = scale, bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        if dy is None:
            return None, None, None, None
        need = ctx.needs_input_grad
        if need[2] and FUSED_BIAS_GRAD and channels_last(dy) and dy.is_contiguous(memory_format=torch.channels_last):
            g, g_bias = _fused_grad(dy, ctx.scale, ctx.bias_dtype)
        else:
            g = dy if ctx.scale == 1 else dy * ctx.scale
            g_bias = g.sum(dim=(0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype) if need[2] else None
        return g if need[0] else None, g if need[1] else None, g_bias, None


def residual_add(h: Tensor, x: Tensor | None, bias: Tensor, scale: float = 1.0) -> Tensor:
    """``(h + x + bias[None, :, None, None]) * scale`` (``x`` optional), fused; see `supported`."""
    if not supported(h, x, bias):
        raise ValueError(
            "residual_add needs 4-D h and x of one dtype, device and dense layout, and a [C] bias on that device; "
            f"got h {tuple(h.shape)} {h.dtype}, x {None if x is None else (tuple(x.shape), x.dtype)}, "
            f"bias {tuple(bias.shape)}"
        )
    return _ResidualAdd.apply(h, x, bias, float(scale))
