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

The gradients' casts back can be batched too: while `active(hold_gradients=True)`, each use's low-precision weight
gradient is held instead of cast, and `release_gradients` after the backward pass casts them all with one
multi-tensor copy into one flat float32 buffer, whose views become the parameters' ``.grad`` (or are added to a
``.grad`` already there). The values are those of the per-use casts; the parameters' gradient hooks do not run for
these gradients, so the `Distiller` holds them in one process only (not under its all-reduce hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

_active: PreCast | None = None


class _Cast(torch.autograd.Function):
    """``cast`` (``param.to(cast.dtype)``, made earlier) forward; the gradient cast back to ``param``'s dtype, or held
    in ``held`` (``id(param) -> gradients``) for `PreCast.release_gradients` to cast."""

    @staticmethod
    def forward(ctx, param: Tensor, cast: Tensor, held: dict[int, list[Tensor]] | None) -> Tensor:
        ctx.dtype, ctx.key, ctx.held = param.dtype, id(param), held
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if ctx.held is None:
            return grad.to(ctx.dtype), None, None
        ctx.held.setdefault(ctx.key, []).append(grad)
        return None, None, None


def _copy_of(param: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The active copy of ``param`` in ``dtype``, differentiable where ``param`` is trained; ``None`` if none."""
    if _active is None:
        return None
    entry = _active._table.get(id(param))
    if entry is None or entry[0] is not param or entry[1].dtype != dtype:
        return None
    if param.requires_grad and torch.is_grad_enabled():
        return _Cast.apply(param, entry[1], _active._held if _active._holding else None)
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
    if _active is None:  # the default path: nothing more than the cast
        return param.to(x.dtype)
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
        self._table: dict[int, tuple[Tensor, Tensor]] = {}  # id(param) -> (param, its low-precision copy)
        self._held: dict[int, list[Tensor]] = {}  # id(param) -> its uses' gradients, until released
        self._holding = False
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
    def active(self, *, hold_gradients: bool = False) -> Iterator[None]:
        """Within the block the layers read these copies (not re-entrant with another `PreCast`).

        Args:
            hold_gradients: Hold the weight gradients of the uses made in the block for `release_gradients`
                instead of casting each back in the backward pass. Gradients still held from an earlier block (a
                backward pass that failed before its release) are dropped on entry.
        """
        global _active
        if _active is not None and _active is not self:
            raise RuntimeError("another PreCast is already active")
        if hold_gradients and len({(p.dtype, p.device) for p, _ in self._table.values()}) > 1:
            raise ValueError("hold_gradients releases into one buffer: the parameters must share a dtype and device")
        previous, _active = _active, self
        holding, self._holding = self._holding, hold_gradients
        if hold_gradients:
            self._held.clear()
        try:
            yield
        finally:
            _active, self._holding = previous, holding

    def release_gradients(self) -> tuple[Tensor | None, list[Tensor]]:
        """Cast the gradients held since the last release to their parameters' dtype and hand them over (the uses
        made under ``hold_gradients``, whose backward passes have run, inside the block or after it).

        One multi-tensor copy casts every parameter's first held gradient into a flat buffer (a parameter used more
        than once adds its other uses' gradients to its part). A parameter without ``.grad`` gets its part, a view
        with the parameter's strides, as ``.grad``; one with a ``.grad`` has its part added (one multi-tensor add).

        Returns:
            The flat buffer (``None`` if nothing was held) and the parameters whose ``.grad`` is a view of it.
        """
        if not self._held:
            return None, []
        params, copies = zip(*(self._table[key] for key in self._held), strict=True)
        grads = list(self._held.values())
        self._held.clear()
        flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        parts, offset = [], 0
        for p, copy in zip(params, copies, strict=True):  # dense, in the parameter's layout (its copy's strides)
            parts.append(flat.as_strided(p.shape, copy.stride(), offset))
            offset += p.numel()
        torch._foreach_copy_(parts, [g[0] for g in grads])
        for part, more in zip(parts, grads, strict=True):
            for g in more[1:]:
                part.add_(g)
        viewed, added, into = [], [], []
        for p, part in zip(params, parts, strict=True):
            if p.grad is None:
                p.grad = part
                viewed.append(p)
            else:
                added.append(part)
                into.append(p.grad)
        if added:
            torch._foreach_add_(into, added)
        return flat, viewed
