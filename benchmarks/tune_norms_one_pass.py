"""Sweep the one-pass group norm's tilings on this GPU: the data behind ``groupnorm_triton._one_pass_tiles``.

For each of bench_norms' shapes (channels_last, the fast path's layout), times forward + backward of the one-pass
strategy (device time, CUDA-graph replay) over ``(block_hw, block_c, num_warps)`` and prints the best three beside
the current rule's time and the tiled strategy's. Writes nothing: the rule is edited by hand from this output.

    python benchmarks/tune_norms_one_pass.py      # compiles in 8 processes first, then times each variant
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_losses import time_graph
from bench_norms import CASES, make
from tune_norms import compile_in_workers

import scoredistill.kernels.groupnorm_triton as gn


def candidates(C: int, HW: int, cg: int) -> list[tuple[int, int, int, bool]]:
    """Tiles of 32-256 pixels by 16-64 channels (at least one whole group), 2, 4 or 8 warps, channel blocks first."""
    out = []
    for hw in (32, 64, 128, 256):
        for c in (16, 32, 64):
            if c < cg or c > max(triton.next_power_of_2(C), 16) or hw > max(triton.next_power_of_2(HW), 32):
                continue
            out += [(hw, c, w, True) for w in (2, 4, 8)]
    return out


DEFAULT = gn._one_pass_tiles  # the current rule


def _use(cand) -> None:
    """Run the one-pass strategy with tiling ``cand`` (``None``: the current rule)."""
    gn._one_pass_tiles = DEFAULT if cand is None else (lambda C, HW, cg, nhwc: cand)
    gn._one_pass_plan.cache_clear()
    gn.set_strategy("one_pass")


def _warm(tasks: list[tuple[str, tuple[int, int, int, bool]]]) -> int:
    """Compile (into Triton's on-disk cache) and run once: a worker process's share of the sweep."""
    for name, cand in tasks:
        shape, groups, variant = CASES[name]
        _use(cand)
        make(shape, groups, variant, True, True)[1]()
    torch.cuda.synchronize()
    return len(tasks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated names of bench_norms.CASES")
    p.add_argument("--workers", type=int, default=8, help="processes compiling the variants first")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_norms_one_pass needs a CUDA device", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    names = args.cases.split(",")
    sweep = {}
    for name in names:
        shape, groups, _ = CASES[name]
        sweep[name] = candidates(shape[1], shape[2] * shape[3], shape[1] // groups)
    if args.workers > 1:  # compile every variant in parallel first; the timing loop then loads them from disk
        tasks = [(name, c) for name in names for c in sweep[name]]
        done = compile_in_workers(_warm, tasks, args.workers)
        print(f"compiled {done} variants in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in names:
        shape, groups, variant = CASES[name]
        gn.set_strategy("tiles")
        tiled = time_graph(make(shape, groups, variant, True, True)[1], iters=30)
        times = {}
        for cand in [None, *sweep[name]]:
            _use(cand)
            times[cand] = time_graph(make(shape, groups, variant, True, True)[1], iters=30)
        _use(None)
        gn.set_strategy("tiles")
        top = sorted((t, c) for c, t in times.items() if c is not None)[:3]
        ranked = ", ".join(f"{c[:3]} {t * 1e6:.1f}" for t, c in top)
        print(
            f"{name:<34} NHWC  tiles {tiled * 1e6:7.1f} us   one-pass rule {times[None] * 1e6:7.1f} us   "
            f"best (block_hw, block_c, warps): {ranked} us ({tiled / top[0][0]:.2f}x the tiles)   "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
