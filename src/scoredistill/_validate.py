"""Checks on untrusted inputs that run before anything is built: safe names for error messages, a lower bound on
a backbone's size from its config, and the ``config.json`` / ``model.safetensors`` checks of ``from_pretrained``.

Every check here is cheap: it reads a config, or the header of a safetensors file, never a network's weights.
The size bound lets a loader refuse a config that declares a network far larger than its weights file (10,000
blocks, an MLP 10^5 deep, a 3.5-billion-parameter UNet) before spending minutes and gigabytes building it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "SafetensorsHeader",
    "min_backbone_size",
    "read_safetensors_header",
    "safe_type_name",
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


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got a {safe_type_name(value)}")
    return value


def min_backbone_size(class_name: str, config: Mapping[str, Any]) -> tuple[int, int]:
    """A lower bound on ``(number of tensors, number of elements)`` in a backbone's state dict, from its config.

    Pure arithmetic on the config: nothing is built. For :class:`~scoredistill.networks.MLP` the bound is exact;
    for the UNets it counts only each residual block's tensors and second 3x3 convolution, so the real network is
    always at least this large (``tests/test_hardening_artefacts.py`` checks this against built networks).

    Args:
        class_name: A name of :data:`scoredistill.networks.BACKBONES`.
        config: The backbone's ``to_config()`` (for the UNets, their config dataclass's ``to_dict()``).

    Returns:
        ``(tensors, elements)``.

    Raises:
        ValueError: Unknown class, or a size field that is not a non-negative int.
    """
    c = config
    if class_name == "MLP":
        dim, hidden = _count(c.get("dim"), "dim"), _count(c.get("hidden", 128), "hidden")
        depth, label_dim = _count(c.get("depth", 3), "depth"), _count(c.get("label_dim", 0), "label_dim")
        emb_dim = _count(c.get("emb_dim", 32), "emb_dim")
        tensors = 2 + 2 + (1 if label_dim else 0) + 4 * depth + 2
        elements = (dim + 1) * hidden + (emb_dim + 1) * hidden + label_dim * hidden
        return tensors, elements + depth * 2 * (hidden + 1) * hidden + (hidden + 1) * dim
    if class_name == "TinyUNet":
        channels = _count(c.get("channels", 16), "channels")
        # At least mid's two 3x3 convolutions, 2c -> 2c each.
        return 8, 2 * 9 * (2 * channels) ** 2
    if class_name in ("SongUNet", "DhariwalUNet"):
        model_channels, num_blocks = _count(c.get("model_channels"), "model_channels"), c.get("num_blocks")
        num_blocks = _count(num_blocks, "num_blocks")
        mults = c.get("channel_mult")
        if not isinstance(mults, (list, tuple)):
            raise ValueError(f"channel_mult must be a list of ints, got a {safe_type_name(mults)}")
        tensors = elements = 0
        for mult in mults:
            # Per level: num_blocks encoder and num_blocks + 1 decoder residual blocks, each with at least eight
            # tensors (two norms, two convolutions and the embedding affine, weights and biases) and a second
            # 3x3 convolution of out_channels^2 * 9 weights.
            blocks = 2 * num_blocks + 1
            tensors += 8 * blocks
            elements += blocks * 9 * (model_channels * _count(mult, "channel_mult[i]")) ** 2
        return tensors, elements
    raise ValueError(f"no size bound for backbone class {truncate(class_name)!r}")


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
