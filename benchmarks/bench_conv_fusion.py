"""The group norm inside an implicit-GEMM convolution of our own: would it pay? (issue 20)

Issue 20's profiles leave the group norms at 20-26% of an iteration's kernel time, at 46-72% of the copy bandwidth,
and RESULTS.md ("What the targets need") finds the targets out of reach while the norm makes its own passes over the
tensors the convolutions read and write. The way out it names is a convolution of our own that takes part of the
norm's work. This script measures, per 3x3 layer shape of the CIFAR-10 DDPM++ and ImageNet-64 ADM networks, forward
only, bf16, channels_last, as CUDA-graph replays:

* **our GEMM against cuDNN's**: `conv3x3` (a Triton implicit-GEMM kernel: one output pixel per GEMM row, the nine
  taps and the input channels as its K) beside `F.conv2d`;
* **the norm in the prologue** (a UNet block's norm0 -> conv0): `stats + fused` (one pass for the per-channel sums,
  a tiny kernel turning them into per-sample scales and shifts, then `conv3x3` applying scale, shift and SiLU to
  each loaded tile, the zero padding kept outside the activation) beside `norm + cuDNN` (the library's fused group
  norm + SiLU, then `F.conv2d`: the networks' forward today) and `norm + conv3x3`. The prologue recomputes the SiLU
  for each of the nine taps that load an input element, to save one write and one read of the normalised tensor;
* **the norm's statistics in the epilogue** (conv0 -> norm1): `conv3x3 with sums + apply` (the convolution adds its
  output's channel sums into a buffer as it stores the output; then the scales and shifts, and one pass that
  normalises and activates) beside `cuDNN + norm` and `conv3x3 + norm`. It saves the norm's statistics pass over the
  convolution's output and recomputes nothing.

* **the input gradient**: the gradient of a 3x3 convolution (padding 1) with respect to its input is the 3x3
  convolution of the output gradient with the weights transposed (in and out channels swapped) and flipped, so
  `conv3x3` can compute it too; it is timed beside cuDNN's own input-gradient kernel (`dgrad`), with cuDNN's
  weight gradient (`wgrad`, which `conv3x3` does not compute) for the third pass's share;
* **the forward without a bias**, as the networks' layers run it (they fold their biases into the next kernel):
  cuDNN launches a slower kernel when given a bias, so only these columns say whether our GEMM would beat the
  convolutions the library runs. On an H100 (2026-12-07) cuDNN's bias-free forward was 1.14-1.59x faster than the
  library's candidate kernel of that day (since removed), which the columns with a bias had shown taking 0.82-0.93x
  cuDNN's time.

A forward kernel alone would serve the networks that train no weights in a pass (the teacher, and the fake score in
the generator phase): their backward needs the convolution's input gradient and the norm's own backward, neither of
which reads the normalised tensor. A trained network's weight gradient reads it.

Before timing, each case checks every setting against its float32 composition (:func:`check`, also run by the CPU
tests through Triton's interpreter), so the rows compare the same work.

    python benchmarks/bench_conv_fusion.py     # appends three tables to benchmarks/RESULTS.md (about 2 min)
    python benchmarks/bench_conv_fusion.py --tables gemm    # the three passes only (about 1 min)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import print_row, replay_args, write_table
from bench_losses import time_graph  # device time per CUDA-graph replay

# name -> [B, C, H, W] of the convolution's input; 3x3, C -> C, as in the UNet blocks
CASES = {
    "ddpm++ 256@32x32": (32, 256, 32, 32),
    "ddpm++ 256@16x16": (32, 256, 16, 16),
    "ddpm++ 256@8x8": (32, 256, 8, 8),
    "ddpm++ 256@32x32, b128": (128, 256, 32, 32),
    "adm 192@64x64": (32, 192, 64, 64),
    "adm 384@32x32": (32, 384, 32, 32),
    "adm 768@8x8": (32, 768, 8, 8),
}
GROUPS = 32  # the networks' group-norm groups
EPS = 1e-5

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) tried by the autotuner on CUDA
CONFIGS = [(128, 128, 64, 3, 8), (128, 256, 64, 3, 8), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (256, 128, 64, 3, 8)]


@triton.jit
def _tanh_approx(v):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [v], dtype=tl.float32, is_pure=True, pack=1)


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
    outside the map (``inside``) and past ``M``. Returns ``(a, c, inside)``."""
    tap = kk // CI
    c = kk - tap * CI + tl.arange(0, BLOCK_K)
    dh = tap // 3 - 1
    dw = tap % 3 - 1
    ih = oh + dh
    iw = ow + dw
    inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    a = tl.load(x_ptr + (rm + dh * W + dw)[:, None] * CI + c[None, :], mask=inside[:, None], other=0.0)
    return a, c, inside


@triton.jit
def _conv3x3_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, sums_ptr, M, H, W, CO,
                    CI: tl.constexpr, HW: tl.constexpr, PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr,
                    STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):  # fmt: skip
    # y[p, co] = sum over taps t and input channels c of a(p + shift_t, c) * w[t * CI + c, co]: x and y are
    # channels_last ([pixels, channels] row-major), w is [9 * CI, CO]. PROLOGUE 1 or 2: a = silu(x * scale[n, c] +
    # shift[n, c]), zero outside the map (the padding comes after the activation), its sigmoid as 1 / (1 + exp(-z))
    # (1) or as 0.5 + 0.5 tanh(z / 2) by the hardware's approximate tanh (2: one special-function operation instead
    # of two; CUDA only); 0: a = x. STATS: also add each output channel's sum and sum of squares over the tile's
    # pixels of sample n into sums[0, n, co] and sums[1, n, co] (float32 atomics), the next group norm's statistics.
    # Where HW is a multiple of BLOCK_M, a tile's pixels are all of one sample: per-sample vectors replace the
    # per-element gathers of scale and shift, and the sums are reduced over the tile before one atomic per channel.
    rm, rn = _output_tile(M, CO, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    SAMPLE_TILE: tl.constexpr = HW % BLOCK_M == 0
    n = rm // HW
    n0 = tl.min(rm, axis=0) // HW  # the tile's sample, where SAMPLE_TILE
    oh = (rm % HW) // W
    ow = rm % W
    m_ok = rm < M
    n_ok = rn < CO
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, 9 * CI, BLOCK_K):  # CI is a multiple of BLOCK_K: one block never spans two taps
        a, c, inside = _input_tile(x_ptr, rm, oh, ow, m_ok, kk, H, W, CI, BLOCK_K)
        if PROLOGUE > 0:
            if SAMPLE_TILE:
                z = a.to(tl.float32) * tl.load(scale_ptr + n0 * CI + c)[None, :]
                z += tl.load(shift_ptr + n0 * CI + c)[None, :]
            else:
                sn = n[:, None] * CI + c[None, :]
                z = a.to(tl.float32) * tl.load(scale_ptr + sn, mask=m_ok[:, None], other=0.0)
                z += tl.load(shift_ptr + sn, mask=m_ok[:, None], other=0.0)
            if PROLOGUE == 1:  # noqa: SIM108 (one branch compiled)
                z = z / (1.0 + tl.exp(-z))
            else:
                z = z * (0.5 + 0.5 * _tanh_approx(0.5 * z))
            a = tl.where(inside[:, None], z, 0.0).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptr + (kk + rk)[:, None] * CO + rn[None, :], mask=n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + rm[:, None] * CO + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
    if STATS:
        v = tl.where(mask, acc, 0.0)
        squares = sums_ptr + (M // HW) * CO  # sums[1]
        if SAMPLE_TILE:
            tl.atomic_add(sums_ptr + n0 * CO + rn, tl.sum(v, axis=0), mask=n_ok)
            tl.atomic_add(squares + n0 * CO + rn, tl.sum(v * v, axis=0), mask=n_ok)
        else:
            tl.atomic_add(sums_ptr + n[:, None] * CO + rn[None, :], v, mask=mask)
            tl.atomic_add(squares + n[:, None] * CO + rn[None, :], v * v, mask=mask)


_conv3x3_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in CONFIGS
    ],
    key=["M", "H", "W", "CO", "CI", "PROLOGUE", "STATS"],
    # The autotuner runs every configuration on the caller's tensors: the sums would pile up its trial runs'
    # atomics. It zeroes them before each trial and before the call it was tuning for.
    reset_to_zero=["sums_ptr"],
)(_conv3x3_kernel)


@triton.jit
def _channel_sums_kernel(x_ptr, sums_ptr, C, HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    # sums[0, n, c] = sum over the pixels of sample n of x[., c]; sums[1, n, c] the same of x^2 (float32)
    n, cb = tl.program_id(0), tl.program_id(1)
    rc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    s = tl.zeros((BLOCK_C,), dtype=tl.float32)
    q = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        rp = p0 + tl.arange(0, BLOCK_HW)
        mask = (rp < HW)[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + (n * HW + rp)[:, None] * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        s += tl.sum(v, axis=0)
        q += tl.sum(v * v, axis=0)
    out = sums_ptr + n * C + rc
    tl.store(out, s, mask=c_ok)
    tl.store(out + tl.num_programs(0) * C, q, mask=c_ok)


@triton.jit
def _scale_shift_kernel(sums_ptr, gamma_ptr, beta_ptr, scale_ptr, shift_ptr, N, C, CG, count, eps,
                        BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):  # fmt: skip
    # Per sample n (one program): the groups' mean and 1/std from the channel sums (count values a group), then
    # scale[n, c] = gamma[c] / std and shift[n, c] = beta[c] - mean * scale[n, c].
    n = tl.program_id(0)
    g, j = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_CG)
    c = g[:, None] * CG + j[None, :]
    mask = (j < CG)[None, :] & (c < C)
    s = tl.sum(tl.load(sums_ptr + n * C + c, mask=mask, other=0.0), axis=1)
    q = tl.sum(tl.load(sums_ptr + (N + n) * C + c, mask=mask, other=0.0), axis=1)
    mean = s / count
    rstd = 1.0 / tl.sqrt(tl.maximum(q / count - mean * mean, 0.0) + eps)
    scale = tl.load(gamma_ptr + c, mask=mask, other=0.0) * rstd[:, None]
    tl.store(scale_ptr + n * C + c, scale, mask=mask)
    tl.store(shift_ptr + n * C + c, tl.load(beta_ptr + c, mask=mask, other=0.0) - mean[:, None] * scale, mask=mask)


def pack_weight(w: Tensor) -> Tensor:
    """``[CO, CI, 3, 3]`` -> ``[9 * CI, CO]``: row ``(kh * 3 + kw) * CI + ci``, as `conv3x3` reads it."""
    return w.permute(2, 3, 1, 0).reshape(9 * w.shape[1], w.shape[0]).contiguous()


def group_scale_shift(x: Tensor, groups: int, gamma: Tensor, beta: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """The group norm as per-sample, per-channel ``scale`` and ``shift`` (``[N, C]``, float32): two launches."""
    N, C, H, W = x.shape
    sums = torch.empty(2, N, C, device=x.device, dtype=torch.float32)
    _channel_sums_kernel[(N, triton.cdiv(C, 64))](x, sums, C, H * W, BLOCK_HW=64, BLOCK_C=64)
    return _scale_shift(sums, groups, gamma, beta, H * W, eps)


def _scale_shift(
    sums: Tensor, groups: int, gamma: Tensor, beta: Tensor, hw: int, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """``scale`` and ``shift`` (``[N, C]``) from the channel sums ``[2, N, C]`` of maps of ``hw`` pixels: one launch.
    The variance is E[x^2] - E[x]^2 in float32: enough for the benchmark's inputs; the library's norm combines
    per-tile means and squared deviations (Chan's method), which a kernel for the networks would do too."""
    _, N, C = sums.shape
    scale, shift = torch.empty(N, C, device=sums.device), torch.empty(N, C, device=sums.device)
    cg = C // groups
    _scale_shift_kernel[(N,)](sums, gamma, beta, scale, shift, N, C, cg, float(cg * hw), eps,
                              BLOCK_G=triton.next_power_of_2(groups), BLOCK_CG=triton.next_power_of_2(cg))  # fmt: skip
    return scale, shift


def conv3x3(
    x: Tensor,
    w_packed: Tensor,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    sums: Tensor | None = None,
    config: tuple[int, int, int] | None = None,
    tanh: bool = False,
) -> Tensor:
    """3x3 convolution, padding 1, of a channels_last ``x`` (``[N, CI, H, W]``).

    With ``scale`` and ``shift`` (``[N, CI]``), of ``silu(x * scale + shift)`` instead, its sigmoid by the hardware's
    approximate tanh if ``tanh`` (CUDA only). With ``sums`` (``[2, N, CO]``, float32, zeroed), the output's
    per-sample channel sums and sums of squares are added into it. ``config``: ``(BLOCK_M, BLOCK_N, BLOCK_K)``
    (default: the autotuner's pick among `CONFIGS`).
    """
    N, CI, H, W = x.shape
    CO = w_packed.shape[1]
    assert x.is_contiguous(memory_format=torch.channels_last) and w_packed.shape == (9 * CI, CO)
    assert sums is None or (sums.shape == (2, N, CO) and sums.dtype == torch.float32)
    y = torch.empty(N, CO, H, W, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    M, prologue = N * H * W, 0 if scale is None else 2 if tanh else 1
    # Absent tensors: x stands in (never read); for the sums, y (the autotuner zeroes the sums argument, and the
    # kernel writes all of y afterwards).
    args = (x, w_packed, *(x if t is None else t for t in (bias, scale, shift)), y, y if sums is None else sums)
    flags = {"PROLOGUE": prologue, "HAS_BIAS": bias is not None, "STATS": sums is not None}
    if config is None:
        assert CI % 64 == 0, "the tuned configurations read input channels 64 at a time"

        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(CO, meta["BLOCK_N"]),)

        _conv3x3_tuned[grid](*args, M, H, W, CO, CI, H * W, **flags)
    else:
        bm, bn, bk = config
        assert CI % bk == 0, f"CI={CI} must be a multiple of BLOCK_K={bk}"
        grid = (triton.cdiv(M, bm) * triton.cdiv(CO, bn),)
        _conv3x3_kernel[grid](*args, M, H, W, CO, CI, H * W, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2)
    return y


@triton.jit
def _scale_act_kernel(y_ptr, scale_ptr, shift_ptr, out_ptr, M, C, HW: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_C: tl.constexpr):  # fmt: skip
    # out[p, c] = silu(y[p, c] * scale[n, c] + shift[n, c]), n = p // HW: the group norm's second half
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rp < M)[:, None] & (rc < C)[None, :]
    sn = (rp // HW)[:, None] * C + rc[None, :]
    z = tl.load(y_ptr + rp[:, None] * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
    z = z * tl.load(scale_ptr + sn, mask=mask, other=0.0) + tl.load(shift_ptr + sn, mask=mask, other=0.0)
    tl.store(out_ptr + rp[:, None] * C + rc[None, :], (z / (1.0 + tl.exp(-z))).to(out_ptr.dtype.element_ty), mask=mask)


def conv3x3_norm(x: Tensor, w_packed: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, config=None) -> Tensor:
    """``silu(group_norm(conv3x3(x)))`` with the norm's statistics summed in the convolution's epilogue: the
    convolution, the scales and shifts, then one pass that reads its output once (four launches with the zeroing)."""
    N, _, H, W = x.shape
    CO = w_packed.shape[1]
    sums = torch.zeros(2, N, CO, device=x.device)
    y = conv3x3(x, w_packed, bias, sums=sums, config=config)
    scale, shift = _scale_shift(sums, GROUPS, gamma, beta, H * W)
    out = torch.empty_like(y)
    grid = (triton.cdiv(N * H * W, 64), triton.cdiv(CO, 64))
    _scale_act_kernel[grid](y, scale, shift, out, N * H * W, CO, H * W, BLOCK_P=64, BLOCK_C=64)
    return out


def _norm(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Group norm + SiLU: the library's fused kernel (CUDA), the native composition elsewhere."""
    if x.is_cuda:
        from scoredistill.kernels.groupnorm_triton import group_norm_act

        return group_norm_act(x, GROUPS, gamma, beta, EPS, silu=True)
    return F.silu(F.group_norm(x, GROUPS, gamma.to(x.dtype), beta.to(x.dtype), EPS))


# The float32 composition each step computes: the bare convolution, the norm + SiLU then the convolution (a UNet
# block's norm0 -> conv0: the prologue's case), the convolution then the norm + SiLU (conv0 -> norm1: the
# epilogue's case), or the bare convolution's input or weight gradient for an output gradient dy.
REFERENCE = {
    "cuDNN": "bare",
    "conv3x3": "bare",
    "norm + cuDNN": "norm first",
    "norm + conv3x3": "norm first",
    "stats + fused": "norm first",
    "stats + fused, tanh": "norm first",
    "cuDNN + norm": "norm after",
    "conv3x3 + norm": "norm after",
    "conv3x3 with sums + apply": "norm after",
    "cuDNN, no bias": "bare, no bias",
    "conv3x3, no bias": "bare, no bias",
    "dgrad cuDNN": "input gradient",
    "dgrad conv3x3": "input gradient",
    "wgrad cuDNN": "weight gradient",
}


def make(shape: tuple[int, ...], device: str, dtype: torch.dtype, config: tuple[int, int, int] | None = None,
         seed: int = 0) -> tuple[dict[str, Callable[[], Tensor]], dict[str, Tensor]]:  # fmt: skip
    """The case's ways to compute each composition of `REFERENCE`, and the compositions in float32.

    Returns ``(steps, references)``: ``steps[key]()`` computes ``references[REFERENCE[key]]``. The steps through
    cuDNN, the library's norm kernel or the approximate tanh exist on CUDA only.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C, H, W = shape
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 0.5).to(device, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, C, 3, 3, generator=g) * (9 * C) ** -0.5).to(device, dtype)
    bias = (0.1 * torch.randn(C, generator=g)).to(device, dtype)
    gamma = (torch.rand(C, generator=g) + 0.5).to(device)  # float32, as the networks keep them
    beta = (0.5 * torch.randn(C, generator=g)).to(device)
    dy = torch.randn(B, C, H, W, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    xf, wf, bf, dyf = x.float(), w.float(), bias.float(), dy.float()
    references = {
        "bare": F.conv2d(xf, wf, bf, padding=1),
        "bare, no bias": F.conv2d(xf, wf, None, padding=1),
        "norm first": F.conv2d(F.silu(F.group_norm(xf, GROUPS, gamma, beta, EPS)), wf, bf, padding=1),
        "norm after": F.silu(F.group_norm(F.conv2d(xf, wf, bf, padding=1), GROUPS, gamma, beta, EPS)),
        "input gradient": F.conv_transpose2d(dyf, wf, padding=1),
        "weight gradient": torch.nn.grad.conv2d_weight(xf, wf.shape, dyf, padding=1),
    }
    w_packed, w_cl = pack_weight(w), w.contiguous(memory_format=torch.channels_last)
    w_dgrad = pack_weight(w.transpose(0, 1).flip(2, 3))  # the input gradient's weights: channels swapped, flipped

    def cudnn_backward(mask: list[bool]) -> Tensor:  # cuDNN's input (dgrad) or weight (wgrad) gradient alone
        grads = torch.ops.aten.convolution_backward(dy, x, w_cl, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
        return grads[0] if mask[0] else grads[1]

    def fused(tanh: bool = False) -> Tensor:
        return conv3x3(x, w_packed, bias, *group_scale_shift(x, GROUPS, gamma, beta), config=config, tanh=tanh)

    steps = {
        "conv3x3": lambda: conv3x3(x, w_packed, bias, config=config),
        "norm + conv3x3": lambda: conv3x3(_norm(x, gamma, beta), w_packed, bias, config=config),
        "stats + fused": fused,
        "conv3x3 + norm": lambda: _norm(conv3x3(x, w_packed, bias, config=config), gamma, beta),
        "conv3x3 with sums + apply": lambda: conv3x3_norm(x, w_packed, bias, gamma, beta, config=config),
        "conv3x3, no bias": lambda: conv3x3(x, w_packed, config=config),
        "dgrad conv3x3": lambda: conv3x3(dy, w_dgrad, config=config),
    }
    if x.is_cuda:
        steps["cuDNN"] = lambda: F.conv2d(x, w_cl, bias, padding=1)
        steps["norm + cuDNN"] = lambda: F.conv2d(_norm(x, gamma, beta), w_cl, bias, padding=1)
        steps["stats + fused, tanh"] = lambda: fused(tanh=True)
        steps["cuDNN + norm"] = lambda: _norm(F.conv2d(x, w_cl, bias, padding=1), gamma, beta)
        steps["dgrad cuDNN"] = lambda: cudnn_backward([True, False, False])
        # as the networks' layers run it: their biases folded into the next kernel, so none in the convolution
        steps["cuDNN, no bias"] = lambda: F.conv2d(x, w_cl, None, padding=1)
        steps["wgrad cuDNN"] = lambda: cudnn_backward([False, True, False])
    return steps, references


def check(shape: tuple[int, ...], device: str, dtype: torch.dtype, tol: float,
          config: tuple[int, int, int] | None = None, made: tuple | None = None,
          keys: list[str] | None = None) -> float:  # fmt: skip
    """The largest difference of the case's steps (or of those of ``keys`` that exist) from their float32 references,
    relative to the reference's largest value; raises ``AssertionError`` above ``tol``. ``made``: what `make`
    returned (default: made here)."""
    steps, references = make(shape, device, dtype, config) if made is None else made
    worst = 0.0
    for key, step in steps.items():
        if keys is not None and key not in keys:
            continue
        reference = references[REFERENCE[key]]
        diff = float((step().float() - reference).abs().max() / reference.abs().max())
        assert diff <= tol, f"{shape}: {key} differs from its float32 reference by {diff:.3g} > {tol}"
        worst = max(worst, diff)
    return worst


def tflops(shape: tuple[int, ...], seconds: float | None) -> float | None:
    """The 3x3 convolution's rate (2 * 9 * C * C FLOP per output pixel) at ``seconds`` per call."""
    B, C, H, W = shape
    return None if seconds is None else 2 * 9 * C * C * B * H * W / seconds / 1e12


PROLOGUE_KEYS = ["cuDNN", "conv3x3", "norm + cuDNN", "norm + conv3x3", "stats + fused", "stats + fused, tanh"]
EPILOGUE_KEYS = ["cuDNN + norm", "conv3x3 + norm", "conv3x3 with sums + apply"]
GEMM_KEYS = ["cuDNN", "conv3x3", "cuDNN, no bias", "conv3x3, no bias", "dgrad cuDNN", "dgrad conv3x3", "wgrad cuDNN"]
TABLES = {"prologue": PROLOGUE_KEYS, "epilogue": EPILOGUE_KEYS, "gemm": GEMM_KEYS}


def _tables_option(parser) -> None:
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES),
                        help="which tables to measure (default: all)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = replay_args(argv, __doc__.splitlines()[0], iters=100, extra=_tables_option)
    if not torch.cuda.is_available():
        print("bench_conv_fusion needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # as the Distiller's fast path sets it
    columns = {
        "prologue": ["case", "input", *(f"{k} (us)" for k in PROLOGUE_KEYS), "cuDNN TFLOP/s", "conv3x3 / cuDNN",
                     "fused / (norm + cuDNN)", "fused / (norm + conv3x3)", "fused, tanh / (norm + cuDNN)",
                     "max rel. diff"],
        "epilogue": ["case", "input", *(f"{k} (us)" for k in EPILOGUE_KEYS), "sums / (cuDNN + norm)",
                     "sums / (conv3x3 + norm)", "max rel. diff"],
        "gemm": ["case", "input", *(f"{k} (us)" for k in GEMM_KEYS), "forward: conv3x3 / cuDNN",
                 "forward, no bias: conv3x3 / cuDNN", "dgrad: conv3x3 / cuDNN", "wgrad share of cuDNN's three",
                 "max rel. diff"],
    }  # fmt: skip
    keys = sorted({k for t in args.tables for k in TABLES[t]})
    rows: dict[str, list] = {t: [] for t in args.tables}
    for name, shape in CASES.items():
        made = make(shape, "cuda", torch.bfloat16)
        diff = check(shape, "cuda", torch.bfloat16, tol=2e-2, made=made, keys=keys)  # the very steps that are timed
        steps = made[0]
        times = {key: [time_graph(steps[key], args.iters) for _ in range(args.rounds)] for key in keys}
        best = {key: None if None in ts else min(ts) for key, ts in times.items()}  # None: a capture failed

        def ratio(a: str, b: str, best: dict = best) -> float | None:
            return None if best[a] is None or best[b] is None else best[a] / best[b]

        def us(keys: list[str], best: dict = best) -> list[float | None]:
            return [None if best[k] is None else best[k] * 1e6 for k in keys]

        size = "x".join(map(str, shape))
        made_rows = {}
        if "prologue" in rows:
            made_rows["prologue"] = [name, size, *us(PROLOGUE_KEYS), tflops(shape, best["cuDNN"]),
                                     ratio("conv3x3", "cuDNN"), ratio("stats + fused", "norm + cuDNN"),
                                     ratio("stats + fused", "norm + conv3x3"),
                                     ratio("stats + fused, tanh", "norm + cuDNN"), diff]  # fmt: skip
        if "epilogue" in rows:
            made_rows["epilogue"] = [name, size, *us(EPILOGUE_KEYS), ratio("conv3x3 with sums + apply", "cuDNN + norm"),
                                     ratio("conv3x3 with sums + apply", "conv3x3 + norm"), diff]  # fmt: skip
        if "gemm" in rows:
            three = [best[k] for k in ("cuDNN", "dgrad cuDNN", "wgrad cuDNN")]
            share = None if None in three else three[2] / sum(three)
            made_rows["gemm"] = [name, size, *us(GEMM_KEYS), ratio("conv3x3", "cuDNN"),
                                 ratio("conv3x3, no bias", "cuDNN, no bias"), ratio("dgrad conv3x3", "dgrad cuDNN"),
                                 share, diff]  # fmt: skip
        for table, row in made_rows.items():
            rows[table].append(["failed" if v is None else v for v in row])
            print_row(columns[table], rows[table][-1])
    timing = (
        "bf16, channels_last, 3x3 convolutions C -> C (forward with bias), device time per CUDA-graph replay, "
        f"each setting's best of {args.rounds} rounds of {args.iters} replays. conv3x3: Triton implicit GEMM, "
        f"autotuned over {len(CONFIGS)} tilings. norm: the library's fused group norm + SiLU (32 groups). Below 1 in "
        "the ratio columns: the first is faster. Max rel. diff: the largest difference of any setting's output from "
        "its float32 composition, relative to the composition's largest value."
    )
    titles = {
        "prologue": "bench_conv_fusion: the group norm + SiLU in a convolution's prologue, forward, bf16",
        "epilogue": "bench_conv_fusion: the group norm's statistics in a convolution's epilogue, forward, bf16",
        "gemm": "bench_conv_fusion: our convolution against cuDNN's, forward and input gradient, bf16",
    }
    notes = {
        "prologue": "stats + fused: the channel sums, the per-sample scales and shifts, then conv3x3 normalising and "
        "activating each loaded tile; tanh: its sigmoid by the hardware's approximate tanh (one special-function "
        "operation instead of two).",
        "epilogue": "conv3x3 with sums + apply: conv3x3 adds its output's per-sample channel sums into a zeroed "
        "buffer in its epilogue (float32 atomics); the scales and shifts; one pass that normalises and activates "
        "(four launches).",
        "gemm": "dgrad: the input gradient for an output gradient dy (cuDNN's backward kernel with only that output "
        "asked for; conv3x3 convolves dy with the weights transposed and flipped); wgrad: cuDNN's weight gradient, "
        "which conv3x3 does not compute, as a share of cuDNN's forward + dgrad + wgrad time. no bias: the forward as "
        "the networks' layers run it (their biases folded into the next kernel); cuDNN launches a slower kernel "
        "with a bias, so the columns with one flatter conv3x3.",
    }
    if not args.no_write:
        for table in args.tables:
            write_table(titles[table], columns[table], rows[table], notes=[timing, notes[table]], md_path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
