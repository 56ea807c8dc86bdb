"""Fused Triton kernels for SiD's generator loss and SiDA's generator adversarial term.

The public function :func:`sid_generator_terms` has exactly the contract of
:func:`scoredistill.losses.functional.sid_generator_terms` (the reference): same inputs, same ``[B]`` float32
outputs, same gradients, same masking of non-finite samples. What changes is the memory traffic and the number of
launches: one kernel launch each way, whatever the options.

* forward, one pass over ``x_g``, ``d_real``, ``d_fake``: every sample is split over several programs (so that a
  batch of 32 CIFAR-10 images still fills the GPU), each writing three partial sums (``sum |x_g - d_real|``,
  ``sum delta (a - alpha delta)`` with ``delta = d_real - d_fake`` and ``a = d_real - x_g``, and a count of
  non-finite values) into a small buffer. The first program of each sample also reduces that sample's row of the
  ``[B, 1, h, w]`` logit map (the SiDA term), so the logits cost no extra launch and are spread over ``B``
  programs. The last program to finish (an arrival counter, see :func:`_counter`) reduces all partials in a fixed
  order (deterministic: the order never depends on which program came last), applies the L1 normaliser
  ``w = 1 / max(mean |x_g - d_real|, 1e-5)``, the mask and the batch mean of the adversarial term.
* backward, one pass reading the three inputs and writing the three gradients (in the inputs' dtypes):
  ``dL/dx_g = -w delta``, ``dL/dd_real = w ((a - alpha delta) + (1 - alpha) delta)``,
  ``dL/dd_fake = w (2 alpha delta - a)``, each times the incoming gradient, and exactly 0 for masked samples.
  The first program of each sample also writes that sample's logit gradient; the batch-wide factor it needs
  (``sum_i g_i coef_i``) is ``B`` multiply-adds that every such program recomputes in the same order.

Nothing synchronises with the host: the mask lives in the weights, never in a Python branch. Inputs that are
contiguous or channels_last (all with one layout) are read in place; the per-sample sums do not depend on the
order of the elements inside a sample.

The helpers prefixed ``_`` here are shared with :mod:`scoredistill.kernels.dsm_triton`.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..losses import functional as ref

try:  # Triton >= 3.4: the runtime knobs (launch hooks) and the compiled-kernel launch signature used below
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older Triton: always launch through the JIT
    _knobs = None

__all__ = ["sid_generator_terms"]

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


@triton.jit
def _sid_finish(
    buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    lsum_ptr = part_ptr + 3 * B * S
    loss = 0.0
    n = 1.0
    if HAS_LOGITS:
        # Pass 1: the batch mean over kept rows of the per-row mean softplus term.
        tot = tl.zeros([BLOCK_B], dtype=tl.float32)
        nok = tl.zeros([BLOCK_B], dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rb = b0 + tl.arange(0, BLOCK_B)
            mb = rb < B
            sa = tl.load(lsum_ptr + rb, mask=mb, other=0.0, cache_modifier=".cg")
            okl = mb & (tl.load(lsum_ptr + B + rb, mask=mb, other=1.0, cache_modifier=".cg") == 0.0)
            tot += tl.where(okl, sa / L, 0.0)
            nok += tl.where(okl, 1.0, 0.0)
        n = tl.maximum(tl.sum(nok, axis=0), 1.0)
        loss = tl.sum(tot, axis=0) / n
    # Pass 2: per sample, w, the SiD loss and (with logits) the adversarial term.
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < B
        l1, sid, bad = _reduce_parts(part_ptr, rb, mb, B, S, 3, BLOCK_B, BLOCK_S)
        ok = bad == 0.0
        w = tl.where(ok, 1.0 / tl.maximum(l1 * inv_n, floor), 0.0)
        tl.store(buf_ptr + rb, tl.where(ok, sid * w, 0.0), mask=mb)
        tl.store(buf_ptr + B + rb, w, mask=mb)
        if HAS_LOGITS:
            okl = tl.load(lsum_ptr + B + rb, mask=mb, other=1.0, cache_modifier=".cg") == 0.0
            coef = numel_f * w
            tl.store(buf_ptr + 2 * B + rb, tl.where(okl, coef * loss, 0.0), mask=mb)
            tl.store(buf_ptr + 3 * B + rb, tl.where(okl, coef / n / L, 0.0), mask=mb)
            tl.store(buf_ptr + 4 * B + rb, tl.where(okl, 1.0, 0.0), mask=mb)


@triton.jit
def _sid_fwd_kernel(
    xg_ptr,
    dr_ptr,
    df_ptr,
    lg_ptr,
    buf_ptr,
    cnt_ptr,
    B,
    N,
    CHUNK,
    L,
    alpha,
    inv_n,
    floor,
    numel_f,
    clamp_val,
    HAS_LOGITS: tl.constexpr,
    FUSED: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1)
    S = tl.num_programs(1)
    row = b.to(tl.int64) * N
    start = s * CHUNK
    acc_l1 = tl.zeros([BLOCK], dtype=tl.float32)
    acc_sid = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bad = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < N
        x = tl.load(xg_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        r = tl.load(dr_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        f = tl.load(df_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        a = r - x
        delta = r - f
        acc_l1 += tl.abs(a)
        acc_sid += delta * (a - alpha * delta)
        ok = _finite(x) & _finite(r) & _finite(f)
        acc_bad += tl.where(ok, 0.0, 1.0)
    part_ptr = buf_ptr + (5 * B if HAS_LOGITS else 2 * B)
    base = b * S + s
    tl.store(part_ptr + base, tl.sum(acc_l1, axis=0))
    tl.store(part_ptr + B * S + base, tl.sum(acc_sid, axis=0))
    tl.store(part_ptr + 2 * B * S + base, tl.sum(acc_bad, axis=0))
    if HAS_LOGITS:  # noqa: SIM102 (constexpr test, then a runtime one)
        if s == 0:
            lsum_ptr = part_ptr + 3 * B * S
            sa, _sb, lbad = _logit_row_sums(lg_ptr, lg_ptr, b, L, clamp_val, 0, BLOCK_L)
            tl.store(lsum_ptr + b, sa)
            tl.store(lsum_ptr + B + b, lbad)
    if FUSED:  # noqa: SIM102 (constexpr test, then a runtime one)
        if _last_arrival(cnt_ptr):
            _sid_finish(buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _sid_finish_kernel(
    buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr
):
    _sid_finish(buf_ptr, B, S, L, inv_n, floor, numel_f, HAS_LOGITS, BLOCK_B, BLOCK_S)


@triton.jit
def _sid_bwd_kernel(
    xg_ptr,
    dr_ptr,
    df_ptr,
    lg_ptr,
    buf_ptr,
    gs_ptr,
    gs_stride,
    ga_ptr,
    ga_stride,
    gx_ptr,
    gr_ptr,
    gf_ptr,
    glg_ptr,
    B,
    N,
    L,
    alpha,
    clamp_val,
    GX: tl.constexpr,
    GR: tl.constexpr,
    GF: tl.constexpr,
    GL: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    if GX or GR or GF:
        idx = blk * BLOCK + tl.arange(0, BLOCK)
        m = idx < N
        row = b.to(tl.int64) * N
        w = tl.load(buf_ptr + B + b)
        ok = w > 0.0  # w is 0 exactly for masked samples (and positive for every kept one)
        scale = tl.load(gs_ptr + b.to(tl.int64) * gs_stride).to(tl.float32) * w
        x = tl.load(xg_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        r = tl.load(dr_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        f = tl.load(df_ptr + row + idx, mask=m, other=0.0).to(tl.float32)
        a = r - x
        delta = r - f
        if GX:
            gx = tl.where(ok, -scale * delta, 0.0)
            tl.store(gx_ptr + row + idx, gx.to(gx_ptr.dtype.element_ty), mask=m)
        if GR:
            gr = tl.where(ok, scale * ((a - alpha * delta) + (1.0 - alpha) * delta), 0.0)
            tl.store(gr_ptr + row + idx, gr.to(gr_ptr.dtype.element_ty), mask=m)
        if GF:
            gf = tl.where(ok, scale * (2.0 * alpha * delta - a), 0.0)
            tl.store(gf_ptr + row + idx, gf.to(gf_ptr.dtype.element_ty), mask=m)
    if GL:  # noqa: SIM102 (constexpr test, then a runtime one)
        if blk == 0:
            big_g = _logit_grad_factor(ga_ptr, ga_stride, buf_ptr + 3 * B, buf_ptr + 4 * B, B, BLOCK_B)
            keep = tl.load(buf_ptr + 4 * B + b) > 0.0
            lbase = b.to(tl.int64) * L
            for l0 in range(0, L, BLOCK_L):
                cl = l0 + tl.arange(0, BLOCK_L)
                ml = cl < L
                va = tl.load(lg_ptr + lbase + cl, mask=ml, other=0.0).to(tl.float32)
                inside = (va >= -clamp_val) & (va <= clamp_val)  # clamp's gradient: 1 inside [-c, c] (inclusive)
                ca = tl.minimum(tl.maximum(va, -clamp_val), clamp_val)
                gl = tl.where(keep, tl.where(inside, big_g * -_sigmoid(-ca), 0.0), 0.0)
                tl.store(glg_ptr + lbase + cl, gl.to(glg_ptr.dtype.element_ty), mask=ml)


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
    :data:`COUNTER_SLOTS` streams) returns ``None`` and the caller finishes with a second launch instead. Graphs
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


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must share one shape [B, ...], got {shapes}")


# --------------------------------------------------------------------------------------- autograd.Function


class _SiDFunction(torch.autograd.Function):
    """``(x_g, d_real, d_fake, logits | None) -> (sid [B], w [B][, adv [B]])``; ``w`` carries no gradient."""

    @staticmethod
    def forward(ctx, x_g: Tensor, d_real: Tensor, d_fake: Tensor, logits: Tensor | None, alpha: float):
        x, r, f = _dense(x_g, d_real, d_fake)
        batch = x.shape[0]
        numel = x.numel() // batch if batch else 0
        has_l = logits is not None
        lg = logits.contiguous() if has_l else None
        length = lg.numel() // batch if has_l and batch else 1
        dev = x.get_device()
        splits, chunk, block_b, block_s, block_l = _fwd_plan(batch, numel, length, dev, PROGRAMS_PER_SM)
        n_out = 5 * batch if has_l else 2 * batch
        n_part = 3 * batch * splits + (2 * batch if has_l else 0)
        buf = torch.empty(n_out + n_part, dtype=torch.float32, device=x.device)
        if batch > 0:
            cnt = _counter(x)
            inv_n = 1.0 / max(numel, 1)
            _launch(
                _sid_fwd_kernel, (batch, splits), dev,
                x, r, f, lg if has_l else x, buf, buf if cnt is None else cnt,
                batch, numel, chunk, length, alpha, inv_n, ref.L1_FLOOR, float(numel), ref.LOGIT_CLAMP,
                has_l, cnt is not None, BLOCK, block_b, block_s, block_l,
            )  # fmt: skip
            if cnt is None:
                _launch(
                    _sid_finish_kernel, (1,), dev,
                    buf, batch, splits, length, inv_n, ref.L1_FLOOR, float(numel), has_l, block_b, block_s,
                )  # fmt: skip
        ctx.save_for_backward(x, r, f, lg, buf)
        ctx.alpha = alpha
        ctx.set_materialize_grads(False)
        if has_l:
            sid, w, adv, _ = buf.split((batch, batch, batch, n_part + 2 * batch))
            ctx.mark_non_differentiable(w)
            return sid, w, adv
        sid, w, _ = buf.split((batch, batch, n_part))
        ctx.mark_non_differentiable(w)
        return sid, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sid: Tensor | None, _g_w: Tensor | None, g_adv: Tensor | None = None):
        x, r, f, lg, buf = ctx.saved_tensors
        need_x, need_r, need_f, need_l = ctx.needs_input_grad[:4]
        big = g_sid is not None
        need_x, need_r, need_f = need_x and big, need_r and big, need_f and big
        need_l = need_l and g_adv is not None
        gx = torch.empty_like(x) if need_x else None
        gr = torch.empty_like(r) if need_r else None
        gf = torch.empty_like(f) if need_f else None
        gl = torch.empty_like(lg) if need_l else None
        batch = x.shape[0]
        if batch > 0 and (need_x or need_r or need_f or need_l):
            numel = x.numel() // batch
            length = lg.numel() // batch if lg is not None else 1
            any_big = need_x or need_r or need_f
            per_sample, block_b, block_l = _bwd_plan(batch, numel, length, any_big)
            g_big = g_sid if any_big else buf
            g_l = g_adv if need_l else buf
            _launch(
                _sid_bwd_kernel, (batch, per_sample), x.get_device(),
                x, r, f, x if lg is None else lg, buf,
                g_big, g_big.stride(0), g_l, g_l.stride(0),
                x if gx is None else gx, r if gr is None else gr, f if gf is None else gf, buf if gl is None else gl,
                batch, numel, length, ctx.alpha, ref.LOGIT_CLAMP,
                need_x, need_r, need_f, need_l, BLOCK, block_b, block_l,
            )  # fmt: skip
        return gx, gr, gf, gl, None


# ------------------------------------------------------------------------------------------------- public API


def sid_generator_terms(
    x_g: Tensor, d_real: Tensor, d_fake: Tensor, *, alpha: float, logits_fake: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fused :func:`scoredistill.losses.functional.sid_generator_terms` (same contract, same maths).

    Args:
        x_g: Generator samples ``[B, ...]`` (float32, bfloat16 or float16; any strides).
        d_real: Teacher's denoised estimate at ``x_t``, same shape.
        d_fake: Fake score's denoised estimate at ``x_t``, same shape.
        alpha: SiD's alpha.
        logits_fake: ``[B, ...]`` discriminator logits at ``x_t`` (``[B, 1, h, w]``), or ``None``.

    Returns:
        ``(sid, weight, adv)``, each ``[B]`` float32: the SiD loss per sample (pixel sum, times the L1 weight),
        the L1 weight itself (no gradient; 0 on masked samples) and, when logits are given, the adversarial
        generator term ``numel * w_i * mean softplus(-clamp(logits, -10, 10))`` (else ``None``). Gradients flow
        into ``x_g``, ``d_real``, ``d_fake`` and ``logits_fake`` in their own dtypes. Inputs the kernels do not
        take (float64, CPU without ``TRITON_INTERPRET=1``) run the reference instead.
    """
    if not (x_g.shape == d_real.shape == d_fake.shape):
        _check_same_shape(x_g=x_g, d_real=d_real, d_fake=d_fake)
    if logits_fake is None:
        if not _supported(x_g, d_real, d_fake) or x_g.dim() < 1:
            return ref.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha)
        sid, weight = _SiDFunction.apply(x_g, d_real, d_fake, None, float(alpha))
        return sid, weight, None
    if not _supported(x_g, d_real, d_fake, logits_fake) or x_g.dim() < 1:
        return ref.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha, logits_fake=logits_fake)
    if logits_fake.shape[0] != x_g.shape[0]:
        raise ValueError(f"logits_fake must have batch {x_g.shape[0]}, got {tuple(logits_fake.shape)}")
    return _SiDFunction.apply(x_g, d_real, d_fake, logits_fake, float(alpha))
