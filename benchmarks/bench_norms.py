"""Fused group norm + conditioning + SiLU vs the native composition, forward + backward (issue #4).

The UNet blocks' ``silu((group_norm(x + add)) * scale + shift)`` at the shapes the CIFAR-10 DDPM++ and ImageNet-64
ADM networks run at batch 32, in bf16, NCHW and channels_last: the native composition
(:func:`scoredistill.networks.layers.group_norm_act`) against the Triton kernels
(:mod:`scoredistill.kernels.groupnorm_triton`). Wall time per call (host dispatch included), device time from a
CUDA-graph replay, and achieved bandwidth over the minimum traffic (forward: read ``x``, write ``y``; backward:
read ``x`` and ``dy``, write ``dx``) against the measured copy bandwidth.

    python benchmarks/bench_norms.py            # appends a table to benchmarks/RESULTS.md (~1 minute on an H100)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS_MD, print_row, write_table
from bench_losses import copy_bandwidth, time_graph, time_wall

from scoredistill.networks.layers import group_norm_act

# name -> (shape, groups, variant): DDPM++ adds its embedding before the norm; ADM scales and shifts after it.
CASES = {
    "ddpm++ 128@32x32": ((32, 128, 32, 32), 32, "add"),
    "ddpm++ 256@32x32": ((32, 256, 32, 32), 32, "add"),
    "ddpm++ 256@16x16": ((32, 256, 16, 16), 32, "add"),
    "ddpm++ 256@8x8": ((32, 256, 8, 8), 32, "add"),
    "ddpm++ 256@16x16, b128": ((128, 256, 16, 16), 32, "add"),
    "ddpm++ 256@8x8, b128": ((128, 256, 8, 8), 32, "add"),
    "adm 192@64x64": ((32, 192, 64, 64), 32, "scale-shift"),
    "adm 384@32x32": ((32, 384, 32, 32), 32, "scale-shift"),
    "adm 768@8x8": ((32, 768, 8, 8), 32, "scale-shift"),
    "adm 576+768@16x16 (skip concat)": ((32, 1344, 16, 16), 32, "scale-shift"),
}


def make(shape, groups, variant, channels_last: bool, fused: bool):
    from scoredistill.kernels.groupnorm_triton import group_norm_act as fused_fn

    g = torch.Generator(device="cuda").manual_seed(0)
    B, C = shape[:2]
    x = torch.randn(shape, device="cuda", generator=g).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.ones(C, device="cuda", requires_grad=True)
    bias = torch.zeros(C, device="cuda", requires_grad=True)
    params = torch.randn(B, 2 * C, 1, 1, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    dy = torch.randn_like(x)

    def forward():
        if variant == "add":
            opts = {"add": params[:, :C]}
        else:
            scale, shift = params.chunk(2, dim=1)
            opts = {"scale": scale + 1, "shift": shift}
        if fused:
            return fused_fn(x, groups, weight, bias, 1e-5, **opts, silu=True)
        return group_norm_act(x, groups, weight.to(x.dtype), bias.to(x.dtype), 1e-5, **opts, silu=True)

    def step():
        return torch.autograd.grad(forward(), [x, weight, bias, params], dy)

    return forward, step, 5 * x.numel() * x.element_size()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=RESULTS_MD)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_norms needs a CUDA device", file=sys.stderr)
        return 2
    bw = copy_bandwidth()
    columns = [
        "case", "shape", "layout", "native fwd+bwd (us)", "fused fwd+bwd (us)", "wall speed-up",
        "native graph (us)", "fused graph (us)", "graph speed-up", "fused GB/s", "% of copy BW",
        "one-pass fwd+bwd (us)", "one-pass graph (us)", "one-pass / fused, graph", "one-pass % of copy BW",
    ]  # fmt: skip
    from scoredistill.kernels import groupnorm_triton as gn

    rows = []
    for name, (shape, groups, variant) in CASES.items():
        for layout in ("NCHW", "NHWC"):
            r = {}
            for impl in ("native", "fused", "one_pass"):  # fused: the default "tiles" strategy
                previous = gn.set_strategy("one_pass" if impl == "one_pass" else "tiles")
                try:
                    _, step, nbytes = make(shape, groups, variant, layout == "NHWC", impl != "native")
                    r[f"{impl}_wall"] = time_wall(step, args.min_run_time)
                    r[f"{impl}_graph"] = time_graph(step)
                finally:
                    gn.set_strategy(previous)
            gbs, gbs1 = (nbytes / r[f"{impl}_graph"] / 1e9 for impl in ("fused", "one_pass"))
            row = [
                name, "x".join(map(str, shape)), layout, r["native_wall"] * 1e6, r["fused_wall"] * 1e6,
                r["native_wall"] / r["fused_wall"], r["native_graph"] * 1e6, r["fused_graph"] * 1e6,
                r["native_graph"] / r["fused_graph"], gbs, 100 * gbs / bw, r["one_pass_wall"] * 1e6,
                r["one_pass_graph"] * 1e6, r["one_pass_graph"] / r["fused_graph"], 100 * gbs1 / bw,
            ]  # fmt: skip
            rows.append(row)
            print_row(columns, row)
    notes = [
        f"bf16, forward + backward into x, weight, bias and the conditioning; copy bandwidth: {bw:.0f} GB/s.",
        "Native = group_norm + (add | addcmul) + silu as separate ops (EDM's composition); fused = 3 launches forward "
        "(statistics, combine, apply) and 3 backward (sums, combine, input gradient); one-pass = the `one_pass` "
        "strategy, 1 launch each way (groupnorm_triton.set_strategy). Minimum traffic counted: 5 x tensor (x, y "
        "forward; x, dy, dx backward).",
    ]
    if not args.no_write:
        write_table("bench_norms: fused group norm + conditioning + SiLU vs native, bf16", columns, rows,
                    notes=notes, md_path=args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
