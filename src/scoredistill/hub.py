"""Public artefacts: ``config.json`` + ``model.safetensors`` (+ a ``README.md`` model card), locally or on the Hub.

One directory holds one role: a :class:`~scoredistill.generator.OneStepGenerator` (the usual case), a
:class:`~scoredistill.fake_score.FakeScore` or a bare :class:`~scoredistill.precond.Precond`, each around a
backbone from :mod:`scoredistill.networks`. ``config.json`` records everything needed to rebuild the module
(STYLE §2.4)::

    {
      "_class_name": "OneStepGenerator",        # the role
      "_scoredistill_version": "0.1.0",
      "format_version": 1,
      "sigma_init": 2.5, "sample_shape": [3, 32, 32], "label_dim": 0,    # the role's init args
      "precond": {"label_dim": 0, "augment_dim": 9, "sigma_data": 0.5},  # Precond's init args
      "backbone": {"_class_name": "SongUNet", "config": {...}},           # the backbone and its config
      "torch_dtype": "float32",                 # dtype of the stored weights
      "teacher_id": "org/edm-cifar10", "teacher_revision": "abc123",     # provenance, or null
      "training": {...}                         # how it was made (free-form), or null
    }

Backbones and roles are rebuilt through the explicit registries :data:`BACKBONES` and :data:`ROLES`; nothing is
constructed from a string any other way, and nothing is ever unpickled. Loading is always strict: every
missing, unexpected or mis-shaped key is reported by name, as is any malformed file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .fake_score import FakeScore
from .generator import OneStepGenerator
from .networks.dhariwal_unet import DhariwalUNet, DhariwalUNetConfig
from .networks.presets import StateDictMismatchError
from .networks.song_unet import SongUNet, SongUNetConfig
from .networks.toy import MLP, TinyUNet
from .precond import Precond

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = [
    "BACKBONES",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CARD_NAME",
    "ROLES",
    "WEIGHTS_NAME",
    "BackboneCodec",
    "CheckpointError",
    "WeightsMismatchError",
    "from_pretrained",
    "load_config",
    "push_to_hub",
    "role_config",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
"""Version of the artefact layout; readers refuse a newer one."""

Role = OneStepGenerator | FakeScore | Precond

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_META_KEYS = (
    "_class_name",
    "_scoredistill_version",
    "format_version",
    "torch_dtype",
    "teacher_id",
    "teacher_revision",
    "training",
)


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


# Backbones -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneCodec:
    """How one backbone family is written to and rebuilt from ``config.json``.

    Attributes:
        cls: The backbone class (matched exactly, so a subclass is never saved as its parent).
        encode: Backbone -> JSON-ready config dict.
        build: Config dict -> a freshly initialised backbone.
    """

    cls: type[nn.Module]
    encode: Callable[[Any], dict[str, Any]]
    build: Callable[[Any], nn.Module]


BACKBONES: dict[str, BackboneCodec] = {
    "SongUNet": BackboneCodec(SongUNet, lambda m: m.config.to_dict(), lambda c: SongUNet(SongUNetConfig.from_dict(c))),
    "DhariwalUNet": BackboneCodec(
        DhariwalUNet, lambda m: m.config.to_dict(), lambda c: DhariwalUNet(DhariwalUNetConfig.from_dict(c))
    ),
    "MLP": BackboneCodec(MLP, lambda m: dict(m.init_kwargs), lambda c: MLP(**c)),
    "TinyUNet": BackboneCodec(TinyUNet, lambda m: dict(m.init_kwargs), lambda c: TinyUNet(**c)),
}
"""The backbones an artefact may name in ``backbone._class_name``: the one place they are looked up."""

ROLES: dict[str, type[nn.Module]] = {"OneStepGenerator": OneStepGenerator, "FakeScore": FakeScore, "Precond": Precond}
"""The classes an artefact may name in ``_class_name``."""


def _encode_backbone(model: nn.Module) -> dict[str, Any]:
    for name, codec in BACKBONES.items():
        if type(model) is codec.cls:
            return {"_class_name": name, "config": codec.encode(model)}
    raise TypeError(
        f"cannot save a {type(model).__name__} backbone: save_pretrained knows {sorted(BACKBONES)} "
        "(add an entry to scoredistill.hub.BACKBONES for a new backbone family)"
    )


def _precond_of(role: nn.Module) -> Precond:
    net = role if isinstance(role, Precond) else getattr(role, "denoiser", None)
    if type(net) is not Precond:
        raise TypeError(
            f"cannot save a {type(role).__name__} around a {type(net).__name__}: public artefacts hold a Precond "
            "around a registered backbone (see scoredistill.hub.BACKBONES)"
        )
    return net


# Config ----------------------------------------------------------------------------------------------------------


def _library_version() -> str:
    from . import __version__

    return __version__


def role_config(role: Role) -> dict[str, Any]:
    """The architecture part of ``config.json`` for ``role``: class, init args, Precond args and backbone.

    Args:
        role: A :class:`OneStepGenerator`, :class:`FakeScore` or :class:`Precond` around a registered backbone.

    Returns:
        A JSON-ready dict; two roles with equal ``role_config`` have identical state-dict keys and shapes.
    """
    if type(role) not in ROLES.values():
        raise TypeError(f"save_pretrained takes one of {sorted(ROLES)}, got {type(role).__name__}")
    precond = _precond_of(role)
    config: dict[str, Any] = {"_class_name": type(role).__name__}
    if isinstance(role, OneStepGenerator):
        config.update(sigma_init=role.sigma_init, sample_shape=list(role.sample_shape), label_dim=role.label_dim)
    config["precond"] = {
        "label_dim": precond.label_dim,
        "augment_dim": precond.augment_dim,
        "sigma_data": precond.sigma_data,
    }
    config["backbone"] = _encode_backbone(precond.model)
    return config


def _require(mapping: Mapping[str, Any], keys: tuple[str, ...], where: str, file: Path) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise CheckpointError(f"{file}: {where} lacks {missing}")


def _check_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str, file: Path) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise CheckpointError(
            f"{file}: unknown keys {unknown} in {where}; a format_version {FORMAT_VERSION} "
            f"artefact may hold {sorted(allowed)}"
        )


def _build(config: Mapping[str, Any], file: Path) -> Role:
    """A freshly initialised role for a validated ``config.json`` (weights not loaded yet)."""
    name = config["_class_name"]
    role_args = ("sigma_init", "sample_shape", "label_dim") if name == "OneStepGenerator" else ()
    _require(config, ("precond", "backbone", *role_args), "the config", file)
    _check_keys(config, (*_META_KEYS, "precond", "backbone", *role_args), "the config", file)
    precond_args, backbone = config["precond"], config["backbone"]
    if not isinstance(precond_args, dict) or not isinstance(backbone, dict):
        raise CheckpointError(f"{file}: 'precond' and 'backbone' must be JSON objects")
    _require(backbone, ("_class_name", "config"), "'backbone'", file)
    _check_keys(backbone, ("_class_name", "config"), "'backbone'", file)
    codec = BACKBONES.get(backbone["_class_name"])
    if codec is None:
        raise CheckpointError(
            f"{file}: unknown backbone class {backbone['_class_name']!r}; this scoredistill knows {sorted(BACKBONES)}"
        )
    _check_keys(precond_args, ("label_dim", "augment_dim", "sigma_data"), "'precond'", file)
    try:
        net = Precond(codec.build(backbone["config"]), **precond_args)
        if name == "OneStepGenerator":
            return OneStepGenerator(
                net,
                sample_shape=tuple(config["sample_shape"]),
                sigma_init=config["sigma_init"],
                label_dim=config["label_dim"],
            )
        return FakeScore(net) if name == "FakeScore" else net
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: cannot build {name} from its config: {err}") from err


def _read_config(directory: Path) -> dict[str, Any]:
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a scoredistill artefact")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(config).__name__}")
    _require(config, ("_class_name", "format_version"), "the config", file)
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version {version}, newer than this scoredistill reads ({FORMAT_VERSION}); it was "
            f"written by scoredistill {config.get('_scoredistill_version', '?')}: upgrade scoredistill"
        )
    if config["_class_name"] not in ROLES:
        raise CheckpointError(f"{file}: unknown _class_name {config['_class_name']!r}; expected one of {sorted(ROLES)}")
    dtype = config.get("torch_dtype", "float32")
    if dtype not in _DTYPES:
        raise CheckpointError(f"{file}: torch_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return config


# Saving ----------------------------------------------------------------------------------------------------------


def _pipeline_tag(role: Role, config: Mapping[str, Any]) -> str | None:
    shape = config.get("sample_shape")
    if not isinstance(role, OneStepGenerator) or shape is None or len(shape) != 3:
        return None
    return "unconditional-image-generation" if config["label_dim"] == 0 else "image-generation"


def _model_card(role: Role, config: Mapping[str, Any], license: str | None, repo_id: str | None = None) -> str:
    name = config["_class_name"]
    where = repo_id or "PATH_OR_REPO_ID"
    backbone = config["backbone"]["_class_name"]
    teacher, revision = config.get("teacher_id"), config.get("teacher_revision")
    tags = ["scoredistill", "score-distillation", "diffusion", "pytorch"]
    if isinstance(role, OneStepGenerator):
        tags.append("one-step-generation")
    front = ["---", "library_name: scoredistill"]
    if license:
        front.append(f"license: {license}")
    if teacher:
        front += ["base_model:", f"- {teacher}", "base_model_relation: finetune"]
    if tag := _pipeline_tag(role, config):
        front.append(f"pipeline_tag: {tag}")
    front += ["tags:", *(f"- {t}" for t in tags), "---"]

    n_params = sum(p.numel() for p in role.parameters())
    lines = [*front, "", f"# {name} ({backbone})", ""]
    if isinstance(role, OneStepGenerator):
        shape = "[" + ", ".join(map(str, config["sample_shape"])) + "]"
        classes = f"{config['label_dim']} classes" if config["label_dim"] else "unconditional"
        lines.append(
            f"A one-step generator ({n_params:,} parameters, samples of shape {shape}, {classes}): "
            f"`x = D(sigma_init * z; sigma_init)` with `sigma_init = {config['sigma_init']}`, one network "
            "evaluation per sample."
        )
    elif isinstance(role, FakeScore):
        lines.append(f"The fake score network of a score-distillation run ({n_params:,} parameters).")
    else:
        lines.append(f"An EDM-preconditioned denoiser ({n_params:,} parameters).")
    lines += [
        "",
        f"Made with [scoredistill](https://github.com/scoredistill/scoredistill) "
        f"{config['_scoredistill_version']}; weights stored as {config['torch_dtype']}.",
        "",
    ]
    if teacher:
        at = f" at revision `{revision}`" if revision else ""
        lines += ["## Teacher", "", f"Distilled from [`{teacher}`](https://huggingface.co/{teacher}){at}.", ""]
    if license:
        lines += ["## Licence", "", f"`{license}`. Check that it is compatible with the teacher's licence.", ""]
    lines += [
        "## How to load",
        "",
        "```python",
        f"from scoredistill import {name}",
        "",
        f'model = {name}.from_pretrained("{where}")  # strict: every key and shape is checked',
    ]
    if isinstance(role, OneStepGenerator):
        dims = ", ".join(map(str, config["sample_shape"]))
        lines.append(
            f"x = model.sample(16)  # [16, {dims}]" + (" in [-1, 1]" if len(config["sample_shape"]) == 3 else "")
        )
    lines += ["```", ""]
    if isinstance(role, OneStepGenerator):
        lines += [f"Or from the command line: `scoredistill sample --model {where} --n 64 --out grid.png`.", ""]
    training = config.get("training")
    if training:
        lines += ["## How it was made", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in training.items()]
        lines.append("")
    return "\n".join(lines)


def _state_dict_to_save(role: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    params = {name for name, _ in role.named_parameters()}
    out = {}
    for key, value in role.state_dict().items():
        value = value.detach()
        if key in params and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.cpu().contiguous()
    return out


def save_pretrained(
    role: Role,
    directory: str | os.PathLike,
    *,
    teacher_id: str | None = None,
    teacher_revision: str | None = None,
    license: str | None = None,
    training: Mapping[str, Any] | None = None,
    model_card: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``role`` as a public artefact: ``config.json``, ``model.safetensors`` and a ``README.md`` card.

    The directory is written next to its final place and renamed into it, so readers never see a half-written
    artefact. An existing directory is replaced only when it holds nothing but these three files.

    Args:
        role: A :class:`OneStepGenerator`, :class:`FakeScore` or :class:`Precond` around a registered backbone.
        directory: The artefact directory, e.g. ``run/generator_ema``.
        teacher_id: Hub id of the teacher it was distilled from (recorded and shown in the card as ``base_model``).
        teacher_revision: The teacher's revision (a commit hash pins it).
        license: Licence identifier for the card, e.g. ``"cc-by-nc-sa-4.0"`` (check the teacher's licence).
        training: How it was made, e.g. ``dataclasses.asdict(distill_config)``; JSON-ready values only.
        model_card: Write ``README.md``.
        dtype: Dtype of the stored floating-point parameters: float32 (default), or float16/bfloat16 for a
            smaller variant. Buffers keep their dtype.

    Returns:
        The artefact directory.

    Example:
        >>> import tempfile
        >>> from scoredistill import OneStepGenerator, Precond
        >>> from scoredistill.networks import MLP
        >>> G = OneStepGenerator(Precond(MLP(dim=2, hidden=16)), sample_shape=(2,))
        >>> path = save_pretrained(G, tempfile.mkdtemp() + "/generator")
        >>> sorted(p.name for p in path.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    dtype_name = next((k for k, v in _DTYPES.items() if v == dtype), None)
    if dtype_name is None:
        raise ValueError(f"dtype must be one of torch.{', torch.'.join(_DTYPES)}, got {dtype}")
    config = role_config(role)
    config = {
        "_class_name": config.pop("_class_name"),
        "_scoredistill_version": _library_version(),
        "format_version": FORMAT_VERSION,
        **config,
        "torch_dtype": dtype_name,
        "teacher_id": teacher_id,
        "teacher_revision": teacher_revision,
        "training": dict(training) if training is not None else None,
    }
    try:
        config_text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"config.json must be plain JSON (check `training`): {err}") from err

    path = Path(directory)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME))
        if foreign:
            raise FileExistsError(
                f"{path} holds other files ({', '.join(foreign[:5])}): save_pretrained replaces "
                "its directory as a whole, so pass a new or dedicated directory"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CONFIG_NAME).write_text(config_text, encoding="utf-8")
        metadata = {"format": "pt", "scoredistill_format_version": str(FORMAT_VERSION)}
        save_file(_state_dict_to_save(role, dtype), str(tmp / WEIGHTS_NAME), metadata=metadata)
        if model_card:
            (tmp / MODEL_CARD_NAME).write_text(_model_card(role, config, license), encoding="utf-8")
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# Loading ---------------------------------------------------------------------------------------------------------


def _hub_endpoint() -> str | None:
    # Read at call time so that HF_ENDPOINT set after importing huggingface_hub is honoured too.
    endpoint = os.environ.get("HF_ENDPOINT")
    return endpoint.rstrip("/") if endpoint else None


def _resolve(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
    """A local directory holding the artefact: the path itself, or a Hub snapshot in the cache."""
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {str(path)!r} is a local directory")
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    repo_id = str(repo_id_or_path)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id") from err
    where = f"the Hub at {_hub_endpoint() or constants.ENDPOINT}"
    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            endpoint=_hub_endpoint(),
            library_name="scoredistill",
            library_version=_library_version(),
        )
    except RevisionNotFoundError as err:
        err.append_to_message(f"\nscoredistill: model repo {repo_id!r} on {where} has no revision {revision!r}.")
        raise
    except RepositoryNotFoundError as err:
        err.append_to_message(
            f"\nscoredistill: {repo_id!r} is not a local directory, and {where} has no model repo "
            "of that name that this token can read."
        )
        raise
    return Path(snapshot)


def _load_weights(module: nn.Module, file: Path, device: torch.device | str) -> None:
    """Strictly load ``file`` into ``module`` (built on the meta device) by assignment."""
    if not file.is_file():
        raise FileNotFoundError(f"{file.parent} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(file), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in state.items()
        if k in expected and tuple(expected[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(file, missing, unexpected, mismatched)
    kinds = [k for k, v in state.items() if v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"{file}: tensors {kinds} are not of the expected kind (floating point or integer)")
    module.load_state_dict(state, strict=True, assign=True)


def load_config(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Read and validate an artefact's ``config.json`` (class, format version), e.g. for its ``teacher_id``.

    Arguments are those of :func:`from_pretrained`.
    """
    directory = _resolve(
        repo_id_or_path, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
    )
    return _read_config(directory)


def from_pretrained(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    token: str | bool | None = None,
    local_files_only: bool = False,
    expected_class: type[nn.Module] | None = None,
) -> Role:
    """Load a role written by :func:`save_pretrained`, from a local directory or a Hub model repo.

    Loading is always strict: a missing, unexpected or mis-shaped key, an unknown class, a newer
    ``format_version`` or a malformed file raises an error that names it. Nothing is unpickled.

    Args:
        repo_id_or_path: A local artefact directory, or a Hub repo id such as ``"org/sid-cifar10-uncond"``
            (downloaded with :func:`huggingface_hub.snapshot_download`, which honours ``HF_ENDPOINT`` and
            ``HF_HUB_OFFLINE``).
        revision: Hub branch, tag or commit hash (Hub repos only).
        cache_dir: Hub cache directory (default: the Hugging Face cache).
        device: Device of the returned module.
        dtype: Dtype of the returned module's floating-point tensors, whatever the stored dtype.
        token: Hub token for private repos (``None``: the saved login, if any).
        local_files_only: Use the Hub cache only; never touch the network.
        expected_class: Refuse an artefact of another role (the roles' ``from_pretrained`` pass their class).

    Returns:
        The role in eval mode; call ``.train()`` to fine-tune it.

    Raises:
        FileNotFoundError: No such directory or repo, or a file is missing (the message names it).
        CheckpointError: A malformed or incompatible ``config.json`` or ``model.safetensors``;
            :class:`WeightsMismatchError` lists every bad key.
        huggingface_hub.errors.RepositoryNotFoundError: The Hub has no such repo (or it is private).
        huggingface_hub.errors.RevisionNotFoundError: The repo has no such revision.

    Example:
        >>> import tempfile, torch
        >>> from scoredistill import OneStepGenerator, Precond
        >>> from scoredistill.networks import MLP
        >>> G = OneStepGenerator(Precond(MLP(dim=2, hidden=16)), sample_shape=(2,))
        >>> G2 = from_pretrained(save_pretrained(G, tempfile.mkdtemp() + "/g"))
        >>> z = torch.randn(3, 2)
        >>> torch.equal(G.eval()(z), G2(z))
        True
    """
    directory = _resolve(
        repo_id_or_path, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
    )
    config = _read_config(directory)
    file = directory / CONFIG_NAME
    if expected_class is not None and ROLES[config["_class_name"]] is not expected_class:
        raise CheckpointError(
            f"{file} holds a {config['_class_name']}, not a {expected_class.__name__}: load it "
            f"with {config['_class_name']}.from_pretrained or scoredistill.hub.from_pretrained"
        )
    # Build on the meta device: no time is spent on a random initialisation that the weights overwrite.
    with torch.device("meta"):
        role = _build(config, file)
    _load_weights(role, directory / WEIGHTS_NAME, device)
    leftovers = [k for k, v in role.state_dict(keep_vars=True).items() if v.is_meta]
    if leftovers:
        raise CheckpointError(f"{file}: {leftovers} were not restored")
    role.to(device=device)
    role.to(dtype=dtype)
    return role.eval()


# Hub upload ------------------------------------------------------------------------------------------------------


def push_to_hub(
    role: Role,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    teacher_id: str | None = None,
    teacher_revision: str | None = None,
    license: str | None = None,
    training: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> CommitInfo:
    """Upload ``role`` to a Hub model repo, creating the repo (and the branch ``revision``) when needed.

    Writes the artefact with :func:`save_pretrained` into a temporary directory and commits it with
    :meth:`huggingface_hub.HfApi.upload_folder`. ``HF_ENDPOINT`` is honoured.

    Args:
        role: The role to upload.
        repo_id: ``"namespace/name"``.
        token: Hub token with write access (``None``: the saved login).
        private: Create the repo as private (an existing repo keeps its visibility).
        revision: Branch to commit to; created from the default branch when it does not exist.
        commit_message: Defaults to ``"Upload <role> with scoredistill"``.
        teacher_id: See :func:`save_pretrained`.
        teacher_revision: See :func:`save_pretrained`.
        license: See :func:`save_pretrained`.
        training: See :func:`save_pretrained`.
        dtype: See :func:`save_pretrained`.

    Returns:
        The :class:`huggingface_hub.CommitInfo` of the commit (``.oid`` is its hash).
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_hub_endpoint(), token=token, library_name="scoredistill", library_version=_library_version())
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="scoredistill-push-") as tmp:
        folder = save_pretrained(
            role,
            Path(tmp) / "artefact",
            teacher_id=teacher_id,
            teacher_revision=teacher_revision,
            license=license,
            training=training,
            dtype=dtype,
            model_card=False,
        )
        # The card names the repo in its loading snippet.
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        (folder / MODEL_CARD_NAME).write_text(_model_card(role, config, license, repo_id), encoding="utf-8")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {type(role).__name__} with scoredistill",
        )
