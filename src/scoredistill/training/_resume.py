"""The checking half of ``Distiller.load``: is a training state one this run can resume from?

``check_resume`` reads nothing from disk and changes nothing: it takes the state
that [`read_training_state`][scoredistill.training.checkpoint.read_training_state] returned and what this run has (its
config as a dict, process count, optimisers and loss scalers), and returns the values to apply or raises a
[`CheckpointError`][scoredistill.io.artefact.CheckpointError] naming the file.

The state is untrusted even when its manifest checks out (whoever can edit the files can re-sign them): every
counter is a typed, ranged int and ``nimg`` must be ``step_index`` times the global batch; config values are
scalars; the best evaluation is finite and reached no later than ``nimg``; and each optimiser's saved
hyper-parameters must equal this run's (which come from the validated config), its moments finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io._untrusted import safe_type_name, truncate
from ..io.artefact import CheckpointError

__all__ = ["ResumeValues", "check_resume"]


@dataclass(frozen=True)
class ResumeValues:
    """What a checked training state sets besides the networks, optimisers and data stream.

    Attributes:
        nimg: Images seen so far, over all processes.
        step_index: Steps taken so far.
        best: ``(nimg, value)`` of the best evaluation so far, or ``None``.
        scalers: Per loss scaler (``"g"``, ``"f"``), its checked state.
        optimizers: Per optimiser key (``"opt_g"``, ``"opt_f"``), its checked state, to load as it is: its
            hyper-parameters equal this run's, and its implementation switches (``foreach``, ``fused``,
            ``capturable``) are this run's.
    """

    nimg: int
    step_index: int
    best: tuple[int, float] | None
    scalers: dict[str, Any]
    optimizers: dict[str, dict[str, Any]]


MAX_COUNTER = 2**53
"""Largest ``nimg`` or ``step_index`` accepted (exact in a float64, and far beyond any run)."""

MAX_WORLD = 2**20
"""Largest saved process count accepted."""

_SCALARS = (str, int, float, bool, type(None))

# Optimiser settings that are how the update is computed, not what it is: a resumed run keeps its own.
_IMPLEMENTATION = ("foreach", "fused", "capturable")


def _shown(value: Any) -> str:
    """A short scalar as itself (strings truncated), anything else by its type: never a whole untrusted tree."""
    if isinstance(value, str):
        return repr(truncate(value))
    if isinstance(value, bool | float | type(None)) or (isinstance(value, int) and abs(value) < 10**30):
        return repr(value)
    return f"a {safe_type_name(value)}"


def _counter(value: Any, name: str, file: Path, low: int = 0, high: int = MAX_COUNTER) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CheckpointError(f"{file}: {name} must be an int in [{low}, {high}], got {_shown(value)}")
    return value


def check_resume(
    state: dict[str, Any],
    file: Path,
    *,
    config: dict[str, Any],
    world: int,
    optimizers: dict[str, torch.optim.Optimizer],
    scalers: dict[str, torch.amp.GradScaler],
    device_type: str,
    may_change: Iterable[str],
) -> ResumeValues:
    """Check a training state against this run without changing anything.

    Args:
        state: The checkpoint's ``state.pt`` contents.
        file: Its path, named in every error.
        config: This run's config, ``dataclasses.asdict(config)``.
        world: This run's process count.
        optimizers: Per state key (``"opt_g"``, ``"opt_f"``), this run's optimiser.
        scalers: Per key (``"g"``, ``"f"``), this run's loss scaler.
        device_type: The device type of the scalers (``"cuda"``, ``"cpu"``).
        may_change: Config fields a resumed run may change. With another process count, ``batch_size`` and
            ``micro_batch`` may change too, as long as the global batch stays.

    Returns:
        The counters, best evaluation and loss-scaler states to apply.

    Raises:
        CheckpointError: The state is incomplete, of another run, or its config differs in a field that may not
            change.
    """
    missing = sorted({"nimg", "step_index", "config", *optimizers, "scalers", "data"} - state.keys())
    if missing:
        raise CheckpointError(f"{file} lacks {missing}: not a checkpoint of Distiller.save")
    nimg, step_index = _counter(state["nimg"], "nimg", file), _counter(state["step_index"], "step_index", file)
    theirs = state["config"]
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{file}: config must be a dict, got a {safe_type_name(theirs)}")
    for key, value in theirs.items():
        if not isinstance(key, str) or not isinstance(value, _SCALARS):
            raise CheckpointError(
                f"{file}: config values must be numbers, strings, booleans or None, got a {safe_type_name(value)} "
                f"for {_shown(key)}"
            )
    if not isinstance(state["data"], dict | None):
        raise CheckpointError(
            f"{file}: data must be the data stream's state dict or None, got a {safe_type_name(state['data'])}"
        )
    saved_batch = _counter(theirs.get("batch_size"), "config batch_size", file, low=1)
    saved_world = _counter(state.get("world", 1), "world", file, low=1, high=MAX_WORLD)  # absent before multi-process
    if nimg != step_index * saved_batch * saved_world:
        raise CheckpointError(
            f"{file}: nimg {nimg} is not step_index {step_index} times the global batch "
            f"{saved_batch} x {saved_world}: the counters were edited"
        )

    # The config: the same but for the fields a resumed run may change.
    ours = config
    may_change = set(may_change)
    if saved_world != world:  # another process count: the global batch must stay, its split may change
        global_batch = saved_batch * saved_world
        batch = ours["batch_size"]
        if batch * world != global_batch:
            raise CheckpointError(
                f"{file} was written by {saved_world} processes with a global batch of {global_batch}; "
                f"this run has {world} x {batch} = {world * batch}."
                f" Set the per-process batch to {global_batch} / {world} (examples: keep --batch)"
                if global_batch % world == 0
                else f"{file}: global batch {global_batch} does not split over {world} processes"
            )
        may_change |= {"batch_size", "micro_batch"}
    differ = sorted(k for k in ours.keys() | theirs.keys() if k not in may_change and ours.get(k) != theirs.get(k))
    if differ:
        changes = ", ".join(f"{k}: {_shown(theirs.get(k))} -> {_shown(ours.get(k))}" for k in differ[:10])
        raise CheckpointError(f"{file}: checkpoint config differs from this run's in {truncate(changes, 600)}")

    # The optimiser and loss-scaler states, each loaded into a scratch copy.
    checked = {key: _check_optimizer_state(opt, state[key], f"{file}: {key}") for key, opt in optimizers.items()}
    saved_scalers = state["scalers"]
    if not isinstance(saved_scalers, dict) or saved_scalers.keys() != scalers.keys():
        raise CheckpointError(f"{file}: scalers must be a dict with keys {sorted(scalers)}")
    for k, scaler in scalers.items():
        _check_scaler_state(scaler, saved_scalers[k], device_type, f"{file}: the {k} loss scaler's state")

    best = state.get("best")  # absent in checkpoints written before evaluations were kept
    if best is not None:
        if not (isinstance(best, list | tuple) and len(best) == 2):
            raise CheckpointError(f"{file}: best must be [nimg, value], got a {safe_type_name(best)}")
        at, value = best
        _counter(at, "best's nimg", file, high=nimg)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CheckpointError(f"{file}: best's value must be a finite number, got {_shown(value)}")
        best = (at, float(value))
    return ResumeValues(nimg=nimg, step_index=step_index, best=best, scalers=saved_scalers, optimizers=checked)


def _check_scaler_state(scaler: torch.amp.GradScaler, state: Any, device_type: str, where: str) -> None:
    """Refuse a loss-scaler state of other settings than ``scaler``'s, or with a non-finite scale."""
    ours = scaler.state_dict()
    if not isinstance(state, dict) or state.keys() != ours.keys():
        raise CheckpointError(f"{where} must be a dict with keys {sorted(ours)}")
    for key, value in ours.items():
        saved = state[key]
        if key == "scale":
            if isinstance(saved, bool) or not isinstance(saved, int | float) or not 0 < saved < math.inf:
                raise CheckpointError(f"{where}: scale must be a positive finite number, got {_shown(saved)}")
        elif key == "_growth_tracker":
            if type(saved) is not int or not 0 <= saved <= ours["growth_interval"]:
                raise CheckpointError(f"{where}: _growth_tracker must be an int in [0, growth_interval]")
        elif type(saved) is not type(value) or saved != value:
            raise CheckpointError(f"{where}: {key} is {_shown(saved)}, this run's is {_shown(value)}")
    try:  # a scratch scaler checks the state without touching ours
        torch.amp.GradScaler(device_type, enabled=scaler.is_enabled()).load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{where} is invalid: {truncate(str(err), 200)}") from err


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for optimiser settings, tuples and lists alike, NaN never equal, types strict (1 is not True)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return (isinstance(a, bool) == isinstance(b, bool)) and isinstance(a, _SCALARS) and a == b


def _check_optimizer_state(opt: torch.optim.Optimizer, state: object, where: str) -> dict[str, Any]:
    """Refuse an optimiser state that does not fit ``opt``, changing nothing; return the state to load.

    It must fit ``opt``'s groups, sizes and moment shapes; every hyper-parameter of each group must equal
    ``opt``'s (``lr``, ``betas``, ``eps``, ``weight_decay``, ``maximize``, ...: a resumed run keeps the validated
    config's); and its moments must be finite (``exp_avg_sq`` non-negative). The returned copy carries ``opt``'s
    own implementation switches (``foreach``, ``fused``, ``capturable``), which may differ between machines.
    """
    scratch = type(opt)([{"params": g["params"]} for g in opt.param_groups], **opt.defaults)
    try:
        scratch.load_state_dict(state)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{where} does not fit this run's optimiser: {truncate(str(err), 200)}") from err
    groups = []
    for i, (group, ours) in enumerate(zip(scratch.param_groups, opt.param_groups, strict=True)):
        for key in sorted(group.keys() | ours.keys()):
            if key in ("params", "param_names", *_IMPLEMENTATION):
                continue
            if key not in ours or key not in group or not _same(group[key], ours[key]):
                raise CheckpointError(
                    f"{where}: group {i} has {key} {_shown(group.get(key))}, but this run's config gives "
                    f"{_shown(ours.get(key))}; a resumed run keeps its optimiser settings"
                )
        for key in _IMPLEMENTATION:
            if not isinstance(group.get(key), bool | type(None)):
                raise CheckpointError(f"{where}: group {i}'s {key} must be True, False or None")
        for p in group["params"]:
            for key, value in scratch.state.get(p, {}).items():
                if not isinstance(value, Tensor):
                    raise CheckpointError(f"{where}: {truncate(str(key))} is a {safe_type_name(value)}, not a tensor")
                if key != "step" and value.shape != p.shape:
                    raise CheckpointError(
                        f"{where}: {key} has shape {list(value.shape)} for a parameter of shape {list(p.shape)}"
                    )
                negative = key in ("step", "exp_avg_sq", "max_exp_avg_sq") and bool((value < 0).any())
                if negative or not bool(torch.isfinite(value).all()):
                    raise CheckpointError(f"{where}: {truncate(str(key))} holds non-finite or negative values")
        saved_group = state["param_groups"][i]  # type: ignore[index]
        groups.append({**saved_group, **{k: ours[k] for k in _IMPLEMENTATION if k in ours}})
    return {"state": state["state"], "param_groups": groups}  # type: ignore[index]
