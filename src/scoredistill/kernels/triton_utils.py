"""Helpers shared by the Triton kernels: launch plans, the fast launcher, arrival counters and small jit functions.

Used by `sid_triton`, `dsm_triton` (all of it) and the
network kernels (`SUPPORTED_DTYPES`, `launch`). Imports Triton: load it only where Triton runs.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

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
FAST_LAUNCH = os.environ.get("SCOREDISTILL_FAST_LAUNCH", "1") != "0"  # see launch
FLT_MAX = tl.constexpr(3.4028234663852886e38)  # constexpr: readable inside @triton.jit functions
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- Triton helpers


@triton.jit
def finite(v):
    # False for NaN (every comparison with NaN is False) and for +-inf.
    return tl.abs(v) <= FLT_MAX


@triton.jit
def softplus(z):
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)), with an accurate log1p (Goldberg's trick, no libdevice needed).
    u = tl.exp(-tl.abs(z))
    one_u = 1.0 + u
    log1p_u = tl.where(one_u == 1.0, u, tl.log(one_u) * (u / (one_u - 1.0)))
    return tl.maximum(z, 0.0) + log1p_u


@triton.jit
def sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def last_arrival(cnt_ptr):
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
def reduce_parts(part_ptr, rb, mb, B, S, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
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
def logit_row_sums(a_ptr, b_ptr, row, L, clamp_val, MODE: tl.constexpr, BLOCK_L: tl.constexpr):
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
        sa += tl.where(m, softplus(za), 0.0)
        okv = finite(va)
        if MODE == 1:
            vb = tl.load(b_ptr + base + cl, mask=m, other=0.0).to(tl.float32)
            sb += tl.where(m, softplus(vb), 0.0)
            okv = okv & finite(vb)
        bad += tl.where(okv, 0.0, 1.0)  # masked-off entries load as 0: finite
    return tl.sum(sa, axis=0), tl.sum(sb, axis=0), tl.sum(bad, axis=0)


@triton.jit
def logit_grad_factor(gl_ptr, gl_stride, gfac_ptr, okl_ptr, B, BLOCK_B: tl.constexpr):
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
def forward_plan(batch: int, numel: int, length: int, device_index: int, programs_per_sm: int) -> tuple[int, ...]:
    """``(S, chunk, BLOCK_B, BLOCK_S, BLOCK_L)`` of one forward launch (cached: no per-call arithmetic)."""
    n_blocks = max(1, triton.cdiv(numel, BLOCK))
    per_sample = max(1, min(n_blocks, triton.cdiv(programs_per_sm * _sm_count(device_index), max(batch, 1))))
    chunk = triton.cdiv(n_blocks, per_sample) * BLOCK
    splits = max(1, triton.cdiv(numel, chunk))  # >= 1: every sample has a program (numel 0 included)
    block_s = min(triton.next_power_of_2(splits), 64)
    block_b = max(1, min(triton.next_power_of_2(max(batch, 1)), FINISH_TILE // block_s))
    return splits, chunk, block_b, block_s, _block_l(length)


@functools.lru_cache(maxsize=256)
def backward_plan(batch: int, numel: int, length: int, big: bool) -> tuple[int, int, int]:
    """``(programs per sample, BLOCK_B, BLOCK_L)`` of one backward launch."""
    per_sample = max(1, triton.cdiv(numel, BLOCK)) if big else 1
    return per_sample, min(triton.next_power_of_2(max(batch, 1)), 1024), _block_l(length)


def _block_l(length: int) -> int:
    return min(triton.next_power_of_2(max(length, 1)), 1024)


_compiled: dict[tuple, object] = {}  # specialisation key -> Triton CompiledKernel


def launch(kernel, grid: tuple[int, ...], device_index: int, *args, num_warps: int = NUM_WARPS) -> None:
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


def arrival_counter(t: Tensor) -> Tensor | None:
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


class StreamingReduction(NamedTuple):
    """One forward launch of a per-sample streaming reduction (`sid_triton`, `dsm_triton`): the sizes, the launch
    plan, and the float32 buffer, laid out as the kernel's result rows ``[B]``, then its partial sums ``[P, B, S]``,
    then (with logits) its logit-row sums ``[Q, B]``."""

    batch: int
    numel: int  # elements per sample
    length: int  # logit-map elements per sample (1 without logits)
    device_index: int
    splits: int  # programs per sample, S
    chunk: int  # elements per program
    block_b: int
    block_s: int
    block_l: int
    buf: Tensor


def streaming_reduction(
    x: Tensor, logits: Tensor | None, *, results: tuple[int, int], partials: int, logit_sums: int
) -> StreamingReduction:
    """Plan the forward launch over ``x`` ``[B, ...]`` (and ``logits`` ``[B, ...]``) and allocate its buffer.

    Args:
        x: The first (dense) input; its batch, size per sample and device decide the plan.
        logits: The contiguous logit map, or ``None``.
        results: Rows of ``[B]`` results without and with logits.
        partials: Partial sums per program (rows of ``[B, S]``).
        logit_sums: Rows of ``[B]`` logit sums, with logits.
    """
    batch = x.shape[0]
    numel = x.numel() // batch if batch else 0
    length = logits.numel() // batch if logits is not None and batch else 1
    device_index = x.get_device()
    splits, chunk, block_b, block_s, block_l = forward_plan(batch, numel, length, device_index, PROGRAMS_PER_SM)
    size = (results[logits is not None] + partials * splits + (logit_sums if logits is not None else 0)) * batch
    buf = torch.empty(size, dtype=torch.float32, device=x.device)
    return StreamingReduction(batch, numel, length, device_index, splits, chunk, block_b, block_s, block_l, buf)


def launch_reduction(
    forward_kernel,
    finish_kernel,
    r: StreamingReduction,
    *,
    pointers: tuple,
    scalars: tuple,
    finish_pointers: tuple = (),
    finish_scalars: tuple = (),
    has_logits: bool,
) -> None:
    """Launch ``forward_kernel(*pointers, buf, counter, B, N, CHUNK, L, *scalars, HAS_LOGITS, FUSED, BLOCK, BLOCK_B,
    BLOCK_S, BLOCK_L)`` over ``(B, S)`` programs. With an arrival counter its last program finishes the reduction
    (one launch); without one (a first call while capturing, `ONE_LAUNCH` off) ``finish_kernel(buf,
    *finish_pointers, B, S, L, *finish_scalars, HAS_LOGITS, BLOCK_B, BLOCK_S)`` does, in a second launch."""
    if r.batch == 0:
        return
    cnt = arrival_counter(r.buf)
    launch(
        forward_kernel, (r.batch, r.splits), r.device_index,
        *pointers, r.buf, r.buf if cnt is None else cnt, r.batch, r.numel, r.chunk, r.length, *scalars,
        has_logits, cnt is not None, BLOCK, r.block_b, r.block_s, r.block_l,
    )  # fmt: skip
    if cnt is None:
        launch(
            finish_kernel, (1,), r.device_index,
            r.buf, *finish_pointers, r.batch, r.splits, r.length, *finish_scalars, has_logits, r.block_b, r.block_s,
        )  # fmt: skip


def empty_grads(*pairs: tuple[Tensor | None, bool]) -> list[Tensor | None]:
    """``torch.empty_like(t)`` for each ``(t, needed)`` pair that is needed, else ``None`` (a backward's outputs)."""
    return [torch.empty_like(t) if needed and t is not None else None for t, needed in pairs]


def dense(*ts: Tensor) -> tuple[Tensor, ...]:
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


def supported_tensors(*tensors: Tensor) -> bool:
    """Whether the fused path can take these tensors (else the caller runs the reference)."""
    dev = tensors[0].get_device()
    if dev < 0 and not _interpreting():
        return False
    return all(t.get_device() == dev and t.dtype in SUPPORTED_DTYPES for t in tensors)
