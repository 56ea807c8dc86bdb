"""The group norm in a convolution's prologue: would an implicit-GEMM convolution of our own pay? (issue 20)

Issue 20's profiles leave the group norms at 20-26% of an iteration's kernel time, at 46-72% of the copy bandwidth,
and RESULTS.md ("What the targets need") finds the targets out of reach while the norm writes its output for cuDNN's
convolution to read. The way out it names is a convolution of our own that normalises its input as it loads it. Two
things decide whether that pays, and this script measures both, per 3x3 layer shape of the CIFAR-10 DDPM++ and
ImageNet-64 ADM networks, forward only, bf16, channels_last, as CUDA-graph replays:

* **our GEMM against cuDNN's**: `conv3x3` (a Triton implicit-GEMM kernel: one output pixel per GEMM row, the nine
  taps and the input channels as its K) beside `F.conv2d`;
* **the prologue against the traffic it saves**: `stats + fused` (one pass for the per-channel sums, a tiny kernel
  turning them into per-sample scales and shifts, then `conv3x3` applying scale, shift and SiLU to each loaded tile,
  the zero padding kept outside the activation) beside `norm + cuDNN` (the library's fused group norm + SiLU, then
  `F.conv2d`: the networks' forward today) and `norm + conv3x3`.

The prologue recomputes the SiLU for each of the nine taps that load an input element (an exponential and a division
each, on the special-function units) to save one write and one read of the normalised tensor; whether the tensor
cores hide that work is the question. The forward kernel alone would serve the networks that train no weights in a
pass (the teacher, and the fake score in the generator phase): their backward needs cuDNN's input gradient and the
norm's own backward, neither of which reads the normalised tensor. A trained network's weight gradient reads it,
and would need a weight-gradient kernel with the same prologue.

Before timing, each case checks its outputs against the float32 composition (:func:`check`, also run by the CPU tests
through Triton's interpreter), so the rows compare the same work.

    python benchmarks/bench_conv_fusion.py     # appends a table to benchmarks/RESULTS.md (autotuning: about 1 min)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS_MD, print_row, write_table
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
def _conv3x3_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, M, H, W, CO, CI: tl.constexpr,
                    PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):  # fmt: skip
    # y[p, co] = sum over taps t and input channels c of a(p + shift_t, c) * w[t * CI + c, co]: x and y are
    # channels_last ([pixels, channels] row-major), w is [9 * CI, CO]. PROLOGUE 1 or 2: a = silu(x * scale[n, c] +
    # shift[n, c]), zero outside the map (the padding comes after the activation), its sigmoid as 1 / (1 + exp(-z))
    # (1) or as 0.5 + 0.5 tanh(z / 2) by the hardware's approximate tanh (2: one special-function operation instead
    # of two; CUDA only); 0: a = x.
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(CO, BLOCK_N)
    group = pid // (GROUP_M * num_n)  # GROUP_M row blocks share their column blocks' weights in L2
    first_m = group * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % rows
    pid_n = (pid % (GROUP_M * num_n)) // rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n = rm // (H * W)
    oh = (rm % (H * W)) // W
    ow = rm % W
    m_ok = rm < M
    n_ok = rn < CO
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, 9 * CI, BLOCK_K):  # CI is a multiple of BLOCK_K: one block never spans two taps
        tap = kk // CI
        c = kk - tap * CI + rk
        dh = tap // 3 - 1
        dw = tap % 3 - 1
        ih = oh + dh
        iw = ow + dw
        inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + (rm + dh * W + dw)[:, None] * CI + c[None, :], mask=inside[:, None], other=0.0)
        if PROLOGUE > 0:
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
    tl.store(y_ptr + rm[:, None] * CO + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_conv3x3_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in CONFIGS
    ],
    key=["M", "H", "W", "CO", "CI", "PROLOGUE"],
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
    scale, shift = torch.empty(N, C, device=x.device), torch.empty(N, C, device=x.device)
    cg = C // groups
    _scale_shift_kernel[(N,)](sums, gamma, beta, scale, shift, N, C, cg, float(cg * H * W), eps,
                              BLOCK_G=triton.next_power_of_2(groups), BLOCK_CG=triton.next_power_of_2(cg))  # fmt: skip
    return scale, shift


def conv3x3(
    x: Tensor,
    w_packed: Tensor,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    config: tuple[int, int, int] | None = None,
    tanh: bool = False,
) -> Tensor:
    """3x3 convolution, padding 1, of a channels_last ``x`` (``[N, CI, H, W]``); with ``scale`` and ``shift``
    (``[N, CI]``) of ``silu(x * scale + shift)`` instead, its sigmoid by the hardware's approximate tanh if ``tanh``
    (CUDA only). ``config``: ``(BLOCK_M, BLOCK_N, BLOCK_K)`` (default: the autotuner's pick among `CONFIGS`)."""
    N, CI, H, W = x.shape
    CO = w_packed.shape[1]
    assert x.is_contiguous(memory_format=torch.channels_last) and w_packed.shape == (9 * CI, CO)
    y = torch.empty(N, CO, H, W, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    M, prologue = N * H * W, 0 if scale is None else 2 if tanh else 1
    args = (x, w_packed, bias if bias is not None else x, scale if prologue else x, shift if prologue else x, y)
    if config is None:
        assert CI % 64 == 0, "the tuned configurations read input channels 64 at a time"

        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(CO, meta["BLOCK_N"]),)

        _conv3x3_tuned[grid](*args, M, H, W, CO, CI, PROLOGUE=prologue, HAS_BIAS=bias is not None)
    else:
        bm, bn, bk = config
        assert CI % bk == 0, f"CI={CI} must be a multiple of BLOCK_K={bk}"
        grid = (triton.cdiv(M, bm) * triton.cdiv(CO, bn),)
        _conv3x3_kernel[grid](*args, M, H, W, CO, CI, PROLOGUE=prologue, HAS_BIAS=bias is not None,
                              BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2)  # fmt: skip
    return y


def _norm(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Group norm + SiLU: the library's fused kernel (CUDA), the native composition elsewhere."""
    if x.is_cuda:
        from scoredistill.kernels.groupnorm_triton import group_norm_act

        return group_norm_act(x, GROUPS, gamma, beta, EPS, silu=True)
    return F.silu(F.group_norm(x, GROUPS, gamma.to(x.dtype), beta.to(x.dtype), EPS))


def make(shape: tuple[int, ...], device: str, dtype: torch.dtype, config: tuple[int, int, int] | None = None,
         seed: int = 0) -> tuple[dict[str, Callable[[], Tensor]], dict[str, Tensor]]:  # fmt: skip
    """The case's ways to compute ``conv(silu(group_norm(x)))`` and ``conv(x)``, and their float32 references.

    Returns ``(steps, references)``. ``steps["stats + fused"]``, ``["norm + conv3x3"]`` and, on CUDA, ``["norm +
    cuDNN"]`` and ``["stats + fused, tanh"]`` compute the normalised layer (``references["normalised"]``);
    ``["conv3x3"]`` and, on CUDA, ``["cuDNN"]`` the bare convolution (``references["bare"]``).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C, H, W = shape
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 0.5).to(device, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, C, 3, 3, generator=g) * (9 * C) ** -0.5).to(device, dtype)
    bias = (0.1 * torch.randn(C, generator=g)).to(device, dtype)
    gamma = (torch.rand(C, generator=g) + 0.5).to(device)  # float32, as the networks keep them
    beta = (0.5 * torch.randn(C, generator=g)).to(device)
    xf, wf, bf = x.float(), w.float(), bias.float()
    references = {
        "normalised": F.conv2d(F.silu(F.group_norm(xf, GROUPS, gamma, beta, EPS)), wf, bf, padding=1),
        "bare": F.conv2d(xf, wf, bf, padding=1),
    }
    w_packed, w_cl = pack_weight(w), w.contiguous(memory_format=torch.channels_last)

    def fused(tanh: bool = False) -> Tensor:
        return conv3x3(x, w_packed, bias, *group_scale_shift(x, GROUPS, gamma, beta), config=config, tanh=tanh)

    steps = {
        "conv3x3": lambda: conv3x3(x, w_packed, bias, config=config),
        "norm + conv3x3": lambda: conv3x3(_norm(x, gamma, beta), w_packed, bias, config=config),
        "stats + fused": fused,
    }
    if x.is_cuda:
        steps["cuDNN"] = lambda: F.conv2d(x, w_cl, bias, padding=1)
        steps["norm + cuDNN"] = lambda: F.conv2d(_norm(x, gamma, beta), w_cl, bias, padding=1)
        steps["stats + fused, tanh"] = lambda: fused(tanh=True)
    return steps, references


BARE = ("conv3x3", "cuDNN")  # the steps that compute the bare convolution


def check(shape: tuple[int, ...], device: str, dtype: torch.dtype, tol: float,
          config: tuple[int, int, int] | None = None, made: tuple | None = None) -> float:  # fmt: skip
    """The largest difference of the case's steps from their float32 references, relative to the reference's largest
    value; raises ``AssertionError`` above ``tol``. ``made``: what `make` returned (default: made here)."""
    steps, references = make(shape, device, dtype, config) if made is None else made
    worst = 0.0
    for key, step in steps.items():
        reference = references["bare" if key in BARE else "normalised"]
        diff = float((step().float() - reference).abs().max() / reference.abs().max())
        assert diff <= tol, f"{shape}: {key} differs from its float32 reference by {diff:.3g} > {tol}"
        worst = max(worst, diff)
    return worst


def tflops(shape: tuple[int, ...], seconds: float | None) -> float | None:
    """The 3x3 convolution's rate (2 * 9 * C * C FLOP per output pixel) at ``seconds`` per call."""
    B, C, H, W = shape
    return None if seconds is None else 2 * 9 * C * C * B * H * W / seconds / 1e12


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100, help="graph replays timed per setting and round")
    p.add_argument("--rounds", type=int, default=3, help="each setting's best of this many rounds, interleaved")
    p.add_argument("--out", type=Path, default=RESULTS_MD)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_conv_fusion needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # as the Distiller's fast path sets it
    keys = ["cuDNN", "conv3x3", "norm + cuDNN", "norm + conv3x3", "stats + fused", "stats + fused, tanh"]
    columns = ["case", "input", *(f"{k} (us)" for k in keys), "cuDNN TFLOP/s", "conv3x3 / cuDNN",
               "fused / (norm + cuDNN)", "fused / (norm + conv3x3)", "fused, tanh / (norm + cuDNN)",
               "max rel. diff"]  # fmt: skip
    rows = []
    for name, shape in CASES.items():
        made = make(shape, "cuda", torch.bfloat16)
        diff = check(shape, "cuda", torch.bfloat16, tol=2e-2, made=made)  # the very steps that are timed
        steps = made[0]
        times = {key: [time_graph(steps[key], args.iters) for _ in range(args.rounds)] for key in keys}
        best = {key: None if None in ts else min(ts) for key, ts in times.items()}  # None: a capture failed

        def ratio(a: str, b: str, best: dict = best) -> float | None:
            return None if best[a] is None or best[b] is None else best[a] / best[b]

        row = [name, "x".join(map(str, shape)), *(None if best[k] is None else best[k] * 1e6 for k in keys),
               tflops(shape, best["cuDNN"]), ratio("conv3x3", "cuDNN"), ratio("stats + fused", "norm + cuDNN"),
               ratio("stats + fused", "norm + conv3x3"), ratio("stats + fused, tanh", "norm + cuDNN"),
               diff]  # fmt: skip
        row = ["failed" if v is None else v for v in row]
        rows.append(row)
        print_row(columns, row)
    notes = [
        "bf16, channels_last, forward only, 3x3 convolutions C -> C with bias, device time per CUDA-graph replay, "
        f"each setting's best of {args.rounds} rounds of {args.iters} replays. conv3x3: Triton implicit GEMM, "
        f"autotuned over {len(CONFIGS)} tilings. norm: the library's fused group norm + SiLU (32 groups). stats + "
        "fused: the channel sums, the per-sample scales and shifts, then conv3x3 normalising and activating each "
        "loaded tile; tanh: its sigmoid by the hardware's approximate tanh (one special-function operation instead of "
        "two). Below 1 in the ratio columns: the first is faster.",
        "Max rel. diff: the largest difference of any setting's output from the float32 composition, relative to its "
        "largest value.",
    ]
    if not args.no_write:
        write_table("bench_conv_fusion: the group norm + SiLU in a convolution's prologue, forward, bf16", columns,
                    rows, notes=notes, md_path=args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
