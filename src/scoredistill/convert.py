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

and refuses anything else with an [`UnsafePickleError`][scoredistill.convert.UnsafePickleError] that names the global.
The unpickler also bounds what a hostile file can make it do: BUILD (``__setstate__``) applies only to records, arrays
and dtypes that it created itself, with state of the expected form (never to an allow-listed function or class); dict
keys and set items must be plain scalars (no hash bombs); every tensor view must fit inside its storage and every array
its file, and all views together may hold at most `MAX_VIEW_EXPANSION` times the file's own size (views that overlap,
such as a stride of 0, would otherwise make a small file declare gigabytes of weights); and error messages name
untrusted objects by their type, never by ``repr``. A pure key-mapping
function (`module_state_dict`) then walks the recorded ``_parameters``/``_buffers``/``_modules`` (each
module once: a shared or cyclic module graph is refused) into an EDM-keyed state dict, which
[`load_edm_pickle`][scoredistill.convert.load_edm_pickle] loads strictly into our clean-room networks, after checking
that the recorded kwargs do not declare a network larger than the weights the file holds.

Opt-in and never imported by ``scoredistill`` itself; the public artefacts are safetensors (see below).
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import functools
import io
import math
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .io._untrusted import safe_type_name, truncate
from .networks.presets import EDMUNetConfig, config_from_edm_kwargs, load_edm_state_dict
from .networks.registry import backbone_facts
from .roles.precond import Precond, edm_precond

__all__ = [
    "MAX_VIEW_EXPANSION",
    "EDMNetworkRecord",
    "RecordedObject",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_edm_pickle",
    "module_state_dict",
    "read_edm_network",
    "read_edm_pickle",
]


MAX_VIEW_EXPANSION = 2
"""Largest ratio of the bytes all tensor views of a pickle describe to the pickle's own size (plus 1 MiB).

Each tensor of an EDM pickle views its own storage, so together they hold about the file's size; views that
overlap (a stride of 0, or many views of one storage) can declare far more, which copying them would allocate.
"""

_VIEW_SLACK = 2**20


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing from it was executed."""


_ATOMS = (str, bytes, int, float, bool, type(None))
"""Types allowed as dict keys and set items: hashing them takes time linear in their size."""


def _check_atom(key: Any, what: str) -> None:
    # A tuple key would be hashed recursively: a tuple DAG of depth 40 (a few hundred bytes) never finishes.
    if not isinstance(key, _ATOMS):
        raise UnsafePickleError(f"{what} must be a str or number, got a {safe_type_name(key)}")


@dataclass(eq=False)
class RecordedObject:
    """An object the pickle would have rebuilt by running code; here only its recorded data.

    Attributes:
        class_name: The recorded class (``EDMPrecond``, ``SongUNet``, ``torch.nn.ModuleDict``, ...).
        state: The recorded instance ``__dict__`` (for modules: ``_parameters``, ``_buffers``, ``_modules``, ...).
    """

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The state is untrusted and may be a DAG: never repr it.
        return f"RecordedObject({truncate(self.class_name)!r}, {len(self.state)} state entries)"

    def __setstate__(self, state: Any) -> None:
        # Called by pickle's BUILD for the inert stand-ins of torch.nn classes (checked by _build first).
        self.state = dict(state[0] if isinstance(state, tuple) else state or {})


def _capture_persistent_obj(meta: Any) -> RecordedObject:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the state, drops the source."""
    if not isinstance(meta, Mapping) or meta.get("type") != "class" or not isinstance(meta.get("state"), Mapping):
        raise UnsafePickleError("torch_utils.persistence record without a class state: unsupported format")
    class_name = meta.get("class_name", "?")
    if not isinstance(class_name, str):
        raise UnsafePickleError(f"persistent record's class_name must be a str, got a {safe_type_name(class_name)}")
    return RecordedObject(class_name, dict(meta["state"]))


def _inert_class(name: str) -> type:
    """A class that pickle can ``__new__`` and ``BUILD`` into a `RecordedObject` without running code."""

    def __new__(cls: type, *args: Any, **kwargs: Any) -> RecordedObject:
        return RecordedObject(name)

    return type(f"Recorded[{name}]", (), {"__new__": __new__})


class _EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access in EDM)."""


def _load_storage_from_bytes(data: bytes) -> Any:
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"torch.storage._load_from_bytes takes bytes, got a {safe_type_name(data)}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _index_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise UnsafePickleError(f"{what} must be a tuple of non-negative ints, got a {safe_type_name(value)}")
    return value


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
    *,
    budget: list[int] | None = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``, once the view is known to lie inside its storage.

    ``Tensor.set_`` grows a storage that is too small for the view with uninitialised memory: a few bytes of
    pickle could ask for gigabytes. Hooks and tensor metadata are refused (EDM weights have none). ``budget`` is a
    one-element list holding the bytes that views may still describe; each view's bytes are taken from it.
    """
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"tensor storage must be a typed torch storage, got a {safe_type_name(storage)}")
    size, stride = _index_tuple(tuple(size), "tensor size"), _index_tuple(tuple(stride), "tensor stride")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or len(size) != len(stride):
        raise UnsafePickleError("tensor offset must be a non-negative int and size and stride of one length")
    if backward_hooks or metadata or not isinstance(requires_grad, bool):
        raise UnsafePickleError("tensors with backward hooks or metadata are not supported")
    capacity = storage._untyped_storage.nbytes() // storage.dtype.itemsize
    if math.prod(size) > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= capacity:
            raise UnsafePickleError(
                f"tensor view of size {list(size)[:8]}, stride {list(stride)[:8]} at offset {offset} reaches element "
                f"{last}, past its storage of {capacity}: the file is corrupt or hostile"
            )
    if budget is not None:
        budget[0] -= math.prod(size) * storage.dtype.itemsize
        if budget[0] < 0:
            raise UnsafePickleError(
                f"the pickle's tensor views describe more than {MAX_VIEW_EXPANSION} times its own size (views "
                f"that overlap, e.g. a stride of 0; this one has size {list(size)[:8]}, stride {list(stride)[:8]}): "
                "the file is corrupt or hostile (scoredistill.convert.MAX_VIEW_EXPANSION)"
            )
    return torch._utils._rebuild_tensor_v2(storage, offset, torch.Size(size), stride, requires_grad, OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, *state: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise UnsafePickleError(f"a parameter must wrap a tensor, got a {safe_type_name(data)}")
    return data.detach()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); nothing else is accepted.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only as (str, 'latin1')")
    return text.encode("latin1")


def _checked_set(items: Any = ()) -> set:
    items = list(items)
    for item in items:
        _check_atom(item, "a set item")
    return set(items)


def _checked_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_checked_set(items))


class _OrderedDict(OrderedDict):
    """``collections.OrderedDict`` whose constructor (protocol 2's REDUCE) takes only scalar keys."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        for key, value in args[0] if args else ():
            _check_atom(key, "a dict key")
            self[key] = value


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    # Always a fresh copy: np.dtype("f4") is a process-wide singleton that BUILD must never reach.
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtypes must be named by a str, got a {safe_type_name(spec)}")
    dtype = np.dtype(spec, align=bool(align), copy=True)
    if dtype.hasobject:
        raise UnsafePickleError("numpy object dtypes are not allowed")
    return dtype


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalars must be a plain dtype and bytes")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls: type, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy array subclass {safe_type_name(cls)} is not allowed")
    # numpy pickles an empty placeholder here and sets the real shape and data in BUILD.
    if math.prod(_index_tuple(tuple(shape), "numpy shape")) > 0:
        raise UnsafePickleError("numpy arrays must be rebuilt empty, then filled from their pickled data")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("builtins", "set"): _checked_set,
    ("builtins", "frozenset"): _checked_frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _capture_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    **{(mod, "scalar"): _numpy_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_reconstruct"): _numpy_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
}


def _check_dtype_state(state: Any) -> None:
    # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
    if not (isinstance(state, tuple) and 8 <= len(state) <= 9):
        raise UnsafePickleError(f"numpy dtype state must be a tuple of 8 or 9 fields, got a {safe_type_name(state)}")
    if not all(isinstance(v, (str, int, type(None))) and not isinstance(v, bool) for v in state):
        raise UnsafePickleError("numpy dtype state may hold only strings, ints and None (no structured dtypes)")


def _check_array_state(array: np.ndarray, state: Any) -> None:
    # numpy's array state: (version, shape, dtype, is_fortran, raw bytes).
    if not (isinstance(state, tuple) and len(state) == 5):
        raise UnsafePickleError(f"numpy array state must be a tuple of 5 fields, got a {safe_type_name(state)}")
    _, shape, dtype, _, raw = state
    shape = _index_tuple(tuple(shape) if isinstance(shape, (tuple, list)) else shape, "numpy shape")
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, bytes):
        raise UnsafePickleError("numpy arrays must hold a plain dtype and raw bytes (no object arrays)")
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise UnsafePickleError(f"numpy array of shape {list(shape)[:8]} does not match its {len(raw)} data bytes")


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the allow-listed globals above; see the module docstring.

    ``torch.nn.modules.*`` classes become inert `RecordedObject` records. Every other global raises
    [`UnsafePickleError`][scoredistill.convert.UnsafePickleError] naming it. This is Python's own unpickler with the
    opcodes that reach objects (BUILD, SETITEM(S), APPEND(S), ADDITEMS, DICT, FROZENSET) checked; see the module
    docstring.

    Args:
        file: The pickle, opened in binary mode.
        size: The pickle's size in bytes: its tensor views may describe at most `MAX_VIEW_EXPANSION` times this
            (plus 1 MiB) together. ``None`` leaves them unbounded (only each view's fit in its storage is checked).
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], *, size: int | None = None) -> None:
        super().__init__(file)
        # Objects this unpickler created by calling an allow-listed callable (kept alive so ids stay unique).
        self._made: dict[int, Any] = {}
        # Bytes that the tensor views may still describe, from the file's size (None: unbounded).
        self._view_budget = None if size is None else [MAX_VIEW_EXPANSION * size + _VIEW_SLACK]

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles use Python 2 names (__builtin__.set); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED:
            found = _ALLOWED[module, name]
            if found is _rebuild_tensor and self._view_budget is not None:
                return functools.partial(_rebuild_tensor, budget=self._view_budget)
            return found
        if module.startswith("torch.nn.modules.") and name.isidentifier() and name[:1].isupper():
            return _inert_class(f"torch.nn.{name}")
        raise UnsafePickleError(
            f"refusing to load global {truncate(module)}.{truncate(name)}: it is not on scoredistill.convert's "
            "allow-list (EDM pickles need only torch tensor rebuilders, OrderedDict and torch_utils.persistence "
            "records)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing a persistent id (a {safe_type_name(pid)}): EDM network pickles use none")

    # Opcodes that create objects: remember what they made.
    def _made_by(opcode: bytes) -> Any:  # type: ignore[misc]
        original = pickle._Unpickler.dispatch[opcode[0]]

        def load(self: RestrictedUnpickler) -> None:
            original(self)
            made = self.stack[-1]
            self._made[id(made)] = made

        return load

    for _op in (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST):
        dispatch[_op[0]] = _made_by(_op)

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if id(inst) not in self._made or not isinstance(inst, (RecordedObject, np.ndarray, np.dtype)):
            raise UnsafePickleError(
                f"refusing to set the state of a {safe_type_name(inst)}: BUILD applies only to module records, "
                "numpy arrays and dtypes that this pickle created"
            )
        if isinstance(inst, RecordedObject):
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise UnsafePickleError(
                    f"the state of {truncate(inst.class_name)} must be a dict with str keys, "
                    f"got a {safe_type_name(state)}"
                )
        elif isinstance(inst, np.ndarray):
            _check_array_state(inst, state)
        else:
            _check_dtype_state(state)
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = _build

    # Opcodes that fill containers: only real dicts, lists and sets, with scalar keys.
    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise UnsafePickleError(f"SETITEMS on a {safe_type_name(target)}: only dicts take items")
        for i in range(0, len(items), 2):
            _check_atom(items[i], "a dict key")
            target[items[i]] = items[i + 1]

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise UnsafePickleError(f"SETITEM on a {safe_type_name(target)}: only dicts take items")
        _check_atom(key, "a dict key")
        target[key] = value

    def _dict(self) -> None:
        items = self.pop_mark()
        for key in items[::2]:
            _check_atom(key, "a dict key")
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def _appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafePickleError(f"APPENDS on a {safe_type_name(target)}: only lists take items")
        target.extend(items)

    def _append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafePickleError(f"APPEND on a {safe_type_name(target)}: only lists take items")
        target.append(value)

    def _additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafePickleError(f"ADDITEMS on a {safe_type_name(target)}: only sets take items")
        target.update(_checked_set(items))

    def _frozenset(self) -> None:
        self.append(_checked_frozenset(self.pop_mark()))

    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.DICT[0]] = _dict
    dispatch[pickle.APPENDS[0]] = _appends
    dispatch[pickle.APPEND[0]] = _append
    dispatch[pickle.ADDITEMS[0]] = _additems
    dispatch[pickle.FROZENSET[0]] = _frozenset
    del _made_by, _op


def read_edm_pickle(file: str | os.PathLike[str] | IO[bytes] | bytes) -> Any:
    """Unpickle an EDM-family ``.pkl`` with `RestrictedUnpickler`; persistent objects become records.

    Args:
        file: A path, an open binary file or the bytes themselves.

    Returns:
        The root object, typically ``{'ema': RecordedObject('EDMPrecond'), ...}``.

    Raises:
        UnsafePickleError: The pickle names a global outside the allow-list, or is malformed, truncated or hostile.
    """
    if isinstance(file, (bytes, bytearray)):
        return _load(io.BytesIO(file), len(file))
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return _load(f, os.fstat(f.fileno()).st_size)
    if file.seekable():
        start = file.tell()
        size = file.seek(0, os.SEEK_END) - start
        file.seek(start)
        return _load(file, size)
    data = file.read()
    return _load(io.BytesIO(data), len(data))


class _BoundedReader:
    """A file that never returns (or asks its file to allocate) more than the ``size`` bytes left in it.

    A pickle opcode can declare a 2^40-byte string; a buffered file allocates what ``read(n)`` asks for.
    """

    def __init__(self, file: IO[bytes], size: int):
        self._file, self._left = file, size

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._file.readinto(memoryview(buffer).cast("B")[: self._left]) or 0
        self._left -= count
        return count

    def readline(self) -> bytes:
        line = self._file.readline(self._left)
        self._left -= len(line)
        return line


# What a malformed pickle makes Python's unpickler raise; reported as UnsafePickleError, with pickle's own message
# only for the types whose message holds no untrusted object (a KeyError's message is the repr of its key).
_MALFORMED = (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError)
_MALFORMED += (RuntimeError, MemoryError, OverflowError, struct.error)


def _load(file: IO[bytes], size: int) -> Any:
    try:
        return RestrictedUnpickler(_BoundedReader(file, size), size=size).load()  # type: ignore[arg-type]
    except UnsafePickleError:
        raise
    except _MALFORMED as err:
        detail = f": {truncate(str(err), 200)}" if isinstance(err, (EOFError, pickle.UnpicklingError)) else ""
        raise UnsafePickleError(f"malformed or truncated pickle ({type(err).__name__}{detail})") from None


def module_state_dict(record: RecordedObject, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of a recorded ``nn.Module`` tree: parameters and persistent buffers, by dotted name.

    Mirrors ``nn.Module.state_dict()`` order (a module's parameters, then its buffers, then its children);
    ``None`` entries and buffers in ``_non_persistent_buffers_set`` are skipped. Each recorded module is visited
    once, so the work is linear in the pickle's size: a module reached twice (a shared or cyclic graph, which a
    few KB of pickle can nest into exponentially many paths) is refused.

    Args:
        record: A recorded module (for example ``read_edm_pickle(path)['ema']``).
        prefix: Prepended to every key.

    Returns:
        EDM-keyed float tensors, e.g. ``{'model.map_layer0.weight': ...}`` for an ``EDMPrecond``.

    Raises:
        TypeError: A child that is not a recorded module.
        ValueError: A record that is not a torch module, a non-tensor parameter, or a shared or cyclic graph.
    """
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(record, prefix)]
    while stack:
        node, where = stack.pop()
        name_of = truncate(where.removesuffix(".")) or "<root>"
        if not isinstance(node, RecordedObject):
            raise TypeError(f"expected a recorded module at {name_of!r}, got a {safe_type_name(node)}")
        if id(node) in seen:
            raise ValueError(f"module {name_of!r} is reached twice: EDM networks are trees, not shared graphs")
        seen.add(id(node))
        state = node.state
        groups = [state.get(k, {}) for k in ("_parameters", "_buffers", "_modules")]
        if not all(isinstance(group, Mapping) for group in groups):
            raise ValueError(f"{truncate(node.class_name)} at {name_of!r} is not a recorded torch module")
        non_persistent = state.get("_non_persistent_buffers_set", frozenset())
        if not isinstance(non_persistent, (set, frozenset)):
            raise ValueError(f"_non_persistent_buffers_set at {name_of!r} is a {safe_type_name(non_persistent)}")
        for group_name, group in zip(("_parameters", "_buffers"), groups[:2], strict=True):
            for name, value in group.items():
                if value is None or (group_name == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, Tensor):
                    raise ValueError(f"{truncate(where + str(name))} is a {safe_type_name(value)}, not a tensor")
                out[where + str(name)] = value.detach()
        children = [(child, f"{where}{name}.") for name, child in groups[2].items() if child is not None]
        stack.extend(reversed(children))
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
        keys = sorted(map(str, root))[:20] if isinstance(root, Mapping) else safe_type_name(root)
        raise KeyError(f"no {key!r} network in this pickle (found {truncate(str(keys), 400)})")
    record = root[key]
    if not isinstance(record, RecordedObject):
        raise TypeError(f"{key!r} is a {safe_type_name(record)}, not a recorded EDM module")
    recorded_args = record.state.get("_init_args") or ()
    if recorded_args:
        raise ValueError(
            f"{truncate(record.class_name)} was built with positional args (a {safe_type_name(recorded_args)}): "
            "pass config="
        )
    kwargs = record.state.get("_init_kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{truncate(record.class_name)}'s recorded init kwargs are not a dict with str keys")
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
            [`edm_precond`][scoredistill.roles.precond.edm_precond].

    Returns:
        The preconditioned network in eval mode on CPU, float32.

    Raises:
        UnsafePickleError: The pickle names a global outside the allow-list, or is malformed or hostile.
        ValueError: The recorded kwargs declare a network larger than the weights the file holds (checked before
            anything is built), or ``sigma_data`` is not a positive finite number.
        StateDictMismatchError: The weights do not fit the network; every bad key is named.
    """
    record = read_edm_network(file, key)
    sigma_data = record.init_kwargs.get("sigma_data", 0.5)
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < math.inf:
        raise ValueError(f"sigma_data must be a positive finite number, got a {safe_type_name(sigma_data)}")
    config = config if config is not None else record.config()
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise ValueError(f"unknown {type(config).__name__} fields {unknown}")
        config = dataclasses.replace(config, **overrides)
    # The declared size against what the file holds, before building: a 400-byte pickle must not make us
    # build a 3.5-billion-parameter network only to find that its weights are missing.
    facts = backbone_facts(type(config).__name__.removesuffix("Config"), config.to_dict())
    min_tensors, min_elements = facts.min_tensors, facts.min_elements
    held = sum(v.numel() for v in record.state_dict.values())
    if min_tensors > len(record.state_dict) or min_elements > held:
        raise ValueError(
            f"{truncate(record.class_name)}'s recorded kwargs declare a network of at least {min_elements:,} "
            f"parameters in {min_tensors:,} tensors, but the pickle holds {held:,} in {len(record.state_dict):,}: "
            "the file is truncated, or its kwargs are wrong (pass config=)"
        )
    with torch.device("meta"):
        net = edm_precond(config, sigma_data=float(sigma_data))
    # Own, contiguous copies: the pickle's tensors may be views that share storage.
    state = {
        k: v.to(torch.float32 if v.is_floating_point() else v.dtype, memory_format=torch.contiguous_format, copy=True)
        for k, v in record.state_dict.items()
    }
    net = load_edm_state_dict(net, state, assign=True)
    leftovers = [k for k, v in [*net.named_parameters(), *net.named_buffers()] if v.is_meta]
    if leftovers:  # pragma: no cover - every tensor of our networks is in its state dict
        raise ValueError(f"{leftovers[:5]} were not restored from the pickle")
    return net.eval()
