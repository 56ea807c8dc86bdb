"""The artefact format: one role per directory, ``config.json`` + ``model.safetensors`` (+ a ``README.md`` card).

This module reads and writes the format on local disk and knows nothing of the Hub (see
`scoredistill.io.hub` for that). ``config.json`` reads::

    {
      "_class_name": "OneStepGenerator",        # the role
      "_scoredistill_version": "0.1.0",
      "format_version": 1,
      "sigma_init": 2.5, "sample_shape": [3, 32, 32], "label_dim": 0,    # the role's to_config() ...
      "precond": {"label_dim": 0, "augment_dim": 9, "sigma_data": 0.5},  # ... with its Precond's args
      "backbone": {"_class_name": "SongUNet", "config": {...}},           # ... and backbone
      "torch_dtype": "float32",                 # dtype of the stored weights
      "teacher_id": "org/edm-cifar10", "teacher_revision": "abc123",     # provenance, or null
      "training": {...}                         # how it was made (free-form), or null
    }

Reading is strict: a malformed file, an unknown class, a newer ``format_version``, or any missing, unexpected or
mis-shaped weight raises an error that names the file. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._io import StateDictMismatchError, load_state_dict_strict
from .._version import __version__
from ._untrusted import check_artefact_config

__all__ = [
    "CONFIG_NAME",
    "DTYPES",
    "FORMAT_VERSION",
    "META_KEYS",
    "MODEL_CARD_NAME",
    "ROLES",
    "WEIGHTS_NAME",
    "CheckpointError",
    "WeightsMismatchError",
    "artefact_config",
    "load_weights",
    "read_config",
    "save_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
"""Version of the artefact layout; readers refuse a newer one."""

ROLES: dict[str, type[nn.Module]] = {}
"""The classes an artefact may name in ``_class_name``, by class name (every ``HubMixin`` subclass adds itself)."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The values of ``torch_dtype``."""

META_KEYS = ("_class_name", "_scoredistill_version", "format_version", "torch_dtype", "teacher_id")
META_KEYS += ("teacher_revision", "training")
"""The keys of ``config.json`` that are not the role's ``to_config()``."""


class CheckpointError(ValueError):
    """A malformed or incompatible artefact (bad JSON, corrupt weights, unknown class, newer format, ...).

    The message names the offending file.
    """


class WeightsMismatchError(StateDictMismatchError, CheckpointError):
    """``model.safetensors`` does not fit the module that ``config.json`` describes; every bad key is named.

    Attributes:
        file: The weights file.
        missing: Keys the module has but the file lacks.
        unexpected: Keys the file has but the module lacks.
        mismatched: ``(key, expected_shape, got_shape)`` for keys whose shapes differ.
    """

    def __init__(
        self, file: str | Path, missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]
    ):
        super().__init__(missing, unexpected, mismatched)
        self.file = str(file)
        self.args = (f"{file} does not match the network described by {CONFIG_NAME}: {self.args[0]}",)


def artefact_config(
    role: nn.Module,
    *,
    dtype: torch.dtype = torch.float32,
    teacher_id: str | None = None,
    teacher_revision: str | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``config.json`` of ``role``: class, versions, ``role.to_config()``, weights dtype and provenance.

    Raises:
        ValueError: ``dtype`` is not one of [`DTYPES`][scoredistill.io.artefact.DTYPES].
        TypeError: ``training`` (or the role's config) is not plain JSON.
    """
    dtype_name = next((k for k, v in DTYPES.items() if v == dtype), None)
    if dtype_name is None:
        raise ValueError(f"dtype must be one of torch.{', torch.'.join(DTYPES)}, got {dtype}")
    config = {
        "_class_name": type(role).__name__,
        "_scoredistill_version": __version__,
        "format_version": FORMAT_VERSION,
        **role.to_config(),
        "torch_dtype": dtype_name,
        "teacher_id": teacher_id,
        "teacher_revision": teacher_revision,
        "training": dict(training) if training is not None else None,
    }
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"config.json must be plain JSON (check `training`): {err}") from err
    return config


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``directory/config.json``: a JSON object of a known role and a readable format version.

    Raises:
        FileNotFoundError: The directory has no ``config.json``.
        CheckpointError: The file is malformed, names an unknown role or dtype, or is of a newer format.
    """
    file = Path(directory) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a scoredistill artefact")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # ValueError: also a 5000-digit int
        raise CheckpointError(f"{file} is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in ("_class_name", "format_version") if k not in config]
    if missing:
        raise CheckpointError(f"{file}: the config lacks {missing}")
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version {version}, newer than this scoredistill reads ({FORMAT_VERSION}); it was "
            f"written by scoredistill {config.get('_scoredistill_version', '?')}: upgrade scoredistill"
        )
    check_artefact_config(config, file)  # every key's type and range, and its agreement with the backbone
    if config["_class_name"] not in ROLES:
        raise CheckpointError(f"{file}: unknown _class_name {config['_class_name']!r}; expected one of {sorted(ROLES)}")
    dtype = config.get("torch_dtype", "float32")
    if dtype not in DTYPES:
        raise CheckpointError(f"{file}: torch_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return config


def save_weights(module: nn.Module, file: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """Write ``module``'s state dict to ``file``, its floating-point parameters as ``dtype`` (buffers as they are)."""
    params = {name for name, _ in module.named_parameters()}
    state: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        value = value.detach()
        if key in params and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.cpu().contiguous()
    save_file(state, str(file), metadata={"format": "pt", "scoredistill_format_version": str(FORMAT_VERSION)})


def load_weights(module: nn.Module, file: str | Path, device: torch.device | str = "cpu") -> None:
    """Strictly load ``file`` into ``module`` (built on the meta device, or not) by assignment.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is not readable safetensors, or a tensor is of the wrong kind;
            [`WeightsMismatchError`][scoredistill.io.artefact.WeightsMismatchError] lists every bad key.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file.parent} has no {file.name}")
    try:
        state = load_file(str(file), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    expected = module.state_dict()
    kinds = [k for k, v in state.items() if k in expected and v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"{file}: tensors {kinds} are not of the expected kind (floating point or integer)")
    try:
        load_state_dict_strict(module, state, assign=True)
    except StateDictMismatchError as err:
        raise WeightsMismatchError(file, err.missing, err.unexpected, err.mismatched) from None
    leftovers = [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta]
    if leftovers:
        raise CheckpointError(f"{file}: {leftovers} were not restored")
