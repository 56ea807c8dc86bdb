"""The checking half of ``Distiller.load``: is a training state one this run can resume from?

``check_resume`` reads nothing from disk and changes nothing: it takes the state
that [`read_training_state`][scoredistill.training.checkpoint.read_training_state] returned and what this run has (its
config as a dict, process count, optimisers and loss scalers), and returns the values to apply or raises a
[`CheckpointError`][scoredistill.io.artefact.CheckpointError] naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
    """

    nimg: int
    step_index: int
    best: tuple[int, float] | None
    scalers: dict[str, Any]


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
    for key in ("nimg", "step_index"):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{file}: {key} must be a non-negative int, got {value!r}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{file}: config must be a dict, got {type(state['config']).__name__}")

    # The config: the same but for the fields a resumed run may change.
    ours, theirs = config, state["config"]
    saved_world = state.get("world", 1)  # absent in checkpoints written before multi-process resume
    if not isinstance(saved_world, int) or isinstance(saved_world, bool) or saved_world < 1:
        raise CheckpointError(f"{file}: world must be a positive int, got {saved_world!r}")
    may_change = set(may_change)
    if saved_world != world:  # another process count: the global batch must stay, its split may change
        global_batch = theirs.get("batch_size", 0) * saved_world
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
        changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in differ)
        raise CheckpointError(f"{file}: checkpoint config differs from this run's in {changes}")

    # The optimiser and loss-scaler states, each loaded into a scratch copy.
    for key, opt in optimizers.items():
        _check_optimizer_state(opt, state[key], f"{file}: {key}")
    saved_scalers = state["scalers"]
    if not isinstance(saved_scalers, dict) or saved_scalers.keys() != scalers.keys():
        raise CheckpointError(f"{file}: scalers must be a dict with keys {sorted(scalers)}")
    for k, scaler in scalers.items():
        try:  # a scratch scaler checks the state without touching ours
            torch.amp.GradScaler(device_type, enabled=scaler.is_enabled()).load_state_dict(saved_scalers[k])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{file}: the {k} loss scaler's state is invalid: {err}") from err

    best = state.get("best")  # absent in checkpoints written before evaluations were kept
    if best is not None:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in best)
        if not (isinstance(best, list | tuple) and len(best) == 2 and numbers):
            raise CheckpointError(f"{file}: best must be [nimg, value], got {best!r}")
        best = (int(best[0]), float(best[1]))
    return ResumeValues(nimg=state["nimg"], step_index=state["step_index"], best=best, scalers=saved_scalers)


def _check_optimizer_state(opt: torch.optim.Optimizer, state: object, where: str) -> None:
    """Refuse an optimiser state that does not fit ``opt`` (groups, sizes, moment shapes), changing nothing."""
    scratch = type(opt)([{"params": g["params"]} for g in opt.param_groups], **opt.defaults)
    try:
        scratch.load_state_dict(state)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{where} does not fit this run's optimiser: {err}") from err
    for group in scratch.param_groups:
        for p in group["params"]:
            for key, value in scratch.state.get(p, {}).items():
                if key != "step" and isinstance(value, Tensor) and value.shape != p.shape:
                    raise CheckpointError(
                        f"{where}: {key} has shape {list(value.shape)} for a parameter of shape {list(p.shape)}"
                    )
