"""Two networks' layers as one: would evaluating the teacher and the fake score together pay? (issue 20)

In the generator phase the teacher and the fake score, two networks of one architecture with different weights,
run on the same noisy batch and need only input gradients. One way to run them together is a paired network whose
every layer carries both: a convolution over the two networks' channels side by side with ``groups=2`` (weights
stacked on the output dimension), a group norm with twice the groups over twice the channels (which is exactly the
two group norms). Fewer, larger kernels fill the GPU better at small batches; whether cuDNN's grouped convolution
keeps the dense one's speed is what decides it. This script times, per layer shape of the CIFAR-10 DDPM++ and
ImageNet-64 ADM networks, forward + input gradient, bf16, channels_last, as CUDA-graph replays:

* ``two, one stream``: the two networks' layers one after the other (the path without the teacher's stream);
* ``two, two streams``: the second on a side stream, as ``DistillConfig.overlap_teacher`` runs them;
* ``paired``: one grouped convolution (or one group norm + SiLU over twice the channels).

Before timing, each case checks that the paired layer computes the two layers' outputs and input gradients
(:func:`check`, also run by the CPU tests), so the rows compare the same work.

    python benchmarks/bench_paired.py          # appends a table to benchmarks/RESULTS.md (about 30 s on an H100)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import print_row, replay_args, write_table
from bench_losses import time_graph  # device time per CUDA-graph replay (the side stream forks and joins inside)

# name -> (kind, [B, C, H, W] of one network's input); convolutions are 3x3, C -> C, as in the UNet blocks
CASES = {
    "ddpm++ conv 256@32x32": ("conv", (32, 256, 32, 32)),
    "ddpm++ conv 256@16x16": ("conv", (32, 256, 16, 16)),
    "ddpm++ conv 256@8x8": ("conv", (32, 256, 8, 8)),
    "ddpm++ conv 256@32x32, b128": ("conv", (128, 256, 32, 32)),
    "ddpm++ norm 256@32x32": ("norm", (32, 256, 32, 32)),
    "ddpm++ norm 256@16x16": ("norm", (32, 256, 16, 16)),
    "ddpm++ norm 256@32x32, b128": ("norm", (128, 256, 32, 32)),
    "adm conv 192@64x64": ("conv", (32, 192, 64, 64)),
    "adm conv 384@32x32": ("conv", (32, 384, 32, 32)),
    "adm conv 768@8x8": ("conv", (32, 768, 8, 8)),
    "adm norm 192@64x64": ("norm", (32, 192, 64, 64)),
    "adm norm 768@8x8": ("norm", (32, 768, 8, 8)),
}
GROUPS = 32  # group-norm groups of one network


def _norm(x: Tensor, groups: int, weight: Tensor, bias: Tensor) -> Tensor:
    """Group norm + SiLU: the library's fused kernel on CUDA, the native composition elsewhere."""
    if x.is_cuda:
        from scoredistill.kernels.groupnorm_triton import group_norm_act

        return group_norm_act(x, groups, weight, bias, 1e-5, silu=True)
    return F.silu(F.group_norm(x, groups, weight.to(x.dtype), bias.to(x.dtype), 1e-5))


def make(kind: str, shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, Callable]:
    """The three ways to run the case's two layers, each a step returning the outputs and input gradients.

    Returns ``{"single": fn, "streams": fn, "paired": fn}``; ``single`` and ``paired`` return ``(y_a, y_b, dx_a,
    dx_b)`` (the paired outputs split back per network). ``streams`` exists on CUDA only.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C, H, W = shape
    layout = torch.channels_last

    def rand(*size: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(size, generator=g)).to(device=device, dtype=dtype)

    x_a, x_b = (rand(B, C, H, W).contiguous(memory_format=layout).requires_grad_() for _ in range(2))
    dy_a, dy_b = (rand(B, C, H, W).contiguous(memory_format=layout) for _ in range(2))
    # The paired input holds the two networks' channels side by side, as the paired network's previous layer writes
    # them; it is built once here, outside the timed steps.
    x_p = torch.cat([x_a.detach(), x_b.detach()], dim=1).contiguous(memory_format=layout).requires_grad_()
    dy_p = torch.cat([dy_a, dy_b], dim=1).contiguous(memory_format=layout)
    if kind == "conv":
        w_a, w_b = rand(C, C, 3, 3, scale=C**-0.5 / 3), rand(C, C, 3, 3, scale=C**-0.5 / 3)
        w_p = torch.cat([w_a, w_b]).contiguous(memory_format=layout)  # [2C, C, 3, 3]: groups=2 splits it in two
        w_a, w_b = w_a.contiguous(memory_format=layout), w_b.contiguous(memory_format=layout)

        def layer_a(x: Tensor) -> Tensor:
            return F.conv2d(x, w_a, padding=1)

        def layer_b(x: Tensor) -> Tensor:
            return F.conv2d(x, w_b, padding=1)

        def layer_p(x: Tensor) -> Tensor:
            return F.conv2d(x, w_p, padding=1, groups=2)
    elif kind == "norm":
        gamma = torch.rand(2 * C, generator=g).to(device) + 0.5  # float32, as the networks keep them
        beta = torch.randn(2 * C, generator=g).to(device)

        def layer_a(x: Tensor) -> Tensor:
            return _norm(x, GROUPS, gamma[:C], beta[:C])

        def layer_b(x: Tensor) -> Tensor:
            return _norm(x, GROUPS, gamma[C:], beta[C:])

        def layer_p(x: Tensor) -> Tensor:
            return _norm(x, 2 * GROUPS, gamma, beta)  # twice the groups: each stays within one network's channels
    else:
        raise ValueError(f"kind must be 'conv' or 'norm', got {kind!r}")

    def single():
        y_a, y_b = layer_a(x_a), layer_b(x_b)
        dx_a, dx_b = torch.autograd.grad([y_a, y_b], [x_a, x_b], [dy_a, dy_b])
        return y_a, y_b, dx_a, dx_b

    def paired():
        y = layer_p(x_p)
        (dx,) = torch.autograd.grad(y, x_p, dy_p)
        return (*y.chunk(2, dim=1), *dx.chunk(2, dim=1))

    steps = {"single": single, "paired": paired}
    if device == "cuda":
        side = torch.cuda.Stream()

        def streams():
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                (dx_b,) = torch.autograd.grad(layer_b(x_b), x_b, dy_b)
            (dx_a,) = torch.autograd.grad(layer_a(x_a), x_a, dy_a)
            main.wait_stream(side)
            return dx_a, dx_b

        steps["streams"] = streams
    return steps


def check(
    kind: str, shape: tuple[int, ...], device: str, dtype: torch.dtype, tol: float, steps: dict | None = None
) -> float:
    """The largest difference between the paired layer and the two layers (outputs and input gradients), relative
    to the largest value; raises ``AssertionError`` above ``tol``. ``steps``: those of `make` to check (default:
    made here)."""
    steps = make(kind, shape, device, dtype) if steps is None else steps
    worst = 0.0
    for a, b in zip(steps["single"](), steps["paired"]()):
        a, b = a.detach(), b.detach()
        worst = max(worst, float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12)))
    assert worst <= tol, f"{kind} {shape}: the paired layer differs from the two layers by {worst:.3g} > {tol}"
    return worst


def main(argv: list[str] | None = None) -> int:
    args = replay_args(argv, __doc__.splitlines()[0], iters=200)
    if not torch.cuda.is_available():
        print("bench_paired needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # as the Distiller's fast path sets it
    columns = ["case", "one network's input", "two, one stream (us)", "two, two streams (us)", "paired (us)",
               "paired / one stream", "paired / two streams", "max rel. diff"]  # fmt: skip
    rows = []
    for name, (kind, shape) in CASES.items():
        steps = make(kind, shape, "cuda", torch.bfloat16)
        diff = check(kind, shape, "cuda", torch.bfloat16, tol=2e-2, steps=steps)  # the very steps that are timed
        times = {key: [time_graph(step, args.iters) for _ in range(args.rounds)] for key, step in steps.items()}
        # a setting whose capture failed (the reason is printed above) reads "failed", and so do its ratios
        best = {key: None if None in ts else min(ts) for key, ts in times.items()}
        us = {key: None if t is None else t * 1e6 for key, t in best.items()}
        ratio = {key: None if None in (best["paired"], best[key]) else best["paired"] / best[key] for key in best}
        row = [name, "x".join(map(str, shape)), us["single"], us["streams"], us["paired"], ratio["single"],
               ratio["streams"], diff]  # fmt: skip
        row = ["failed" if v is None else v for v in row]
        rows.append(row)
        print_row(columns, row)
    notes = [
        "bf16, channels_last, forward + input gradient (the generator phase's teacher and fake score train no "
        "weights), device time per CUDA-graph replay, each setting's best of "
        f"{args.rounds} rounds of {args.iters} replays. Below 1 in the ratio columns: the paired layer is faster.",
        "Paired convolution: one `conv2d(groups=2)` over both networks' channels; paired norm: the library's fused "
        "group norm + SiLU over twice the channels with twice the groups. Max rel. diff: the paired layer's largest "
        "difference from the two layers, outputs and input gradients, relative to the largest value.",
    ]
    if not args.no_write:
        write_table("bench_paired: the teacher's and the fake score's layers as one, bf16", columns, rows,
                    notes=notes, md_path=args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
