"""Speed switches for the networks: channels_last memory format and torch.compile (whole or regional).

None of them changes the maths: the same modules run the same operations, only fused, re-laid out or
launched differently. Regional compilation compiles each residual block (EDM's ``UNetBlock``) instead of
the whole network, which keeps compile time short because identical blocks share compiled code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..networks.layers import Conv2d, GroupNorm, UNetBlock

__all__ = ["CompileScope", "StepGraphs", "capture", "speed_up", "use_compile_cache", "use_fused_norms"]

CompileScope = Literal["off", "blocks", "network"]

_BACKBONE_METHODS = ("forward", "forward_with_logits", "forward_with_logits_shared", "encoder_logits")


def speed_up(
    denoiser: nn.Module,
    *,
    channels_last: bool = False,
    compile: CompileScope = "off",
    compile_mode: str | None = None,
) -> nn.Module:
    """Apply speed switches in place to a [`Precond`][scoredistill.roles.precond.Precond]-wrapped backbone.

    Args:
        denoiser: A denoiser whose backbone is ``denoiser.model`` (or a backbone itself).
        channels_last: Store the backbone's 4-D weights channels-last (NHWC convolutions on tensor cores).
        compile: ``"blocks"`` compiles every residual block (regional compilation: short compile time),
            ``"network"`` compiles the backbone's entry points whole (longest compile, most fusion).
        compile_mode: ``torch.compile`` mode, e.g. ``"max-autotune-no-cudagraphs"``; ``None`` is the default.

    Returns:
        The same module. State-dict keys are unchanged, so checkpoints stay interchangeable.
    """
    if compile not in ("off", "blocks", "network"):
        raise ValueError(f"compile must be 'off', 'blocks' or 'network', got {compile!r}")
    backbone = getattr(denoiser, "model", denoiser)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    if compile == "blocks":
        blocks = [m for m in backbone.modules() if isinstance(m, UNetBlock)]
        if not blocks:
            raise ValueError(f"{type(backbone).__name__} has no UNetBlock to compile: use compile='network'")
        # Blocks differ in channels, resampling and attention: allow one compiled variant per kind.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in blocks:
            block.compile(mode=compile_mode)
    elif compile == "network":
        for name in _BACKBONE_METHODS:
            if hasattr(backbone, name):
                setattr(backbone, name, torch.compile(getattr(backbone, name), mode=compile_mode))
    return denoiser


def use_compile_cache(path: str | Path) -> Path:
    """Keep ``torch.compile``'s artefacts in ``path`` so that later runs (other processes, other machines sharing
    the folder) reuse them instead of compiling again.

    Sets Inductor's cache folder (its FX-graph and AOTAutograd caches, which are switched on here) and Triton's
    kernel cache (``path/triton``) for this process and the processes it starts. Call it before the first
    compilation; [`Distiller`][scoredistill.training.distill.Distiller] does when ``DistillConfig.compile_cache_dir``
    is set.

    Args:
        path: A folder (created if missing).

    Returns:
        The folder, resolved.

    Raises:
        ValueError: ``path`` exists and is not a folder.
    """
    folder = Path(path).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"compile cache {folder} is a file: pass a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return folder


def use_fused_norms(module: nn.Module, enabled: bool | None) -> nn.Module:
    """Switch the networks' fused Triton kernels in ``module``: the group norms (with the convolution biases the
    residual blocks fold into them and into their residual sums) and the channels_last box resampling.

    Args:
        module: Any module; its [`GroupNorm`][scoredistill.networks.layers.GroupNorm] and
            `Conv2d` layers are switched in place.
        enabled: ``None`` (default): fused on CUDA when Triton is available; ``False``: the native ops.

    Returns:
        ``module``.
    """

    for m in module.modules():
        if isinstance(m, (GroupNorm, Conv2d)):
            m.use_kernels = None if enabled else enabled
    return module


@contextlib.contextmanager
def capture(
    graph: torch.cuda.CUDAGraph, generators: Sequence[torch.Generator] = (), *, pool: object = None
) -> Iterator[None]:
    """``torch.cuda.graph`` for the library's captures: other threads stay free, and a failure leaves no trace.

    Every capture of the library goes through here (a test checks that nothing else calls ``torch.cuda.graph``),
    for two reasons:

    - **Other threads.** The capture's error mode is ``"thread_local"``: only CUDA calls of the capturing thread
      are restricted. In CUDA's default (``"global"``) mode, an unsafe call from ANY thread of the process, such as
      the ``cudaHostAlloc`` or event query a DataLoader's pin-memory thread makes while it stages the next batch,
      invalidates the capture ("operation failed due to a previous error during capture"), and the error then
      surfaces in that thread too. Whether it happens depends on timing: a loader that is behind (a small, fast
      network) is busy pinning during the capture, one that is ahead is idle.
    - **Random generators.** A capture that fails (a host synchronisation inside it, say) ends without closing the
      random generators' capture state: every later draw from them, in eager code too, would raise "Offset
      increment outside graph capture encountered unexpectedly". The generators' states (the device's default
      generator, which every capture registers, and ``generators``) are copied before the capture and put back if
      it fails, so that the process goes on exactly as if the capture had never started.

    Args:
        graph: A fresh graph.
        generators: Non-default CUDA generators the captured code draws from.
        pool: Memory pool to share with other graphs (``torch.cuda.graph_pool_handle()``), or ``None``.
    """
    default = torch.cuda.default_generators[torch.cuda.current_device()]
    everyone = [default, *generators]
    saved = [g.clone_state() for g in everyone]
    for generator in generators:
        graph.register_generator_state(generator)
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            yield
    except BaseException:
        for generator, state in zip(everyone, saved):
            generator.graphsafe_set_state(state)
        raise


class StepGraphs:
    """CUDA-graph capture of whole training iterations, one graph per regime.

    Each regime (a key) first runs ``warmup`` iterations eagerly on a side stream (real iterations: they
    initialise optimiser state, cuDNN and Triton autotuning), then captures the next iteration and replays it;
    later iterations copy their inputs into the captured buffers and replay. The random generators are
    registered with every graph, so reseeding them before a replay gives the draws an eager run would make.

    Args:
        generators: Non-default CUDA generators the iteration draws from (the default one is always handled).
        warmup: Eager iterations per regime before its capture.
    """

    def __init__(self, generators: list[torch.Generator], *, warmup: int = 2):
        self.generators, self.warmup = generators, warmup
        self.entries: dict[object, tuple[torch.cuda.CUDAGraph, list, dict]] = {}
        self.warm: dict[object, int] = {}
        self.pool = None

    def run(self, key: object, fn: Callable[[list], dict], inputs: list, reseed: Callable[[], None]) -> dict:
        """Run ``fn(inputs) -> dict of tensors`` for regime ``key``, eagerly or by graph replay.

        Args:
            key: The regime; one graph each.
            fn: The iteration; must not synchronise with the host.
            inputs: A list of ``None`` or tuples of tensors (or ``None``) that change every iteration.
            reseed: Restores this iteration's generator states (capture advances them without drawing).
        """
        entry = self.entries.get(key)
        if entry is None and self.warm.get(key, 0) < self.warmup:
            self.warm[key] = self.warm.get(key, 0) + 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = fn(inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if entry is None:
            static = [None if b is None else tuple(None if t is None else t.clone() for t in b) for b in inputs]
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            try:
                with capture(graph, self.generators, pool=self.pool):
                    out = fn(static)
            except RuntimeError as e:
                raise RuntimeError(
                    f"capturing the iteration of regime {key} in a CUDA graph failed: {e}. Something in it waits for "
                    "the host (.item(), a tensor built from host values, a shape that depends on values); "
                    "set cuda_graphs=False or make that step capture-safe"
                ) from e
            entry = self.entries[key] = (graph, static, out)
            reseed()
        graph, static, out = entry
        for dst, src in zip(static, inputs):
            if dst is not None:
                for d, s in zip(dst, src):
                    if d is not None:
                        d.copy_(s, non_blocking=True)
        graph.replay()
        return {k: v.clone() for k, v in out.items()}
