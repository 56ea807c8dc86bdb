"""Helpers shared by the Triton kernels: launch plans, the fast launcher, arrival counters and small jit functions.

Used by `sid_triton`, `dsm_triton` (all of it) and the
network kernels (`SUPPORTED_DTYPES`, `_launch`). Imports Triton: load it only where Triton runs.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

try:  # Triton >= 3.4: the runtime knobs (launch hooks) and the compiled-kernel launch signature used below
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older Triton: always launch through the JIT
    _knobs = None

BLOCK = 1024  # elements per inner step of the streaming kernels
NUM_WARPS = 4
PROGRAMS_PER_SM = 4  # target occupancy of the forward split: about this many programs per SM over the whole batch
FINISH_TILE = 1024  # elements of one [rows, partials] tile of the finishing step (keeps its registers small)
ONE_LAUNCH = True  # forward in one launch (arrival counter); False: a second tiny launch finishes the reduction
COUNTER_SLOTS = 64  # arrival counters per device (one per CUDA stream that runs the kernels)
FAST_LAUNCH = os.environ.get("SCOREDISTILL_FAST_LAUNCH", "1") != "0"  # see _launch
FLT_MAX = tl.constexpr(3.4028234663852886e38)  # constexpr: readable inside @triton.jit functions
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- Triton helpers


@triton.jit
def _finite(v):
    # False for NaN (every comparison with NaN is False) and for +-inf.
    return tl.abs(v) <= FLT_MAX


@triton.jit
def _softplus(z):
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)), with an accurate log1p (Goldberg's trick, no libdevice needed).
    u = tl.exp(-tl.abs(z))
    one_u = 1.0 + u
    log1p_u = tl.where(one_u == 1.0, u, tl.log(one_u) * (u / (one_u - 1.0)))
    return tl.maximum(z, 0.0) + log1p_u


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _last_arrival(cnt_ptr):
    """True in exactly one program: the last of the grid to get here (the others' stores are then visible).

    Every thread's stores are ordered before the counter's release by the barrier (the CUTLASS semaphore pattern);
    the last program resets the counter to 0 for the next launch.
    """
    tl.debug_barrier()
    total = tl.num_programs(0) * tl.num_programs(1)
    arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    last = arrived == total - 1
    if last:
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    return last


@triton.jit
def _reduce_parts(part_ptr, rb, mb, B, S, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per row of ``rb``: the sums over ``S`` of partial buffers 0, 1 (and 2 when ``K == 3``), in a fixed order."""
    p0 = tl.zeros([BLOCK_B], dtype=tl.float32)
    p1 = tl.zeros([BLOCK_B], dtype=tl.float32)
    p2 = tl.zeros([BLOCK_B], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        cs = s0 + tl.arange(0, BLOCK_S)
        m2 = mb[:, None] & (cs < S)[None, :]
        offs = rb[:, None] * S + cs[None, :]
        # .cg: read through to L2, never a stale L1 line (the partials come from other programs of this launch).
        p0 += tl.sum(tl.load(part_ptr + offs, mask=m2, other=0.0, cache_modifier=".cg"), axis=1)
        p1 += tl.sum(tl.load(part_ptr + B * S + offs, mask=m2, other=0.0, cache_modifier=".cg"), axis=1)
        if K == 3:
            p2 += tl.sum(tl.load(part_ptr + 2 * B * S + offs, mask=m2, other=0.0, cache_modifier=".cg"), axis=1)
    return p0, p1, p2


@triton.jit
def _logit_row_sums(a_ptr, b_ptr, row, L, clamp_val, MODE: tl.constexpr, BLOCK_L: tl.constexpr):
    """One row of the logit map(s): sums of the softplus terms and the count of non-finite values.

    MODE 0 (SiDA generator): ``softplus(-clamp(a, -c, c))``; MODE 1 (discriminator): ``softplus(-a)`` and
    ``softplus(b)``.
    """
    base = row.to(tl.int64) * L
    sa = tl.zeros([BLOCK_L], dtype=tl.float32)
    sb = tl.zeros([BLOCK_L], dtype=tl.float32)
    bad = tl.zeros([BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        cl = l0 + tl.arange(0, BLOCK_L)
        m = cl < L
        va = tl.load(a_ptr + base + cl, mask=m, other=0.0).to(tl.float32)
        if MODE == 0:  # noqa: SIM108 (constexpr branch inside a Triton kernel)
            za = -tl.minimum(tl.maximum(va, -clamp_val), clamp_val)
        else:
            za = -va
        sa += tl.where(m, _softplus(za), 0.0)
        okv = _finite(va)
        if MODE == 1:
            vb = tl.load(b_ptr + base + cl, mask=m, other=0.0).to(tl.float32)
            sb += tl.where(m, _softplus(vb), 0.0)
            okv = okv & _finite(vb)
        bad += tl.where(okv, 0.0, 1.0)  # masked-off entries load as 0: finite
    return tl.sum(sa, axis=0), tl.sum(sb, axis=0), tl.sum(bad, axis=0)


@triton.jit
def _logit_grad_factor(gl_ptr, gl_stride, gfac_ptr, okl_ptr, B, BLOCK_B: tl.constexpr):
    """``sum_i [ok_i] g_i gfac_i`` over the whole batch (the same fixed order in every program that needs it)."""
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        g = tl.load(gl_ptr + rb.to(tl.int64) * gl_stride, mask=mb, other=0.0).to(tl.float32)
        gf = tl.load(gfac_ptr + rb, mask=mb, other=0.0)
        ok = tl.load(okl_ptr + rb, mask=mb, other=0.0) > 0.0
        acc += tl.where(ok, g * gf, 0.0)
    return tl.sum(acc, axis=0)


# ------------------------------------------------------------------------------------------------ SiD kernels
# Buffer (float32): sid [B] | w [B] | (adv [B] | gfac [B] | okl [B])? | partials [3, B, S] | (logit sums [2, B])?
# gfac_i = okl_i numel w_i / (n L) (n = kept logit rows), okl_i = 1.0 where row i of the logits is finite.


# ------------------------------------------------------------------------------------------------ host helpers


@functools.cache
def _sm_count(device_index: int) -> int:
    if device_index >= 0:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 8  # the Triton interpreter on CPU: keep the grid small


@functools.lru_cache(maxsize=256)
def _fwd_plan(batch: int, numel: int, length: int, device_index: int, programs_per_sm: int) -> tuple[int, ...]:
    """``(S, chunk, BLOCK_B, BLOCK_S, BLOCK_L)`` of one forward launch (cached: no per-call arithmetic)."""
    n_blocks = max(1, triton.cdiv(numel, BLOCK))
    per_sample = max(1, min(n_blocks, triton.cdiv(programs_per_sm * _sm_count(device_index), max(batch, 1))))
    chunk = triton.cdiv(n_blocks, per_sample) * BLOCK
    splits = max(1, triton.cdiv(numel, chunk))  # >= 1: every sample has a program (numel 0 included)
    block_s = min(triton.next_power_of_2(splits), 64)
    block_b = max(1, min(triton.next_power_of_2(max(batch, 1)), FINISH_TILE // block_s))
    return splits, chunk, block_b, block_s, _block_l(length)


@functools.lru_cache(maxsize=256)
def _bwd_plan(batch: int, numel: int, length: int, big: bool) -> tuple[int, int, int]:
    """``(programs per sample, BLOCK_B, BLOCK_L)`` of one backward launch."""
    per_sample = max(1, triton.cdiv(numel, BLOCK)) if big else 1
    return per_sample, min(triton.next_power_of_2(max(batch, 1)), 1024), _block_l(length)


def _block_l(length: int) -> int:
    return min(triton.next_power_of_2(max(length, 1)), 1024)


_compiled: dict[tuple, object] = {}  # specialisation key -> Triton CompiledKernel


def _launch(kernel, grid: tuple[int, ...], device_index: int, *args, num_warps: int = NUM_WARPS) -> None:
    """``kernel[grid](*args)`` (constexprs positional, in declaration order), minus the JIT's per-call dispatch.

    The first launch for a specialisation key goes through the JIT (compiling if needed); later ones call the
    compiled kernel directly, which saves about 15 us of host time per launch on an H100 host. The key holds
    everything the JIT specialises on here: the device, every tensor's dtype and 16-byte alignment, and every
    other argument's value (ints: the == 1 and divisibility-by-16 specialisations; constexprs). Off on CPU (the
    interpreter), with ``SCOREDISTILL_FAST_LAUNCH=0``, and while a Triton launch hook (a profiler) is installed.
    """
    if device_index < 0 or not FAST_LAUNCH or _knobs is None or _knobs.runtime.launch_enter_hook is not None:
        kernel[grid](*args, num_warps=num_warps)
        return
    specs = [(a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, Tensor) else a for a in args]
    key = (kernel, device_index, num_warps, *specs)
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, num_warps=num_warps)
        if compiled is not None and not hasattr(compiled, "result"):  # not an async-compile future
            if len(_compiled) >= 4096:
                _compiled.clear()
            _compiled[key] = compiled
        return
    stream = torch._C._cuda_getCurrentRawStream(device_index)
    grid_y = grid[1] if len(grid) > 1 else 1
    grid_z = grid[2] if len(grid) > 2 else 1
    compiled.run(
        grid[0], grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, None, None, None, *args,
    )  # fmt: skip


_counters: dict[int, Tensor] = {}  # device index -> int32 [COUNTER_SLOTS], zero between launches
_counter_slots: dict[tuple[int, int], Tensor] = {}  # (device index, raw stream) -> one slot


def _counter(t: Tensor) -> Tensor | None:
    """The arrival counter of the one-launch forward for ``t``'s device and current stream, or ``None``.

    Each stream gets its own slot, so kernels running concurrently on different streams never share a counter; a
    slot is zero before and after every launch (the last program resets it), also under CUDA-graph replay. The
    slots are allocated once per device, outside any graph capture: a first call while capturing (or more than
    `COUNTER_SLOTS` streams) returns ``None`` and the caller finishes with a second launch instead. Graphs
    captured on one stream and replayed concurrently on several share that stream's slot: don't.
    """
    if not ONE_LAUNCH:
        return None
    index = t.get_device()
    if index < 0:  # the interpreter on CPU: programs run one after another
        return torch.zeros(1, dtype=torch.int32)
    key = (index, torch._C._cuda_getCurrentRawStream(index))
    slot = _counter_slots.get(key)
    if slot is not None:
        return slot
    pool = _counters.get(index)
    if pool is None:
        if torch.cuda.is_current_stream_capturing():
            return None
        pool = _counters[index] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=t.device)
    used = sum(1 for k in _counter_slots if k[0] == index)
    if used >= COUNTER_SLOTS:
        return None
    slot = _counter_slots[key] = pool[used : used + 1]
    return slot


def _dense(*ts: Tensor) -> tuple[Tensor, ...]:
    """The tensors as they are when they share one dense layout with whole samples in contiguous blocks
    (contiguous or channels_last, identical strides); else contiguous copies. The kernels index raw memory as
    ``b * N + j``: the order of the elements inside a sample does not change any per-sample sum."""
    t0 = ts[0]
    st = t0.stride()
    if all(t.stride() == st for t in ts[1:]) and (
        t0.is_contiguous() or t0.is_contiguous(memory_format=torch.channels_last)
    ):
        return ts
    return tuple(t.contiguous() for t in ts)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _supported(*tensors: Tensor) -> bool:
    """Whether the fused path can take these tensors (else the caller runs the reference)."""
    dev = tensors[0].get_device()
    if dev < 0 and not _interpreting():
        return False
    return all(t.get_device() == dev and t.dtype in SUPPORTED_DTYPES for t in tensors)
