"""Sweep the fused group norm's tilings on this GPU: the data behind ``groupnorm_triton._tiles``.

For each of bench_norms' shapes and both layouts, times forward + backward (device time, CUDA-graph replay) with
the forward's tiling swept while the backward keeps the default, then the other way round, and prints the best
three ``(block_hw, block_c, num_warps, cb_first)`` of each pass beside the default's time. Writes nothing: the rule
in ``_tiles`` is edited by hand from this output (so the library carries no tuning step and no tuning cache).

    python benchmarks/tune_norms.py            # about 1 minute on an H100, compiling in 8 processes first
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_losses import time_graph
from bench_norms import CASES, make

import scoredistill.kernels.groupnorm_triton as gn


def candidates(C: int, HW: int, nhwc: bool) -> list[tuple[int, int, int]]:
    if nhwc:
        pairs = [(hw, c) for hw in (16, 32, 64, 128) for c in (32, 64, 128, 256)]
    else:
        pairs = [(hw, c) for hw in (64, 128, 256, 512) for c in (4, 8, 16, 32, 64)]
    out = []
    for hw, c in pairs:
        if not 1024 <= hw * c <= 8192 or c > max(triton.next_power_of_2(C), 4) or hw > triton.next_power_of_2(HW):
            continue
        if triton.cdiv(HW, hw) > gn.MAX_TILES_HW:
            continue
        out += [(hw, c, 4, False), (hw, c, 8, False), (hw, c, 4, True)]
    return out


def _patch(cand, direction: str, default_tiles) -> None:
    def tiles(C, HW, nhwc, backward):
        if cand is not None and backward == (direction == "backward"):
            return cand
        return default_tiles(C, HW, nhwc, backward)

    gn._tiles = tiles
    gn._plan.cache_clear()


def _warm(tasks: list[tuple[str, bool, str, tuple[int, int, int]]]) -> int:
    """Compile (into Triton's on-disk cache) and run once: a worker process's share of the sweep."""
    default_tiles = gn._tiles
    for name, nhwc, direction, cand in tasks:
        shape, groups, variant = CASES[name]
        _patch(cand, direction, default_tiles)
        make(shape, groups, variant, nhwc, True)[1]()
    torch.cuda.synchronize()
    return len(tasks)


def compile_in_workers(warm, tasks: list, workers: int) -> int:
    """Run ``warm`` over ``tasks`` split among ``workers`` spawned processes (Triton compiles into its on-disk
    cache, so the timing loop that follows loads the kernels); the number of tasks done."""
    chunks = [tasks[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return sum(pool.map(warm, chunks))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated names of bench_norms.CASES")
    p.add_argument("--workers", type=int, default=8, help="processes compiling the variants first")
    p.add_argument("--jsonl", type=Path, default=None, help="also append one JSON line per timing here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_norms needs a CUDA device", file=sys.stderr)
        return 2
    default_tiles = gn._tiles
    t0 = time.perf_counter()
    names = args.cases.split(",")
    if args.workers > 1:  # compile every variant in parallel first; the timing loop then loads them from disk
        tasks = []
        for name in names:
            shape = CASES[name][0]
            for nhwc in (True, False):
                for direction in ("forward", "backward"):
                    tasks += [(name, nhwc, direction, c) for c in candidates(shape[1], shape[2] * shape[3], nhwc)]
        done = compile_in_workers(_warm, tasks, args.workers)
        print(f"compiled {done} variants in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in names:
        shape, groups, variant = CASES[name]
        C, HW = shape[1], shape[2] * shape[3]
        for nhwc in (True, False):
            layout = "NHWC" if nhwc else "NCHW"
            results = {}
            for direction in ("forward", "backward"):
                for cand in [None, *candidates(C, HW, nhwc)]:
                    _patch(cand, direction, default_tiles)
                    _, step, _ = make(shape, groups, variant, nhwc, True)
                    t = time_graph(step, iters=30)
                    results[(direction, cand)] = t
                    if args.jsonl:
                        with args.jsonl.open("a") as f:
                            rec = {"case": name, "layout": layout, "direction": direction, "tiles": cand, "s": t}
                            f.write(json.dumps(rec) + "\n")
            gn._tiles = default_tiles
            gn._plan.cache_clear()
            base = results[("forward", None)]
            line = [f"{name:<34} {layout}  default fwd+bwd {base * 1e6:7.1f} us"]
            for direction in ("forward", "backward"):
                timed = [(t, c) for (d, c), t in results.items() if d == direction and c is not None and t]
                top = sorted(timed)[:3]
                ranked = ", ".join(f"{c} {t * 1e6:.1f}" for t, c in top)
                line.append(f"best {direction}: {ranked} us ({base / top[0][0]:.2f}x)")
            print("   ".join(line), f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
