"""Low-precision copies of the layers' weights, cast once per update instead of at every use.

Under bf16 autocast, every convolution and linear layer casts its float32 weight and bias to bfloat16 each time it
runs: one kernel launch per tensor and use, several hundred per network and phase, and the casts' backward casts
each weight gradient back. A `PreCast` holds a bfloat16 copy of every weight and bias of a set of modules' `Linear`
and `Conv2d` layers and refreshes them all with one multi-tensor copy (`torch._foreach_copy_`). While it is
`active`, the layers read those copies (`cast_parameter`, `matmul_parameter`) instead of casting.

The values are the casts' own: a copy is ``param.to(dtype)`` made earlier, with the same rounding. A layer whose
parameter is being trained gets the copy through `_Cast`, whose backward casts the gradient back to the parameter's
dtype as ``param.to(dtype)``'s backward does, so the gradient reaches the float32 parameter (and any hook on it) as
before. The one difference: where autocast itself made the cast (a float32 input to a convolution), it cached it for
the autocast region, so a layer used twice there summed its two weight gradients in bfloat16 before casting them
back; through the copies each use is cast back on its own and the two are summed in float32.

The copies are only as fresh as their last `refresh`: whoever activates a `PreCast` refreshes it after every change
of the parameters (the `Distiller` does so at the start of each iteration and after the fake score's update).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

_active: dict[int, tuple[Tensor, Tensor]] | None = None  # id(param) -> (param, its low-precision copy)


class _Cast(torch.autograd.Function):
    """``cast`` (``param.to(cast.dtype)``, made earlier) forward; the gradient cast back to ``param``'s dtype."""

    @staticmethod
    def forward(ctx, param: Tensor, cast: Tensor) -> Tensor:
        ctx.dtype = param.dtype
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.to(ctx.dtype), None


def _copy_of(param: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The active copy of ``param`` in ``dtype``, differentiable where ``param`` is trained; ``None`` if none."""
    if _active is None:
        return None
    entry = _active.get(id(param))
    if entry is None or entry[0] is not param or entry[1].dtype != dtype:
        return None
    if param.requires_grad and torch.is_grad_enabled():
        return _Cast.apply(param, entry[1])
    return entry[1]


def cast_parameter(param: Tensor, dtype: torch.dtype) -> Tensor:
    """``param.to(dtype)``: the active `PreCast`'s copy when it holds one in ``dtype``, else the cast itself."""
    copy = _copy_of(param, dtype)
    return param.to(dtype) if copy is None else copy


def matmul_parameter(param: Tensor, x: Tensor) -> Tensor:
    """A convolution's or linear layer's ``param`` for input ``x``: ``param.to(x.dtype)``, as the layers had it.

    Under autocast a float32 ``x`` leaves the cast to autocast (the layer computes in autocast's dtype); the active
    copy in that dtype is then the same value, handed over before autocast needs to cast.
    """
    dtype = x.dtype
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    copy = _copy_of(param, dtype) if param.dtype != dtype else None
    return param.to(x.dtype) if copy is None else copy


class PreCast:
    """Copies in ``dtype`` of the parameters that ``modules``' layers read through `cast_parameter` or
    `matmul_parameter`: those a layer class names in its ``precast_parameters`` (`Linear` and `Conv2d`: weight and
    bias).

    Args:
        modules: The networks (their layers are found by `nn.Module.modules`).
        dtype: The low-precision dtype, autocast's (``torch.bfloat16`` or ``torch.float16``).

    Example:
        ```python
        casts = PreCast([generator, fake_score], torch.bfloat16)
        with casts.active(), torch.autocast("cuda", dtype=torch.bfloat16):
            casts.refresh()  # after every change of the parameters
            loss = ...  # forward passes read the copies
        loss.backward()  # gradients reach the float32 parameters
        ```
    """

    def __init__(self, modules: Iterable[nn.Module], dtype: torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"PreCast makes bfloat16 or float16 copies, not {dtype}")
        modules = list(modules)
        self.dtype = dtype
        self._groups: dict[int, tuple[list[Tensor], list[Tensor]]] = {}  # id(module) -> (params, copies)
        self._table: dict[int, tuple[Tensor, Tensor]] = {}
        for module in modules:
            params, copies = [], []
            for layer in module.modules():
                for name in getattr(type(layer), "precast_parameters", ()):
                    param = getattr(layer, name)
                    if param is None or not param.is_floating_point() or param.dtype == dtype:
                        continue
                    if id(param) in self._table:  # shared between the modules given
                        continue
                    copy = torch.empty_like(param, dtype=dtype)  # the parameter's strides (channels_last kept)
                    params.append(param)
                    copies.append(copy)
                    self._table[id(param)] = (param, copy)
            self._groups[id(module)] = (params, copies)
        self._modules = modules
        self.refresh()

    def __len__(self) -> int:
        return len(self._table)

    @torch.no_grad()
    def refresh(self, modules: Iterable[nn.Module] | None = None) -> None:
        """Re-cast the copies of ``modules`` (default: all) from their parameters, one multi-tensor copy each."""
        for module in self._modules if modules is None else modules:
            group = self._groups.get(id(module))
            if group is None:
                raise ValueError(f"this PreCast holds no copies of that {type(module).__name__}")
            params, copies = group
            if copies:
                torch._foreach_copy_(copies, params)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the layers read these copies (not re-entrant with another `PreCast`)."""
        global _active
        if _active is not None and _active is not self._table:
            raise RuntimeError("another PreCast is already active")
        previous, _active = _active, self._table
        try:
            yield
        finally:
            _active = previous
