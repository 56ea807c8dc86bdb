"""Read EDM / SiD / SiDA network pickles without executing the code embedded in them.

EDM-family ``.pkl`` files are plain pickles of ``{'ema': <EDMPrecond>, ...}`` whose modules are
``torch_utils.persistence`` classes: each records its class source code and its state, and is rebuilt on load
by ``torch_utils.persistence._reconstruct_persistent_obj``, which executes that source. This
module never does. `RestrictedUnpickler` resolves only an explicit allow-list of globals:

- tensor and storage rebuild functions (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``,
  ``torch.Size``; ``torch.storage._load_from_bytes`` is replaced by ``torch.load(..., weights_only=True)``),
- ``collections.OrderedDict``, ``builtins.set``/``frozenset``, ``_codecs.encode`` (latin-1 only: protocol-2
  bytes) and numpy's array/scalar/dtype rebuilders,
- ``torch_utils.persistence._reconstruct_persistent_obj``, replaced by a function that only captures the
  recorded class name and state into a `RecordedObject` (the source is dropped unread),
- ``torch.nn`` module classes (``ModuleDict``) and ``dnnlib.util.EasyDict``, replaced by inert records,

and refuses anything else with an `UnsafePickleError` that names the global. A pure key-mapping
function (`module_state_dict`) then walks the recorded ``_parameters``/``_buffers``/``_modules`` into an
EDM-keyed state dict, which [`load_edm_pickle`][scoredistill.convert.load_edm_pickle] loads strictly into our clean-room
networks.

Opt-in and never imported by ``scoredistill`` itself; the public artefacts are safetensors (see below).
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from .networks.presets import EDMUNetConfig, config_from_edm_kwargs, load_edm_state_dict
from .precond import Precond, edm_precond

__all__ = [
    "EDMNetworkRecord",
    "RecordedObject",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_edm_pickle",
    "module_state_dict",
    "read_edm_network",
    "read_edm_pickle",
]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing from it was executed."""


@dataclass
class RecordedObject:
    """An object the pickle would have rebuilt by running code; here only its recorded data.

    Attributes:
        class_name: The recorded class (``EDMPrecond``, ``SongUNet``, ``torch.nn.ModuleDict``, ...).
        state: The recorded instance ``__dict__`` (for modules: ``_parameters``, ``_buffers``, ``_modules``, ...).
    """

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        # Called by pickle's BUILD for the inert stand-ins of torch.nn classes.
        self.state = dict(state[0] if isinstance(state, tuple) else state or {})


def _capture_persistent_obj(meta: Any) -> RecordedObject:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the state, drops the source."""
    if not isinstance(meta, Mapping) or meta.get("type") != "class" or not isinstance(meta.get("state"), Mapping):
        raise UnsafePickleError("torch_utils.persistence record without a class state: unsupported format")
    return RecordedObject(str(meta.get("class_name", "?")), dict(meta["state"]))


def _inert_class(name: str) -> type:
    """A class that pickle can ``__new__`` and ``BUILD`` into a `RecordedObject` without running code."""

    def __new__(cls: type, *args: Any, **kwargs: Any) -> RecordedObject:
        return RecordedObject(name)

    return type(f"Recorded[{name}]", (), {"__new__": __new__})


class _EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access in EDM)."""


def _load_storage_from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_parameter(data: Tensor, requires_grad: bool, backward_hooks: Any, *state: Any) -> Tensor:
    return data.detach()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); nothing else is accepted.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is allowed only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if dtype.hasobject or data is None:
        raise UnsafePickleError(f"numpy object scalar of dtype {dtype} is not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls: type, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy array subclass {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _capture_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    **{(mod, "scalar"): _numpy_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_reconstruct"): _numpy_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed globals above; see the module docstring.

    ``torch.nn.modules.*`` classes become inert `RecordedObject` records. Every other global raises
    `UnsafePickleError` naming it.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles use Python 2 names (__builtin__.set); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module.startswith("torch.nn.modules.") and name.isidentifier() and name[:1].isupper():
            return _inert_class(f"torch.nn.{name}")
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: it is not on scoredistill.convert's allow-list "
            "(EDM pickles need only torch tensor rebuilders, OrderedDict and torch_utils.persistence records)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: EDM network pickles use none")


def read_edm_pickle(file: str | os.PathLike[str] | IO[bytes] | bytes) -> Any:
    """Unpickle an EDM-family ``.pkl`` with `RestrictedUnpickler`; persistent objects become records.

    Args:
        file: A path, an open binary file or the bytes themselves.

    Returns:
        The root object, typically ``{'ema': RecordedObject('EDMPrecond'), ...}``.

    Raises:
        UnsafePickleError: The pickle names a global outside the allow-list.
    """
    if isinstance(file, (bytes, bytearray)):
        return RestrictedUnpickler(io.BytesIO(file)).load()
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f).load()
    return RestrictedUnpickler(file).load()


def module_state_dict(record: RecordedObject, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of a recorded ``nn.Module`` tree: parameters and persistent buffers, by dotted name.

    Mirrors ``nn.Module.state_dict()`` order (a module's parameters, then its buffers, then its children);
    ``None`` entries and buffers in ``_non_persistent_buffers_set`` are skipped.

    Args:
        record: A recorded module (for example ``read_edm_pickle(path)['ema']``).
        prefix: Prepended to every key.

    Returns:
        EDM-keyed float tensors, e.g. ``{'model.map_layer0.weight': ...}`` for an ``EDMPrecond``.
    """
    if not isinstance(record, RecordedObject):
        raise TypeError(f"expected a recorded module at {prefix or '<root>'!r}, got {type(record).__name__}")
    state = record.state
    if not all(isinstance(state.get(k, {}), Mapping) for k in ("_parameters", "_buffers", "_modules")):
        raise ValueError(f"{record.class_name} at {prefix or '<root>'!r} is not a recorded torch module")
    out: dict[str, Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set", ()))
    for group in ("_parameters", "_buffers"):
        for name, value in state.get(group, {}).items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


@dataclass(frozen=True)
class EDMNetworkRecord:
    """One network read from an EDM-family pickle.

    Attributes:
        class_name: The recorded class, e.g. ``EDMPrecond`` or ``EDMPrecond_EncoderDecoder``.
        init_kwargs: The constructor kwargs the persistence decorator recorded (empty when absent).
        state_dict: EDM-keyed parameters and buffers (``model.enc...``).
    """

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]

    def config(self) -> EDMUNetConfig:
        """The backbone config from the recorded kwargs (see `config_from_edm_kwargs`)."""
        if not self.init_kwargs:
            raise ValueError(f"{self.class_name} recorded no init kwargs: pass config= to load_edm_pickle")
        return config_from_edm_kwargs(self.init_kwargs)


def read_edm_network(file: str | os.PathLike[str] | IO[bytes] | bytes, key: str = "ema") -> EDMNetworkRecord:
    """Read one network (default ``'ema'``) from an EDM / SiD / SiDA pickle without running its code.

    Args:
        file: A path, an open binary file or the bytes themselves.
        key: Entry of the pickled dict holding the network.

    Returns:
        The class name, recorded init kwargs and EDM-keyed state dict.
    """
    root = read_edm_pickle(file)
    if not isinstance(root, Mapping) or key not in root:
        keys = sorted(root) if isinstance(root, Mapping) else type(root).__name__
        raise KeyError(f"no {key!r} network in this pickle (found {keys})")
    record = root[key]
    if not isinstance(record, RecordedObject):
        raise TypeError(f"{key!r} is a {type(record).__name__}, not a recorded EDM module")
    recorded_args = record.state.get("_init_args") or ()
    if recorded_args:
        raise ValueError(f"{record.class_name} was built with positional args {recorded_args!r}: pass config=")
    kwargs = record.state.get("_init_kwargs") or {}
    return EDMNetworkRecord(record.class_name, dict(kwargs), module_state_dict(record))


def load_edm_pickle(
    file: str | os.PathLike[str] | IO[bytes] | bytes,
    key: str = "ema",
    *,
    config: EDMUNetConfig | None = None,
    **overrides: Any,
) -> Precond:
    """Build our clean-room ``Precond(SongUNet | DhariwalUNet)`` from an EDM-family pickle, loading it strictly.

    Args:
        file: A path, an open binary file or the bytes themselves.
        key: Entry of the pickled dict holding the network.
        config: Backbone config; by default parsed from the recorded init kwargs.
        **overrides: Config fields to replace (e.g. ``dropout=0.0``), as in
            [`edm_precond`][scoredistill.precond.edm_precond].

    Returns:
        The preconditioned network in eval mode on CPU, float32.
    """
    record = read_edm_network(file, key)
    sigma_data = float(record.init_kwargs.get("sigma_data", 0.5))
    net = edm_precond(config if config is not None else record.config(), sigma_data=sigma_data, **overrides)
    return load_edm_state_dict(net, record.state_dict).eval()
