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

The manifest is an unkeyed digest: it catches damage and swapped files, not someone who can edit the files and
re-sign them. So everything read is also treated as untrusted input: the manifest's size and form
(`MAX_MANIFEST_BYTES`), each file's type (a regular file, never a link) and size before it is hashed, and the
structure of ``state.pt`` (at most `MAX_STATE_ITEMS` containers and values, nested at most `MAX_STATE_DEPTH`
deep, so that a shared or deeply nested structure cannot hang or exhaust the checks that follow).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import Tensor, nn

from .._io import atomic_directory, recover_directory, state_dict_mismatch
from ..io._untrusted import safe_type_name, truncate
from ..io.artefact import CheckpointError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_STATE_DEPTH",
    "MAX_STATE_ITEMS",
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
_DIGEST = re.compile(r"[0-9a-f]{64}")

MAX_MANIFEST_BYTES = 2**20
"""Largest ``manifest.json`` read (1 MiB; one of a run with ten networks has about 1 KB)."""

MAX_STATE_ITEMS = 100_000
"""Most containers and values in ``state.pt``, counted as a tree (a structure shared many times counts each time)."""

MAX_STATE_DEPTH = 16
"""Deepest nesting of containers in ``state.pt`` (a checkpoint of `Distiller.save` nests 5 deep)."""


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
    """Whether ``path`` holds a checkpoint to resume from (its ``state.pt`` exists; the readers check the rest).

    First puts back the checkpoint that a write killed in the middle of its swap left beside a missing ``path``.
    """
    path = Path(path)
    return recover_directory(path) and os.path.lexists(path / STATE_FILE)


def _regular_size(file: Path) -> int:
    """The size of ``file``, refusing anything but a regular file (a link, folder, FIFO or device)."""
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {file.parent} has no {file.name}: the checkpoint is incomplete") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{file} is not a regular file (a link, folder or FIFO?): checkpoints hold files only")
    return info.st_size


def _check_manifest(manifest: Any) -> dict[str, dict]:
    """The manifest's ``files``, once its form is exactly what `save_training_state` writes; raises ValueError."""
    if not isinstance(manifest, dict) or set(manifest) != {"format", "files"}:
        raise ValueError("it must be an object with exactly 'format' and 'files'")
    if type(manifest["format"]) is not int or manifest["format"] != MANIFEST_FORMAT:
        raise ValueError(f"format must be {MANIFEST_FORMAT}")
    entries = manifest["files"]
    if not isinstance(entries, dict):
        raise ValueError(f"files must be an object, got a {safe_type_name(entries)}")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"role", "bytes", "sha256"}:
            raise ValueError(f"entry {truncate(name)!r} must have exactly a role, bytes and sha256")
        if not isinstance(entry["role"], str) or not (type(entry["bytes"]) is int and entry["bytes"] >= 0):
            raise ValueError(f"entry {truncate(name)!r} needs a string role and a non-negative int of bytes")
        if not isinstance(entry["sha256"], str) or not _DIGEST.fullmatch(entry["sha256"]):
            raise ValueError(f"entry {truncate(name)!r} needs a sha256 of 64 lowercase hex digits")
    return entries


def _read_manifest(path: Path, expected: set[str], allow_legacy: bool) -> dict[str, dict] | None:
    file = path / MANIFEST_FILE
    if not os.path.lexists(file):
        if not allow_legacy:
            raise CheckpointError(
                f"{path} has no {MANIFEST_FILE}, so its files' integrity cannot be checked; a checkpoint written by "
                "scoredistill 0.1 loads with allow_legacy=True (e.g. Distiller.load(path, allow_legacy=True))"
            )
        warnings.warn(
            f"{path} has no {MANIFEST_FILE} (written by scoredistill 0.1): its files' integrity cannot be checked; "
            "keys, shapes and the config still are. The next save writes a manifest.",
            LegacyCheckpointWarning,
            stacklevel=4,
        )
        return None
    size = _regular_size(file)
    if size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{file} has {size:,} bytes, over MAX_MANIFEST_BYTES ({MAX_MANIFEST_BYTES:,})")
    try:
        with open(file, "rb") as f:
            entries = _check_manifest(json.loads(f.read(MAX_MANIFEST_BYTES + 1)))
    except (ValueError, RecursionError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(
            f"{file} is not a valid checkpoint manifest ({truncate(str(err), 200)}); the checkpoint is damaged"
        ) from None
    if set(entries) != expected:
        missing, extra = sorted(expected - set(entries)), sorted(map(truncate, set(entries) - expected))
        raise CheckpointError(
            f"{file} lists other files than this run saves: missing {missing}, unexpected {extra[:10]} "
            "(a checkpoint of a run with other losses or networks?)"
        )
    return entries


def _verify(file: Path, entry: dict | None, role: str) -> None:
    size = _regular_size(file)
    if entry is None:
        return
    if entry["role"] != role:
        raise CheckpointError(f"{file}: the manifest records role {truncate(entry['role'])!r}, expected {role!r}")
    if size != entry["bytes"]:  # before hashing: the file may be far larger than the manifest says
        raise CheckpointError(
            f"{file} has {size} bytes, the manifest recorded {entry['bytes']}: "
            "the file is truncated or was replaced; resume from another checkpoint"
        )
    if _sha256(file) != entry["sha256"]:
        raise CheckpointError(
            f"{file} does not match the SHA-256 digest recorded in its manifest: the file is corrupt or was "
            "replaced (e.g. swapped with another network's file); resume from another checkpoint"
        )


def _check_structure(state: Any, file: Path) -> None:
    """Refuse a ``state.pt`` structure with more than `MAX_STATE_ITEMS` items or deeper than `MAX_STATE_DEPTH`.

    Walks it as a tree with a budget, so a structure shared many times over (a DAG with 2^40 paths) is refused
    after `MAX_STATE_ITEMS` steps, never walked in full.
    """
    stack: list[tuple[Any, int]] = [(state, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_STATE_ITEMS:
            raise CheckpointError(f"{file} holds more than MAX_STATE_ITEMS ({MAX_STATE_ITEMS:,}) values")
        if depth > MAX_STATE_DEPTH:
            raise CheckpointError(f"{file} nests deeper than MAX_STATE_DEPTH ({MAX_STATE_DEPTH})")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, (str, int)):
                    raise CheckpointError(f"{file} has a dict key that is a {safe_type_name(key)}, not a str or int")
                stack.append((value, depth + 1))
        elif isinstance(node, (list, tuple)):
            stack.extend((item, depth + 1) for item in node)


def _read_network(file: Path, role: str, module: nn.Module) -> dict[str, Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            recorded = (f.metadata() or {}).get("role")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors file: {truncate(str(err), 200)}") from err
    if recorded is not None and recorded != role:
        raise CheckpointError(
            f"{file} holds the {truncate(recorded)!r} network, not {role!r}: files were swapped or renamed"
        )
    error = state_dict_mismatch(module.state_dict(), tensors)
    if error is not None:  # the keys are untrusted: a few of them, on one line
        summary = truncate("; ".join(str(error).splitlines()[:6]), 600)
        raise CheckpointError(f"{file} does not fit this run's {role}: {summary}") from error
    return tensors


def read_training_state(
    path: str | os.PathLike,
    *,
    modules: dict[str, nn.Module],
    map_location: str | torch.device = "cpu",
    allow_legacy: bool = False,
) -> TrainingState:
    """Read and check a checkpoint of `save_training_state` in full, changing no module.

    Checks the manifest's size and form, every file's type, size, digest and role against ``manifest.json``, every
    network's keys and shapes against ``modules``, and that ``state.pt`` loads with ``weights_only=True`` into a
    structure of bounded size and depth (`MAX_STATE_ITEMS`, `MAX_STATE_DEPTH`). A checkpoint without a manifest
    (written by scoredistill 0.1) is refused unless ``allow_legacy``.

    Args:
        path: The checkpoint directory. If it is missing because a write was killed between moving the previous
            version aside and renaming the new one into place, the new one is renamed into place first.
        modules: The networks the checkpoint must fit, by name (only read, never changed).
        map_location: Where the tensors of ``state.pt`` go.
        allow_legacy: Read a checkpoint without ``manifest.json`` (written by scoredistill 0.1), with a
            [`LegacyCheckpointWarning`][scoredistill.training.checkpoint.LegacyCheckpointWarning] and without the digest
            check. Only for checkpoints you wrote yourself.

    Raises:
        FileNotFoundError: There is no checkpoint at ``path``.
        CheckpointError: Anything else: a missing, damaged, swapped or mis-shaped file (the message names it).
    """
    path = Path(path)
    if not recover_directory(path) or not os.path.lexists(path / STATE_FILE):
        raise FileNotFoundError(f"no training state at {path} (expected {path / STATE_FILE})")
    expected = {f"{name}.safetensors" for name in modules} | {STATE_FILE}
    manifest = _read_manifest(path, expected, allow_legacy)
    for name in sorted(expected):
        _regular_size(path / name)
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
        raise CheckpointError(
            f"{file} cannot be read with torch.load(weights_only=True): {truncate(str(err), 200)}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} must hold a dict, got a {safe_type_name(state)}")
    _check_structure(state, file)
    return TrainingState(path, tensors, state)


@torch.no_grad()
def apply_networks(loaded: TrainingState, modules: dict[str, nn.Module]) -> None:
    """Copy the networks of a checkpoint checked by `read_training_state` into ``modules``."""
    for name, module in modules.items():
        module.load_state_dict(loaded.tensors[name], strict=True)


def load_training_state(
    path: str | os.PathLike,
    *,
    modules: dict[str, nn.Module],
    map_location: str | torch.device = "cpu",
    allow_legacy: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint of `save_training_state` into ``modules`` and return its state.

    ``allow_legacy`` is as for `read_training_state`. Everything is read and checked first, by
    [`read_training_state`][scoredistill.training.checkpoint.read_training_state], so a refused checkpoint changes
    nothing.

    Raises:
        FileNotFoundError: There is no checkpoint at ``path``.
        CheckpointError: A missing, damaged, swapped or mis-shaped file (the message names it).
    """
    loaded = read_training_state(path, modules=modules, map_location=map_location, allow_legacy=allow_legacy)
    apply_networks(loaded, modules)
    return loaded.state
