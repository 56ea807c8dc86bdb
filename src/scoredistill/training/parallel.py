"""Data parallelism for the distillation loop: identical replicas, gradients averaged in buckets during backward.

Every process holds full copies of the generator, the fake score and the teacher and draws its own noise. After
each phase's backward the gradients are averaged over the processes, so every optimiser step, and with it every
parameter and the EMA, stays bit-identical across ranks
([`assert_replicas_identical`][scoredistill.training.parallel.assert_replicas_identical] checks it).

Why not ``DistributedDataParallel``: the two trained networks take turns. The generator also runs frozen under
``no_grad`` in the fake-score phase, the fake score runs frozen (``requires_grad_(False)``) in the generator
phase, and the EMA and the teacher are never trained. DDP expects every forward of a wrapped module to be followed
by a backward through its parameters (or ``find_unused_parameters``, which costs a graph traversal per step) and
synchronises buffers on each forward. [`GradientAverager`][scoredistill.training.parallel.GradientAverager] does what
DDP's
reducer does for this loop: buckets of about 25 MB in reverse registration order (the order backward produces them),
each all-reduced as soon as its last gradient has been accumulated, while the rest of the backward pass runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["GradientAverager", "assert_replicas_identical", "broadcast_modules"]


def flat_cat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors' elements in one new 1-D tensor, one after another (each in its logical order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def copy_from_flat(tensors: Sequence[Tensor], flat: Tensor) -> None:
    """Copy `flat_cat`'s layout back into ``tensors`` (in place, with one multi-tensor copy)."""
    parts = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(list(tensors), [f.view(t.shape) for f, t in zip(parts, tensors, strict=True)])


def broadcast_modules(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Copy every parameter and buffer of ``modules`` from rank ``src`` to all processes (in place)."""
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            with torch.no_grad():
                dist.broadcast(t.data, src)


def _bits(t: Tensor) -> Tensor:
    """The tensor's bytes as integers, so that comparisons are bitwise (NaN payloads and -0.0 included)."""
    t = t.detach().contiguous().flatten()
    if t.element_size() == 8:
        return t.view(torch.int64)
    if t.element_size() == 4:
        return t.view(torch.int32)
    return t.view(torch.int16).to(torch.int32) if t.element_size() == 2 else t.to(torch.int32)


def assert_replicas_identical(modules: dict[str, nn.Module]) -> None:
    """Raise unless every parameter and buffer of ``modules`` is bit-identical on all processes.

    Each tensor's bits are reduced with MAX and MIN over the processes; they agree exactly when all ranks hold
    the same bits. Every process must call this (it runs collectives).

    Args:
        modules: Named modules to compare, e.g. ``{"generator": G, "fake_score": f, "generator_ema": ema}``.

    Raises:
        RuntimeError: Naming the first tensors that differ between ranks.
    """
    differ = []
    for name, module in modules.items():
        for key, t in list(module.named_parameters()) + list(module.named_buffers()):
            hi = _bits(t).clone()
            lo = hi.clone()
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            if not torch.equal(hi, lo):
                differ.append(f"{name}.{key}")
    if differ:
        raise RuntimeError(f"{len(differ)} tensors differ between ranks, e.g. {differ[:5]}")


class GradientAverager:
    """Average the gradients of ``params`` over all processes, in buckets launched from the backward pass.

    Between [`arm`][scoredistill.training.parallel.GradientAverager.arm] and
    [`finish`][scoredistill.training.parallel.GradientAverager.finish], a hook on each parameter counts accumulated
    gradients;
    when a bucket is complete it is flattened and all-reduced asynchronously (buckets are launched strictly in order, so
    every rank issues the same collectives in the same order).
    [`finish`][scoredistill.training.parallel.GradientAverager.finish]
    launches any bucket whose parameters received no gradient this phase, waits for all of them and writes the averages
    back. Nothing here reads a value on the host, so the whole exchange can be captured in a CUDA graph (NCCL).

    Args:
        params: The parameters one optimiser steps.
        world: Number of processes.
        bucket_bytes: Bucket size in bytes (gradients are grouped in reverse order up to this size).
    """

    def __init__(self, params: Sequence[nn.Parameter], world: int, *, bucket_bytes: int = 25 * 2**20):
        self.world = world
        self.buckets: list[list[nn.Parameter]] = []
        size = bucket_bytes  # start a new bucket with the first parameter
        for p in reversed([p for p in params if p.requires_grad]):
            nbytes = p.numel() * p.element_size()
            if size + nbytes > bucket_bytes and (not self.buckets or self.buckets[-1]):
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.index = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.armed = False
        self.pending: list[int] = []
        self.launched: list[tuple[object, Tensor, list[Tensor]] | None] = []
        self.handles = [p.register_post_accumulate_grad_hook(self._ready) for b in self.buckets for p in b]

    def arm(self) -> None:
        """Start counting: the next accumulation into each gradient is its last one of this phase."""
        self.armed = True
        self.pending = [len(b) for b in self.buckets]
        self.launched = []

    def _ready(self, p: nn.Parameter) -> None:
        if not self.armed:
            return
        self.pending[self.index[id(p)]] -= 1
        while len(self.launched) < len(self.buckets) and self.pending[len(self.launched)] == 0:
            self._launch(len(self.launched))

    def _launch(self, i: int) -> None:
        grads = [p.grad for p in self.buckets[i] if p.grad is not None]
        if not grads:
            self.launched.append(None)
            return
        flat = flat_cat(grads)
        self.launched.append((dist.all_reduce(flat, async_op=True), flat, grads))

    def finish(self) -> None:
        """Launch the remaining buckets, wait for every reduction and write ``sum / world`` into the gradients."""
        if not self.armed:
            raise RuntimeError("GradientAverager.finish() without arm(): call arm() before the last backward")
        while len(self.launched) < len(self.buckets):
            self._launch(len(self.launched))
        for entry in self.launched:
            if entry is None:
                continue
            work, flat, grads = entry
            work.wait()  # type: ignore[attr-defined]
            flat.div_(self.world)
            copy_from_flat(grads, flat)
        self.armed, self.launched = False, []

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()
