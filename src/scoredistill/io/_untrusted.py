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
import re
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "SafetensorsHeader",
    "check_artefact_config",
    "check_hub_revision",
    "check_weight_dtypes",
    "check_weights_file",
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

    Pure arithmetic on the config: nothing is built. For [`MLP`][scoredistill.networks.MLP] the bound is exact;
    for the UNets it counts only each residual block's tensors and second 3x3 convolution, so the real network is
    always at least this large (``tests/io/test_hardening_artefacts.py`` checks this against built networks).

    Args:
        class_name: A name of `scoredistill.networks.BACKBONES`.
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


# from_pretrained: config.json and model.safetensors, before anything is built -------------------------------------

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64"}
_ST_DTYPES |= {"int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_MLP_KEYS = ("dim", "hidden", "depth", "label_dim", "emb_dim")
_TINY_UNET_KEYS = ("img_channels", "channels", "label_dim", "augment_dim")


def _checkpoint_error(file: str | os.PathLike[str], message: str, sep: str = ": ") -> Exception:
    from .artefact import CheckpointError  # artefact imports this module

    return CheckpointError(f"{file}{sep}{message}")


def _shown(value: Any) -> str:
    """A number as itself, anything else by its type (JSON values are untrusted: never repr a whole tree)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return truncate(repr(value))
    return f"a {safe_type_name(value)}"


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_positive_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _backbone_facts(backbone: Mapping[str, Any]) -> tuple[str, dict[str, Any], tuple[int, ...] | None]:
    """``(class name, config, sample shape or None when free)`` of a backbone entry; raises ValueError."""
    from ..networks.registry import BACKBONES

    if not isinstance(backbone, Mapping) or set(backbone) != {"_class_name", "config"}:
        raise ValueError("'backbone' must be an object with exactly '_class_name' and 'config'")
    name, config = backbone["_class_name"], backbone["config"]
    if not isinstance(name, str) or name not in BACKBONES:
        shown = repr(truncate(name)) if isinstance(name, str) else f"a {safe_type_name(name)}"
        raise ValueError(f"unknown backbone class {shown}; this scoredistill knows {sorted(BACKBONES)}")
    if not isinstance(config, Mapping):
        raise ValueError(f"backbone.config must be an object, got a {safe_type_name(config)}")
    config = dict(config)
    if name in ("MLP", "TinyUNet"):
        keys = _MLP_KEYS if name == "MLP" else _TINY_UNET_KEYS
        unknown = sorted(map(truncate, set(config) - set(keys)))
        if unknown:
            raise ValueError(f"unknown {name} keys {unknown[:10]}; valid keys: {list(keys)}")
        for key, value in config.items():
            if not _is_int(value, 0 if key in ("label_dim", "augment_dim") else 1):
                raise ValueError(f"backbone.config.{key} must be a positive int, got a {safe_type_name(value)}")
        if name == "MLP":
            if "dim" not in config:
                raise ValueError("backbone.config lacks 'dim'")
            return name, {"label_dim": 0, "augment_dim": 0, **config}, (config["dim"],)
        return name, {"img_channels": 1, "label_dim": 0, "augment_dim": 0, **config}, None
    # The EDM UNets: their config dataclass validates every field (cheaply: it builds no module).
    dataclass_config = BACKBONES[name].config_class.from_dict(config)  # type: ignore[attr-defined]
    config = dataclass_config.to_dict()
    resolution = config["img_resolution"]
    return name, config, (config["img_channels"], resolution, resolution)


def check_artefact_config(config: dict[str, Any], file: str | os.PathLike[str]) -> None:
    """Check ``config.json`` fully (types, ranges, and agreement with its backbone) before anything is built.

    Args:
        config: The parsed ``config.json``, whose ``format_version`` has been checked.
        file: Its path, for messages.

    Raises:
        CheckpointError: Naming the key and what it should be.
    """
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise _checkpoint_error(file, f"_class_name must be a string, got a {safe_type_name(name)}")
    dtype = config.get("torch_dtype", "float32")
    if not isinstance(dtype, str):
        raise _checkpoint_error(file, f"torch_dtype must be a string such as 'float32', got a {safe_type_name(dtype)}")
    for key in ("_scoredistill_version", "teacher_id", "teacher_revision"):
        if not isinstance(config.get(key), (str, type(None))):
            raise _checkpoint_error(file, f"{key} must be a string or null, got a {safe_type_name(config[key])}")
    if not isinstance(config.get("training"), (dict, type(None))):
        raise _checkpoint_error(file, f"training must be an object or null, got a {safe_type_name(config['training'])}")
    if name not in ("OneStepGenerator", "FakeScore", "Precond"):
        return  # hub names the unknown class
    try:
        _check_role(name, config)
    except (ValueError, TypeError) as err:
        raise _checkpoint_error(file, f"cannot build {name} from its config: {err}") from None


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
    backbone_name, backbone, shape = _backbone_facts(config.get("backbone"))
    if backbone["label_dim"] != label_dim:
        raise ValueError(f"precond.label_dim {label_dim} contradicts the {backbone_name}'s {backbone['label_dim']}")
    if backbone["augment_dim"] != augment_dim:
        raise ValueError(
            f"precond.augment_dim {augment_dim} contradicts the {backbone_name}'s {backbone['augment_dim']}"
        )
    if name != "OneStepGenerator":
        return
    sigma_init, sample_shape = config.get("sigma_init"), config.get("sample_shape")
    role_labels = config.get("label_dim")
    if not _is_positive_finite(sigma_init):
        raise ValueError(f"sigma_init must be a positive finite number (the paper uses 2.5), got {_shown(sigma_init)}")
    if not (isinstance(sample_shape, list) and 1 <= len(sample_shape) <= 3 and all(map(_is_int, sample_shape))):
        raise ValueError("sample_shape must be a list of 1 to 3 positive ints, e.g. [3, 32, 32]")
    if role_labels != label_dim or not _is_int(role_labels):
        raise ValueError(f"label_dim must equal precond.label_dim {label_dim}, got a {safe_type_name(role_labels)}")
    if shape is None:  # TinyUNet: any even image size with its channels
        ok = len(sample_shape) == 3 and sample_shape[0] == backbone["img_channels"]
        ok = ok and all(s > 0 and s % 2 == 0 for s in sample_shape[1:])
        expected = f"[{backbone['img_channels']}, H, W] with H and W even"
    else:
        ok, expected = tuple(sample_shape) == shape, str(list(shape))
    if not ok:
        raise ValueError(f"sample_shape {sample_shape} contradicts the {backbone_name} backbone: it makes {expected}")


def check_weights_file(config: Mapping[str, Any], file: str | os.PathLike[str]) -> SafetensorsHeader:
    """Check that ``model.safetensors`` can hold the network ``config`` declares, from its header alone.

    Compares a lower bound on the network's size (`min_backbone_size`) with the tensors the file holds, so
    that a config declaring 10,000 blocks is refused before minutes are spent building it. The bound allows twice
    the file plus a little (the strict load then names each missing or mis-shaped key).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: An unreadable header, or a network larger than the file.
    """
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{os.path.dirname(file)} has no {os.path.basename(file)}")
    try:
        header = read_safetensors_header(file)
    except ValueError as err:
        message = f"is not a readable safetensors file (truncated or corrupt?): {err}"
        raise _checkpoint_error(file, message, sep=" ") from None
    backbone = config.get("backbone")
    if isinstance(backbone, Mapping) and isinstance(backbone.get("config"), Mapping):
        try:
            name, facts, _ = _backbone_facts(backbone)
            tensors, elements = min_backbone_size(name, facts)
        except (ValueError, TypeError):
            return header  # the build reports it
        # With slack: a few missing or mis-shaped keys are better named one by one by the strict load; the bound
        # only has to keep the build's cost within a small multiple of the file's size.
        if tensors > 2 * len(header) + 64 or elements > 2 * header.elements + 4096:
            raise _checkpoint_error(
                file,
                f"config.json declares a {name} of at least {elements:,} parameters in {tensors:,} tensors, but the "
                f"file holds {header.elements:,} in {len(header):,}: the config or the weights are wrong",
            )
    return header


def check_weight_dtypes(module: Any, header: SafetensorsHeader, torch_dtype: str, file: str | os.PathLike) -> None:
    """Check that every stored parameter has dtype ``torch_dtype`` and every buffer its module's dtype.

    ``module`` is the network built (on the meta device) from ``config.json``; nothing is read but the header.

    Raises:
        CheckpointError: Naming the first tensors stored in another dtype.
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
        raise _checkpoint_error(
            file,
            f"{len(wrong)} tensors are not stored in the dtype config.json declares (torch_dtype {torch_dtype!r} "
            f"for parameters): {', '.join(wrong[:5])}",
        )


# The Hub: what an endpoint answers becomes cache paths ------------------------------------------------------------

_COMMIT = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob sha1, or an LFS file's sha256


def check_hub_revision(repo_id: str, revision: str | None, token: str | bool | None, filenames: tuple[str, ...]) -> str:
    """Ask the Hub what ``revision`` of ``repo_id`` and its ``filenames`` resolve to, and refuse unsafe answers.

    ``huggingface_hub`` names cache files after the commit id and ETags the endpoint answers (``snapshots/<commit>``,
    ``blobs/<etag>``, ``trees/<commit>.json``); an endpoint answering ``../`` in either makes it write outside its
    cache. A commit id must be 40 hex digits and an ETag 40 or 64; each file must resolve to the repo's commit.

    Args:
        repo_id: A validated Hub repo id.
        revision: Branch, tag or commit hash (``None``: the default branch).
        token: Hub token, as for `huggingface_hub.snapshot_download`.
        filenames: The files about to be downloaded; those the repo lacks are skipped (the loader names them).

    Returns:
        The commit id that ``revision`` resolves to.

    Raises:
        CheckpointError: The endpoint answered a malformed commit id or ETag (the message names the endpoint).
    """
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url

    where = f"the Hub at {truncate(constants.ENDPOINT)}"
    info = HfApi(token=token).model_info(repo_id, revision=revision)
    sha = info.sha
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise _checkpoint_error(
            where, f"answered a malformed commit id for {repo_id}@{revision or 'main'}: refusing it"
        )
    present = {sibling.rfilename for sibling in info.siblings or ()}
    for name in filenames:
        if name not in present:
            continue
        meta = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=sha), token=token)
        if meta.commit_hash != sha or not isinstance(meta.etag, str) or not _ETAG.fullmatch(meta.etag):
            raise _checkpoint_error(where, f"answered a malformed commit id or ETag for {repo_id}/{name}: refusing it")
    return sha
