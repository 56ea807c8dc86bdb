"""Training-state checkpoints: safetensors for the networks, one ``weights_only`` torch file for the rest.

A checkpoint directory holds ``<role>.safetensors`` per network, ``state.pt`` (optimiser states, counters,
config) and ``manifest.json``, which records each file's role, size and SHA-256 digest. It is written beside
its final place and swapped in (a crash-safe directory swap), so a kill at any moment leaves the
previous or the new complete checkpoint; the readers put back one left beside a missing directory.

Reading is all-or-nothing:
[`read_training_state`][scoredistill.training.checkpoint.read_training_state]
checks every digest, role, key and shape and returns the tensors without touching any network;
[`load_training_state`][scoredistill.training.checkpoint.load_training_state] then copies them in.
Every fault is a [`CheckpointError`][scoredistill.io.artefact.CheckpointError] naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import Tensor, nn

from .._io import atomic_directory, recover_directory, state_dict_mismatch
from ..io.artefact import CheckpointError

__all__ = [
    "LegacyCheckpointWarning",
    "TrainingState",
    "apply_networks",
    "has_training_state",
    "load_training_state",
    "read_training_state",
    "save_training_state",
]

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class LegacyCheckpointWarning(UserWarning):
    """A checkpoint written before manifests (scoredistill 0.1): loaded, but without an integrity check."""


@dataclass
class TrainingState:
    """A checkpoint read and checked in full, not yet applied to anything.

    Attributes:
        path: The checkpoint directory.
        tensors: Per network name, its state dict (on the CPU).
        state: The contents of ``state.pt``.
    """

    path: Path
    tensors: dict[str, dict[str, Tensor]]
    state: dict[str, Any]


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_training_state(path: str | os.PathLike, *, modules: dict[str, nn.Module], state: dict[str, Any]) -> Path:
    """Atomically write ``modules`` (one ``<name>.safetensors`` each), ``state`` and a manifest to ``path``.

    Args:
        path: The checkpoint directory; an existing one is replaced only once the new one is complete and on
            disk, and a kill at any point leaves one of the two (see the module docstring).
        modules: Networks to save by name.
        state: Optimiser states, counters and config; tensors, numbers, strings, lists and dicts only, so that
            it reloads with ``torch.load(weights_only=True)``.

    Returns:
        The checkpoint directory.
    """
    with atomic_directory(path) as tmp:
        files = {}
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"), metadata={"role": name})
            files[f"{name}.safetensors"] = name
        torch.save(state, tmp / STATE_FILE)
        files[STATE_FILE] = "state"
        manifest = {
            "format": MANIFEST_FORMAT,
            "files": {
                file: {"role": role, "bytes": (tmp / file).stat().st_size, "sha256": _sha256(tmp / file)}
                for file, role in files.items()
            },
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(path)


def has_training_state(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint to resume from, after putting back one a killed write left beside it."""
    path = Path(path)
    return recover_directory(path) and (path / STATE_FILE).is_file()


def _read_manifest(path: Path, expected: set[str]) -> dict[str, dict] | None:
    file = path / MANIFEST_FILE
    if not file.is_file():
        warnings.warn(
            f"{path} has no {MANIFEST_FILE} (written by scoredistill 0.1): its files' integrity cannot be checked; "
            "keys, shapes and the config still are. The next save writes a manifest.",
            LegacyCheckpointWarning,
            stacklevel=4,
        )
        return None
    try:
        manifest = json.loads(file.read_text())
        entries = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
        for name, entry in entries.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and "role" in entry):
                raise ValueError(f"entry {name!r} lacks a role or digest")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not a valid checkpoint manifest ({err}); the checkpoint is damaged") from err
    if set(entries) != expected:
        missing, extra = sorted(expected - set(entries)), sorted(set(entries) - expected)
        raise CheckpointError(
            f"{file} lists other files than this run saves: missing {missing}, unexpected {extra} "
            "(a checkpoint of a run with other losses or networks?)"
        )
    return entries


def _verify(file: Path, entry: dict | None, role: str) -> None:
    if entry is None:
        return
    if entry["role"] != role:
        raise CheckpointError(f"{file}: the manifest records role {entry['role']!r}, expected {role!r}")
    if "bytes" in entry and file.stat().st_size != entry["bytes"]:
        raise CheckpointError(
            f"{file} has {file.stat().st_size} bytes, the manifest recorded {entry['bytes']}: "
            "the file is truncated or was replaced; resume from another checkpoint"
        )
    if _sha256(file) != entry["sha256"]:
        raise CheckpointError(
            f"{file} does not match the SHA-256 digest recorded in its manifest: the file is corrupt or was "
            "replaced (e.g. swapped with another network's file); resume from another checkpoint"
        )


def _read_network(file: Path, role: str, module: nn.Module) -> dict[str, Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            recorded = (f.metadata() or {}).get("role")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
    if recorded is not None and recorded != role:
        raise CheckpointError(f"{file} holds the {recorded!r} network, not {role!r}: files were swapped or renamed")
    error = state_dict_mismatch(module.state_dict(), tensors)
    if error is not None:
        raise CheckpointError(f"{file} does not fit this run's {role}: {error}") from error
    return tensors


def read_training_state(
    path: str | os.PathLike, *, modules: dict[str, nn.Module], map_location: str | torch.device = "cpu"
) -> TrainingState:
    """Read and check a checkpoint of `save_training_state` in full, changing no module.

    Checks every file's digest and role against ``manifest.json``, every network's keys and shapes against
    ``modules``, and that ``state.pt`` loads with ``weights_only=True``. A checkpoint without a manifest (written
    by scoredistill 0.1) is read with a
    [`LegacyCheckpointWarning`][scoredistill.training.checkpoint.LegacyCheckpointWarning]
    and without the digest check.

    Args:
        path: The checkpoint directory. If it is missing but a killed write left a complete version beside it,
            that version is renamed into place first.
        modules: The networks the checkpoint must fit, by name (only read, never changed).
        map_location: Where the tensors of ``state.pt`` go.

    Raises:
        FileNotFoundError: There is no checkpoint at ``path``.
        CheckpointError: Anything else: a missing, damaged, swapped or mis-shaped file (the message names it).
    """
    path = Path(path)
    if not recover_directory(path) or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"no training state at {path} (expected {path / STATE_FILE})")
    expected = {f"{name}.safetensors" for name in modules} | {STATE_FILE}
    manifest = _read_manifest(path, expected)
    for name in sorted(expected):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}: the checkpoint is incomplete")
    tensors = {}
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        _verify(file, None if manifest is None else manifest[file.name], name)
        tensors[name] = _read_network(file, name, module)
    file = path / STATE_FILE
    _verify(file, None if manifest is None else manifest[STATE_FILE], "state")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError, AttributeError) as err:
        raise CheckpointError(f"{file} cannot be read with torch.load(weights_only=True): {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} must hold a dict, got {type(state).__name__}")
    return TrainingState(path, tensors, state)


@torch.no_grad()
def apply_networks(loaded: TrainingState, modules: dict[str, nn.Module]) -> None:
    """Copy the networks of a checkpoint checked by `read_training_state` into ``modules``."""
    for name, module in modules.items():
        module.load_state_dict(loaded.tensors[name], strict=True)


def load_training_state(
    path: str | os.PathLike, *, modules: dict[str, nn.Module], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint of `save_training_state` into ``modules`` and return its state.

    Everything is read and checked first, by
    [`read_training_state`][scoredistill.training.checkpoint.read_training_state], so a refused checkpoint changes
    nothing.

    Raises:
        FileNotFoundError: There is no checkpoint at ``path``.
        CheckpointError: A missing, damaged, swapped or mis-shaped file (the message names it).
    """
    loaded = read_training_state(path, modules=modules, map_location=map_location)
    apply_networks(loaded, modules)
    return loaded.state
