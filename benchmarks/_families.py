"""Kernel families of a distillation step, and the bytes each family's operations touch.

`family` names the family of a CUDA kernel (from the profiler) or of one of the library's Triton kernels.
`TrafficCounter` records, over an eager step, the bytes of the tensors each operation reads and writes, by the same
families, so that a profile's time per family becomes a bandwidth (`bench_step.py --profile`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections import defaultdict

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GROUP_NORM = "fused group norm (Triton)"
GEMM = "convolution / matmul GEMMs"
ATTENTION = "attention (cuDNN / flash SDPA)"
OPTIMIZER = "optimizer and EMA (multi-tensor)"
CONCAT = "concatenation"
COPIES = "casts, copies and layout transposes"
REDUCTIONS = "reductions (bias gradients, sums)"
ELEMENTWISE = "other elementwise"
TENSOR_CORE_FAMILIES = (GEMM, ATTENTION)  # compute-bound: rated in FLOP/s, not bytes/s

# Kernel families of a graphed step: Triton kernels by exact name, the others by a substring (first match wins).
FAMILIES = [
    (GROUP_NORM, {"_stats_kernel", "_apply_kernel", "_grad_sums_kernel", "_grad_x_kernel", "_combine_stats_kernel",
                  "_combine_grads_kernel", "_one_pass_fwd_kernel", "_one_pass_bwd_kernel"}),
    ("fused residual sum (Triton)", {"_residual_kernel", "_residual_grad_kernel"}),
    (CONCAT, {"_cat_kernel", "_split_kernel"}),
    ("box resampling (Triton)", {"_pool", "_spread"}),
    ("fused loss terms (Triton)", {"_sid_fwd_kernel", "_sid_finish_kernel", "_sid_bwd_kernel", "_dsm_fwd_kernel",
                                   "_dsm_finish_kernel", "_dsm_bwd_kernel"}),
    (OPTIMIZER, {"_sanitize_kernel"}),  # the NaN/Inf rule and clipping before the optimiser steps
    (OPTIMIZER, ("multi_tensor_apply",)),
    (ATTENTION, ("sdpa", "flash", "fmha", "attention", "dot_do_o")),
    (GEMM, ("xmma", "gemm", "nvjet", "cutlass")),
    (CONCAT, ("CatArray",)),
    (COPIES, ("copy_kernel", "direct_copy", "nchwToNhwc", "nhwcToNchw")),
    (REDUCTIONS, ("reduce_kernel",)),
    (ELEMENTWISE, ("elementwise_kernel",)),
]  # fmt: skip


# The kernel modules whose launches go through `scoredistill.kernels.triton_utils.launch` (as `launch` or
# `_launch_any`), which `TrafficCounter` counts.
LAUNCHING_MODULES = ("groupnorm_triton", "residual_triton", "resample_triton", "sid_triton", "dsm_triton",
                     "concat_triton", "sanitize_triton")  # fmt: skip


def family(kernel: str) -> str:
    """The family of a kernel, by its name."""
    for name, keys in FAMILIES:
        if kernel in keys if isinstance(keys, set) else any(k in kernel for k in keys):
            return name
    return "other"


# The family of the kernels an aten operation launches, by the operation's name (its overload packet).
_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "addmv", "linear", "matmul", "_addmm_activation"}
_COPY_OPS = {"_to_copy", "clone", "contiguous", "_copy_from", "_copy_from_and_resize"}
_REDUCTION_OPS = {"sum", "mean", "amax", "amin", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm",
                  "any", "all", "argmax", "argmin", "prod", "logsumexp"}  # fmt: skip
# Operations that move no data: allocations and metadata (views are known by their schema).
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "set_",
               "resize_", "record_stream", "lift_fresh", "_local_scalar_dense", "is_same_size"}  # fmt: skip


def op_family(op: str) -> str:
    """The family of the kernels an aten operation (``"convolution_backward"``, ``"add_"``, ...) launches."""
    if any(k in op for k in ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")):
        return ATTENTION
    if op in _GEMM_OPS or "convolution" in op:
        return GEMM
    if op.startswith(("_foreach_", "_fused_adam")):
        return OPTIMIZER
    if op == "cat":
        return CONCAT
    if op in _COPY_OPS:
        return COPIES
    if op in _REDUCTION_OPS:
        return REDUCTIONS
    return ELEMENTWISE


def _nbytes(tensors) -> int:
    """Bytes of the distinct storages among ``tensors`` (each counted once: its elements as the tensor sees them)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, Tensor) and t.device.type != "meta":
            key = (t.data_ptr(), t.numel(), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


class TrafficCounter(TorchDispatchMode):
    """Bytes each operation of a step reads and writes, summed by family (`op_family`, `family`).

    An aten operation counts its tensor inputs and its outputs once each (``copy_`` its source and destination);
    views, allocations and metadata count nothing. A launch of the library's Triton kernels counts the distinct
    tensors it is given. This is the traffic of touching each tensor once per operation: a kernel that reads a
    tensor twice moves more, one whose inputs stay in the L2 cache moves less.

    Example:
        >>> x = torch.ones(256)
        >>> with TrafficCounter() as traffic:
        ...     y = (x + x).to(torch.bfloat16)  # reads 1 KiB and writes 1 KiB, then reads 1 KiB and writes 512 B
        >>> traffic.bytes["other elementwise"], traffic.bytes["casts, copies and layout transposes"]
        (2048, 1536)
    """

    def __init__(self):
        super().__init__()
        self.bytes: dict[str, int] = defaultdict(int)
        self._patches = contextlib.ExitStack()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if getattr(func, "is_view", False) or name in _NO_TRAFFIC:
            return out
        if name == "copy_":  # reads the source, writes the destination (its first argument, also the output)
            self.bytes[COPIES] += _nbytes([args[0]]) + _nbytes([args[1]])
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        self.bytes[op_family(name)] += _nbytes(inputs) + _nbytes(outputs)
        return out

    def _count_launch(self, launch):
        def counted(kernel, grid, device_index, *args, **kwargs):
            name = getattr(kernel, "__name__", None) or kernel.fn.__name__
            self.bytes[family(name)] += _nbytes([a for a in args if isinstance(a, Tensor)])
            return launch(kernel, grid, device_index, *args, **kwargs)

        return counted

    def __enter__(self):
        for module in LAUNCHING_MODULES:
            try:
                mod = importlib.import_module(f"scoredistill.kernels.{module}")
            except ImportError:  # no Triton: no launches to count
                continue
            attr = "_launch_any" if hasattr(mod, "_launch_any") else "launch"
            self._patches.enter_context(_patched(mod, attr, self._count_launch(getattr(mod, attr))))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()


@contextlib.contextmanager
def _patched(module, attr: str, value):
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


def traffic_per_step(step, steps: int = 1) -> dict[str, float]:
    """Bytes per step by family over ``steps`` calls of ``step()`` (eager: a CUDA-graph replay dispatches nothing)."""
    with TrafficCounter() as counter:
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return {name: b / steps for name, b in counter.bytes.items()}
