"""A 3x3 convolution (stride 1, zero padding 1) as a Triton implicit GEMM: the forward pass and the input gradient.

For a channels_last input ``x`` (``[N, CI, H, W]`` stored as ``[N * H * W, CI]`` rows)::

    y[n, o, h, w] = bias[o] + sum over kh, kw, i of x[n, i, h + kh - 1, w + kw - 1] * weight[o, i, kh, kw]

with ``x`` read as zero outside the map. One GEMM row per output pixel (``M = N * H * W``), one column per output
channel; ``K`` runs over the nine taps, and within a tap over the input channels, so that one ``[BLOCK_M, BLOCK_K]``
tile of ``x`` is a block of channels of the pixels shifted by that tap. The input gradient of such a convolution
is the same convolution of the output gradient with the weight's channels swapped (``weight[i, o]``) and its taps
flipped (``2 - kh``, ``2 - kw``). The kernel reads the weight in place through its strides either way, so neither
pass needs a repacked copy. The weight and bias gradients stay cuDNN's (`torch.ops.aten.convolution_backward`
asked for those two alone).

Why: on an H100 (``benchmarks/bench_conv_fusion.py``, 2026-12-07, forward, bf16, cuDNN in benchmark mode) this GEMM
took 0.74-0.95x cuDNN's time on DDPM++'s 256-channel 32x32 and 16x16 maps and on ADM's 192-channel 64x64 map, and
1.05-1.27x on 8x8 maps and ADM's 384-channel 32x32 one. So it is a candidate, off by default (``FUSED_CONV3X3``),
and when on it takes only maps of at least ``MIN_HW`` pixels. Whole iterations with it have not been timed yet
(``benchmarks/bench_step.py`` setting ``graphs-cl-conv``).

The tiling is autotuned per shape the first time a shape runs, on the caller's tensors (outputs only: nothing it
reads is written). A CUDA-graph capture must therefore come after an eager call of every shape it holds, as the
`Distiller`'s warm-up iterations give it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import channels_last

__all__ = ["FUSED_CONV3X3", "MIN_HW", "TRITON_INPUT_GRAD", "conv3x3", "conv3x3_input_grad", "supported"]

FUSED_CONV3X3 = False  # candidate: Conv2d's 3x3 convolutions through this kernel (see the module docstring)
TRITON_INPUT_GRAD = True  # False: the backward asks cuDNN for the input gradient too (this kernel: forward only)
MIN_HW = 256  # the smallest map (pixels) it takes: cuDNN was faster at 8x8
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)  # float32's tl.dot would round to TF32 whatever torch's setting

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) the autotuner tries; BLOCK_K 32 serves 32-channel multiples
CONFIGS = [(128, 128, 64, 3, 8), (128, 256, 64, 3, 8), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4),
           (256, 128, 64, 3, 8), (128, 128, 32, 4, 4)]  # fmt: skip


@triton.jit
def _output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The row and column indices of this program's ``[BLOCK_M, BLOCK_N]`` tile of an ``[M, N]`` output, the row
    blocks taken ``GROUP_M`` at a time so that they share their column blocks' weights in L2."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * num_n) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % rows
    pid_n = (pid % (GROUP_M * num_n)) // rows
    return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _input_tile(x_ptr, rm, oh, ow, m_ok, kk, H, W, CI: tl.constexpr, BLOCK_K: tl.constexpr):
    """K block ``kk`` of the implicit GEMM's left operand: channels ``c`` of the pixels ``rm`` (at rows ``oh`` and
    columns ``ow`` of their maps) shifted by the tap ``kk // CI`` (offsets ``dh``, ``dw`` in -1..1), read as zero
    outside the map (``inside``) and past ``M``. Returns ``(a, c, dh, dw, inside)``."""
    tap = kk // CI
    c = kk - tap * CI + tl.arange(0, BLOCK_K)
    dh = tap // 3 - 1
    dw = tap % 3 - 1
    ih = oh + dh
    iw = ow + dw
    inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    a = tl.load(x_ptr + (rm + dh * W + dw)[:, None] * CI + c[None, :], mask=inside[:, None], other=0.0)
    return a, c, dh, dw, inside


@triton.jit
def _conv3x3_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, M, H, W, CO, s_k, s_n, s_kh, s_kw, CI: tl.constexpr,
                    HW: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):  # fmt: skip
    # y[p, o] = bias[o] + sum over taps t = (kh, kw) and channels c of x[p shifted by t, c] * B[t, c, o], where x
    # and y are [pixels, channels] row-major and B[t, c, o] = w_ptr[c * s_k + o * s_n + kh' * s_kh + kw' * s_kw]
    # with (kh', kw') = (kh, kw), or (2 - kh, 2 - kw) if FLIP. CI is a multiple of BLOCK_K: no K block spans taps.
    rm, rn = _output_tile(M, CO, BLOCK_M, BLOCK_N, GROUP_M)
    oh = (rm % HW) // W  # each output pixel's row and column in its map, for every tap
    ow = rm % W
    m_ok = rm < M
    n_ok = rn < CO
    TAP_SIGN: tl.constexpr = -1 if FLIP else 1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, 9 * CI, BLOCK_K):
        a, c, dh, dw, _ = _input_tile(x_ptr, rm, oh, ow, m_ok, kk, H, W, CI, BLOCK_K)
        w_tap = (1 + TAP_SIGN * dh) * s_kh + (1 + TAP_SIGN * dw) * s_kw  # kh' = 1 + dh, or 1 - dh = 2 - kh flipped
        b = tl.load(w_ptr + w_tap + c[:, None] * s_k + rn[None, :] * s_n, mask=n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * CO + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_conv3x3_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in CONFIGS
    ],
    key=["M", "H", "W", "CO", "CI", "FLIP", "HAS_BIAS", "s_k", "s_n"],
    prune_configs_by={"early_config_prune": lambda configs, nargs, **kw: _fitting(configs, nargs["CI"])},
)(_conv3x3_kernel)


def _fitting(configs: list, ci: int) -> list:
    """The configurations whose K block divides the input channels (one block never spans two taps)."""
    return [c for c in configs if ci % c.kwargs["BLOCK_K"] == 0]


def _launch(x: Tensor, weight: Tensor, bias: Tensor | None, flip: bool, config: tuple[int, int, int] | None) -> Tensor:
    """The convolution of channels_last ``x`` with ``weight`` (``[CO, CI, 3, 3]``), or with its channels swapped and
    taps flipped (``flip``: the input gradient, ``x`` then being the output gradient)."""
    N, CI, H, W = x.shape
    s_o, s_i, s_kh, s_kw = weight.stride()
    CO, s_k, s_n = (weight.shape[1], s_o, s_i) if flip else (weight.shape[0], s_i, s_o)
    y = torch.empty(N, CO, H, W, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    M = N * H * W
    if M == 0:
        return y
    args = (x, weight, x if bias is None else bias, y, M, H, W, CO, s_k, s_n, s_kh, s_kw, CI, H * W, flip,
            bias is not None)  # fmt: skip
    if config is None:

        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(CO, meta["BLOCK_N"]),)

        _conv3x3_tuned[grid](*args)
    else:  # an explicit tiling (the CPU tests: Triton's interpreter cannot autotune)
        bm, bn, bk = config
        if CI % bk:
            raise ValueError(f"{CI} input channels are not a multiple of BLOCK_K = {bk}")
        grid = (triton.cdiv(M, bm) * triton.cdiv(CO, bn),)
        _conv3x3_kernel[grid](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2)
    return y


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, config: tuple[int, int, int] | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.config = config
        return _launch(x, weight, bias, False, config)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dy = dy.contiguous(memory_format=torch.channels_last)
        ours = need_x and TRITON_INPUT_GRAD
        dx = _launch(dy, weight, None, True, ctx.config) if ours else None
        cudnn_dx, dw, db = None, None, None
        if (need_x and not ours) or need_w or need_b:
            cudnn_dx, dw, db = torch.ops.aten.convolution_backward(
                dy, x, weight, [weight.shape[0]] if need_b else None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [need_x and not ours, need_w, need_b],
            )  # fmt: skip
        return (dx if ours else cudnn_dx), dw, db, None


def supported(x: Tensor, weight: Tensor) -> bool:
    """Whether `conv3x3` takes these operands: a dense channels_last ``x`` of a half dtype on a map of at least
    `MIN_HW` pixels, and a ``[CO, CI, 3, 3]`` weight of the same dtype, both channel counts multiples of 32."""
    return (
        x.dim() == 4
        and x.dtype in SUPPORTED_DTYPES
        and weight.dtype == x.dtype
        and weight.dim() == 4
        and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
        and x.shape[1] % 32 == 0
        and weight.shape[0] % 32 == 0
        and x.shape[2] * x.shape[3] >= MIN_HW
        and channels_last(x)
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def conv3x3(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, config: tuple[int, int, int] | None = None
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a channels_last ``x`` and a 3x3 ``weight``, differentiable.

    Args:
        x: ``[N, CI, H, W]``, channels_last.
        weight: ``[CO, CI, 3, 3]``, any strides (read in place).
        bias: Optional ``[CO]``.
        config: ``(BLOCK_M, BLOCK_N, BLOCK_K)`` instead of the autotuner's pick (``BLOCK_K`` must divide ``CI`` and,
            for the input gradient, ``CO``).

    Returns:
        ``[N, CO, H, W]``, channels_last, in ``x``'s dtype (accumulated in float32).
    """
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(f"weight must be [CO, {x.shape[1]}, 3, 3] for this input, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight ({weight.dtype}) and input ({x.dtype}) must share a dtype")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("conv3x3 reads a dense channels_last input")
    return _Conv3x3.apply(x, weight, bias, config)


def conv3x3_input_grad(dy: Tensor, weight: Tensor, *, config: tuple[int, int, int] | None = None) -> Tensor:
    """The input gradient of `conv3x3` for an output gradient ``dy``, as its backward computes it: the 3x3
    convolution of ``dy`` with ``weight``'s channels swapped and taps flipped, the weight read in place.

    Args:
        dy: ``[N, CO, H, W]``, channels_last.
        weight: ``[CO, CI, 3, 3]``, any strides.
        config: As for `conv3x3` (``BLOCK_K`` must divide ``CO``).

    Returns:
        ``[N, CI, H, W]``, channels_last, in ``dy``'s dtype.
    """
    if weight.dim() != 4 or weight.shape[0] != dy.shape[1] or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be [{dy.shape[1]}, CI, 3, 3] for this gradient, got {tuple(weight.shape)}")
    if weight.dtype != dy.dtype:
        raise ValueError(f"weight ({weight.dtype}) and gradient ({dy.dtype}) must share a dtype")
    if not dy.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("conv3x3_input_grad reads a dense channels_last gradient")
    return _launch(dy, weight, None, True, config)
