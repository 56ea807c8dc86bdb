"""Training-state checkpoints: safetensors for the networks, one ``weights_only`` torch file for the rest.

A checkpoint is a directory written next to its final place and renamed into it, so an interrupted write
never leaves a half checkpoint where a resume would look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ._io import atomic_directory

__all__ = ["load_training_state", "save_training_state"]

STATE_FILE = "state.pt"


def save_training_state(path: str | os.PathLike, *, modules: dict[str, nn.Module], state: dict[str, Any]) -> Path:
    """Atomically write ``modules`` (one ``<name>.safetensors`` each) and ``state`` (``state.pt``) to ``path``.

    Args:
        path: The checkpoint directory; an existing one is replaced only once the new one is complete.
        modules: Networks to save by name.
        state: Optimiser states, counters and config; tensors, numbers, strings, lists and dicts only, so that
            it reloads with ``torch.load(weights_only=True)``.

    Returns:
        The checkpoint directory.
    """
    with atomic_directory(path) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / STATE_FILE)
    return Path(path)


def load_training_state(
    path: str | os.PathLike, *, modules: dict[str, nn.Module], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by [`save_training_state`][scoredistill.checkpoint.save_training_state] into
    ``modules`` (strictly) and return its state.

    Raises:
        FileNotFoundError: The directory or one of its files is missing (the message names it).
        RuntimeError: A network's keys or shapes do not match (safetensors names the keys).
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"no training state at {path} (expected {path / STATE_FILE})")
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {file.name}")
        load_model(module, str(file), strict=True, device=str(next(module.parameters(), torch.empty(0)).device))
    return torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
