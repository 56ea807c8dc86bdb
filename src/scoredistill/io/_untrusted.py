"""Checks on untrusted inputs that run before anything is built: safe names for error messages, and the
``config.json`` / ``model.safetensors`` checks of ``from_pretrained``.

Every check here is cheap: it reads a config, or the header of a safetensors file, never a network's weights.
What a backbone's config declares (its conditioning, sample shape and a lower bound on its size) comes from the
backbone itself, through `scoredistill.networks.registry.backbone_facts`: the loader refuses a config that
declares a network far larger than its weights file (10,000 blocks, an MLP 10^5 deep) before building it.
What a Hub endpoint answers is checked too: a commit id before it names a cache folder, and each file's bytes
against the size and hash the repo listing gave. The checks raise ``ValueError`` (``FileNotFoundError`` for a
missing file); the loader names the file or the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..schedules import SIGMA_INIT, check_sigma_init

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "CheckedDownload",
    "SafetensorsHeader",
    "check_artefact_config",
    "check_weight_dtypes",
    "check_weights_file",
    "inside",
    "is_commit_id",
    "listed_file",
    "read_safetensors_header",
    "safe_type_name",
    "truncate",
]

MAX_SAFETENSORS_HEADER = 100 * 2**20
"""Largest safetensors JSON header read (bytes); the safetensors library refuses larger ones too."""

_ELEMENT_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ELEMENT_SIZES |= {"U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safe_type_name(obj: object, limit: int = 80) -> str:
    """``module.QualName`` of ``obj``'s type, truncated: safe to put in an error message about untrusted data.

    Never calls ``repr`` or ``str`` on ``obj`` itself, which for attacker-made objects can take unbounded
    time and memory (a list nested in itself a thousand times over, a pickled object with a hostile ``__repr__``).
    """
    cls = type(obj)
    name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
    return truncate(name, limit)


def truncate(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, with ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafetensorsHeader(dict):
    """The tensors a safetensors file declares, ``{name: (dtype, shape)}``, read from its header alone."""

    @property
    def elements(self) -> int:
        """Total number of elements over all tensors."""
        return sum(math.prod(shape) for _, shape in self.values())


def read_safetensors_header(file: str | os.PathLike[str]) -> SafetensorsHeader:
    """The names, dtypes and shapes in a safetensors file, checked against the file's size; no tensor is read.

    Raises:
        ValueError: A header that is truncated, too large, not JSON, or whose entries do not fit the file.
    """
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("not a safetensors file: shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError(f"header length {length} exceeds the file ({size} bytes) or {MAX_SAFETENSORS_HEADER}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"the header is not valid JSON ({truncate(str(err))})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    out = SafetensorsHeader()
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"entry {truncate(name)!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ELEMENT_SIZES or not isinstance(shape, list) or not isinstance(offsets, list):
            raise ValueError(f"entry {truncate(name)!r} lacks a known dtype, a shape or data_offsets")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"entry {truncate(name)!r} has a malformed shape")
        if len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            raise ValueError(f"entry {truncate(name)!r} has malformed data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * _ELEMENT_SIZES[dtype]:
            raise ValueError(f"entry {truncate(name)!r} does not fit the file: shape and data_offsets disagree")
        out[name] = (dtype, tuple(shape))
    return out


# from_pretrained: config.json and model.safetensors, before anything is built -------------------------------------

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64"}
_ST_DTYPES |= {"int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
ROLE_NAMES = ("OneStepGenerator", "FakeScore", "Precond")


def _shown(value: Any) -> str:
    """A number as itself, anything else by its type (JSON values are untrusted: never repr a whole tree)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return truncate(repr(value))
    return f"a {safe_type_name(value)}"


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_positive_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _backbone_facts(backbone: Any) -> tuple[str, Any]:
    """``(class name, BackboneFacts)`` of a ``backbone`` entry, from its registered class; raises ValueError."""
    from ..networks.registry import backbone_facts

    if not isinstance(backbone, Mapping) or set(backbone) != {"_class_name", "config"}:
        raise ValueError("'backbone' must be an object with exactly '_class_name' and 'config'")
    name, config = backbone["_class_name"], backbone["config"]
    if not isinstance(config, Mapping):
        raise ValueError(f"backbone.config must be an object, got a {safe_type_name(config)}")
    return name, backbone_facts(name, config)


def check_artefact_config(config: dict[str, Any]) -> None:
    """Check ``config.json`` fully (types, ranges, and agreement with its backbone) before anything is built.

    Args:
        config: The parsed ``config.json``, whose ``format_version`` has been checked.

    Raises:
        ValueError: Naming the key and what it should be.
    """
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise ValueError(f"_class_name must be a string, got a {safe_type_name(name)}")
    dtype = config.get("torch_dtype", "float32")
    if not isinstance(dtype, str):
        raise ValueError(f"torch_dtype must be a string such as 'float32', got a {safe_type_name(dtype)}")
    for key in ("_scoredistill_version", "teacher_id", "teacher_revision"):
        if not isinstance(config.get(key), (str, type(None))):
            raise ValueError(f"{key} must be a string or null, got a {safe_type_name(config[key])}")
    if not isinstance(config.get("training"), (dict, type(None))):
        raise ValueError(f"training must be an object or null, got a {safe_type_name(config['training'])}")
    if name not in ROLE_NAMES:
        return  # the loader names the unknown class
    try:
        _check_role(name, config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot build {name} from its config: {err}") from None


def _check_role(name: str, config: Mapping[str, Any]) -> None:
    precond = config.get("precond")
    if not isinstance(precond, Mapping):
        raise ValueError(f"'precond' must be an object, got a {safe_type_name(precond)}")
    label_dim, augment_dim = precond.get("label_dim", 0), precond.get("augment_dim", 0)
    if not _is_int(label_dim) or not _is_int(augment_dim):
        raise ValueError("precond.label_dim and precond.augment_dim must be ints >= 0")
    sigma_data = precond.get("sigma_data", 0.5)
    if not _is_positive_finite(sigma_data):
        raise ValueError(f"precond.sigma_data must be a positive finite number, got {_shown(sigma_data)}")
    backbone_name, facts = _backbone_facts(config.get("backbone"))
    if facts.label_dim != label_dim:
        raise ValueError(f"precond.label_dim {label_dim} contradicts the {backbone_name}'s {facts.label_dim}")
    if facts.augment_dim != augment_dim:
        raise ValueError(f"precond.augment_dim {augment_dim} contradicts the {backbone_name}'s {facts.augment_dim}")
    if name != "OneStepGenerator":
        return
    sigma_init, sample_shape = config.get("sigma_init"), config.get("sample_shape")
    role_labels = config.get("label_dim")
    try:
        check_sigma_init(sigma_init)  # the generator's own rule
    except (TypeError, ValueError):
        raise ValueError(
            f"sigma_init must be a positive finite number (the paper uses {SIGMA_INIT}), got {_shown(sigma_init)}"
        ) from None
    if not (isinstance(sample_shape, list) and 1 <= len(sample_shape) <= 3 and all(map(_is_int, sample_shape))):
        raise ValueError("sample_shape must be a list of 1 to 3 positive ints, e.g. [3, 32, 32]")
    if role_labels != label_dim or not _is_int(role_labels):
        raise ValueError(f"label_dim must equal precond.label_dim {label_dim}, got a {safe_type_name(role_labels)}")
    error = facts.shape_error(tuple(sample_shape))
    if error:
        shown = truncate(str(sample_shape), 120)
        raise ValueError(f"sample_shape {shown} contradicts the {backbone_name} backbone: {error}")


def check_weights_file(config: Mapping[str, Any], file: str | os.PathLike[str]) -> SafetensorsHeader:
    """Check that ``model.safetensors`` can hold the network ``config`` declares, from its header alone.

    Compares the backbone's lower bound on its size (``config_facts``) with the tensors the file holds, so that a
    config declaring 10,000 blocks is refused before minutes are spent building it. The bound allows twice the
    file plus a little (the strict load then names each missing or mis-shaped key).

    Raises:
        FileNotFoundError: No such file.
        ValueError: An unreadable header, or a network larger than the file (the message follows the file's name).
    """
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{os.path.dirname(file)} has no {os.path.basename(file)}")
    try:
        header = read_safetensors_header(file)
    except ValueError as err:
        raise ValueError(f"is not a readable safetensors file (truncated or corrupt?): {err}") from None
    try:
        name, facts = _backbone_facts(config.get("backbone"))
    except (ValueError, TypeError):
        return header  # the build reports it
    # With slack: a few missing or mis-shaped keys are better named one by one by the strict load; the bound
    # only has to keep the build's cost within a small multiple of the file's size.
    if facts.min_tensors > 2 * len(header) + 64 or facts.min_elements > 2 * header.elements + 4096:
        raise ValueError(
            f"is too small for config.json, which declares a {name} of at least {facts.min_elements:,} parameters "
            f"in {facts.min_tensors:,} tensors; the file holds {header.elements:,} in {len(header):,}: the config or "
            "the weights are wrong"
        )
    return header


def check_weight_dtypes(module: Any, header: SafetensorsHeader, torch_dtype: str) -> None:
    """Check that every stored parameter has dtype ``torch_dtype`` and every buffer its module's dtype.

    ``module`` is the network built (on the meta device) from ``config.json``; nothing is read but the header.

    Raises:
        ValueError: Naming the first tensors stored in another dtype.
    """
    want = _ST_DTYPES[torch_dtype]
    params = {name for name, _ in module.named_parameters()}
    wrong = []
    for name, value in module.state_dict().items():
        if name not in header:
            continue  # the strict load names missing keys
        expected = want if name in params and value.is_floating_point() else _ST_DTYPES.get(str(value.dtype)[6:])
        if header[name][0] != expected:
            wrong.append(f"{truncate(name)} ({header[name][0]}, expected {expected})")
    if wrong:
        raise ValueError(
            f"{len(wrong)} tensors are not stored in the dtype config.json declares (torch_dtype {torch_dtype!r} "
            f"for parameters): {', '.join(wrong[:5])}"
        )


# The Hub: what an endpoint lists and sends ------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(text: object) -> bool:
    """Whether ``text`` reads as a Hub repo id ``org/name`` (what a card's ``base_model`` may hold); a local path or
    a file name never does."""
    return isinstance(text, str) and bool(_HUB_ID.fullmatch(text)) and not text.endswith((".pkl", ".safetensors"))


_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_commit_id(value: Any) -> bool:
    """Whether ``value`` is a full git commit id (40 lowercase hex digits), safe as a path component."""
    return isinstance(value, str) and _HEX40.fullmatch(value) is not None


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with every link and ``..`` resolved, lies inside ``root`` (itself resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def listed_file(sibling: Any, max_size: int | None = None) -> tuple[int, str, bool]:
    """``(size, hash, is_git_blob)`` of a file as a Hub repo listing gives it (``model_info(files_metadata=True)``):
    an LFS file's sha256, or a regular file's git blob sha1.

    Raises:
        ValueError: No size or hash, a malformed hash, or a size above ``max_size``.
    """
    lfs = getattr(sibling, "lfs", None)
    size, digest = (lfs.size, lfs.sha256) if lfs else (sibling.size, sibling.blob_id)
    if not _is_int(size) or not isinstance(digest, str):
        raise ValueError("is listed without a size and hash")
    if not (_HEX64 if lfs else _HEX40).fullmatch(digest):
        raise ValueError("is listed with a malformed hash")
    if max_size is not None and size > max_size:
        raise ValueError(f"is {size:,} bytes, more than MAX_CONFIG_BYTES ({max_size:,})")
    return size, digest, lfs is None


class CheckedDownload:
    """A binary file to download into that takes at most ``size`` bytes and hashes them as they come.

    ``write`` raises ``ValueError`` past ``size``; `check` raises ``ValueError`` unless exactly ``size`` bytes
    with hash ``digest`` (sha256, or a git blob's sha1 when ``git_blob``) were written.
    """

    def __init__(self, file: BinaryIO, size: int, digest: str, git_blob: bool):
        self.file, self.size, self.digest, self.git_blob = file, size, digest, git_blob
        self.seek(0)

    def write(self, chunk: bytes) -> int:
        self.written += len(chunk)
        if self.written > self.size:
            raise ValueError(f"sent more than the {self.size:,} bytes the Hub listed for it")
        self.hash.update(chunk)
        return self.file.write(chunk)

    def tell(self) -> int:
        return self.written

    def seek(self, pos: int, whence: int = 0) -> int:
        """Only back to the start (what a download restarts from when a server ignores a range request)."""
        if (pos, whence) != (0, 0):
            raise OSError("a download can only restart from its beginning")
        self.written, self.hash = 0, hashlib.sha1(b"blob %d\0" % self.size) if self.git_blob else hashlib.sha256()
        return self.file.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self.file.truncate(size)

    def check(self) -> None:
        """Raise ``ValueError`` unless the bytes written are those listed."""
        if self.written != self.size:
            raise ValueError(f"sent {self.written:,} bytes, not the {self.size:,} bytes the Hub listed for it")
        if self.hash.hexdigest() != self.digest:
            raise ValueError("does not match the hash the Hub listed for it")
