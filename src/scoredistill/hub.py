"""Public artefacts: ``config.json`` + ``model.safetensors`` (+ a ``README.md`` model card), locally or on the Hub.

`HubMixin` gives a role ``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` on top of
`huggingface_hub.ModelHubMixin`. The Hub layer knows no role: each role (``OneStepGenerator``,
``FakeScore``, ``Precond``) writes its architecture with ``to_config()`` and rebuilds it with
``from_config(config)``. One directory holds one role; ``config.json`` reads::

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

Loading is always strict: the module is built on the meta device and every missing, unexpected or mis-shaped key
is reported by name, as is any malformed file. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, ModelHubMixin, snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._io import StateDictMismatchError, atomic_directory, check_replaceable_artefact, load_state_dict_strict
from ._version import __version__

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CARD_NAME",
    "ROLES",
    "WEIGHTS_NAME",
    "CheckpointError",
    "HubMixin",
    "WeightsMismatchError",
    "from_pretrained",
    "load_config",
    "push_to_hub",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
"""Version of the artefact layout; readers refuse a newer one."""

ROLES: dict[str, type[HubMixin]] = {}
"""The classes an artefact may name in ``_class_name``: every subclass of `HubMixin`, by class name."""

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_META_KEYS = ("_class_name", "_scoredistill_version", "format_version", "torch_dtype", "teacher_id")
_META_KEYS += ("teacher_revision", "training")


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


class HubMixin(
    ModelHubMixin,
    library_name="scoredistill",
    repo_url="https://github.com/scoredistill/scoredistill",
    tags=["scoredistill", "score-distillation", "diffusion", "pytorch"],
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a role with ``to_config`` / ``from_config``.

    Subclasses register themselves in `ROLES` under their class name (what ``_class_name`` records).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ROLES[cls.__name__] = cls

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - every role overrides it
        """The JSON-ready architecture that `from_config` rebuilds."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HubMixin:  # pragma: no cover - every role overrides it
        """A freshly initialised module for `to_config` output."""
        raise NotImplementedError

    # Saving ------------------------------------------------------------------------------------------------------

    def artefact_config(
        self,
        *,
        dtype: torch.dtype = torch.float32,
        teacher_id: str | None = None,
        teacher_revision: str | None = None,
        training: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The full ``config.json``: class, versions, `to_config`, weights dtype and provenance."""
        dtype_name = next((k for k, v in _DTYPES.items() if v == dtype), None)
        if dtype_name is None:
            raise ValueError(f"dtype must be one of torch.{', torch.'.join(_DTYPES)}, got {dtype}")
        config = {
            "_class_name": type(self).__name__,
            "_scoredistill_version": __version__,
            "format_version": FORMAT_VERSION,
            **self.to_config(),
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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        teacher_id: str | None = None,
        teacher_revision: str | None = None,
        license: str | None = None,
        training: Mapping[str, Any] | None = None,
        model_card: bool = True,
        dtype: torch.dtype = torch.float32,
        config: dict[str, Any] | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
    ) -> Path:
        """Write this module as a public artefact: ``config.json``, ``model.safetensors`` and a ``README.md`` card.

        The directory is written next to its final place and renamed into it (files get the modes of any file
        the user saves), so readers never see a half-written artefact. An existing directory is replaced only
        when it is empty or an artefact scoredistill wrote (nothing but these three files, and a ``config.json``
        with ``_class_name`` and ``_scoredistill_version``).

        Args:
            save_directory: The artefact directory, e.g. ``run/generator_ema``.
            teacher_id: Hub id of the teacher it was distilled from (recorded, and the card's ``base_model``).
            teacher_revision: The teacher's revision (a commit hash pins it).
            license: Licence identifier for the card, e.g. ``"cc-by-nc-sa-4.0"`` (check the teacher's licence).
            training: How it was made, e.g. ``dataclasses.asdict(distill_config)``; JSON-ready values only.
            model_card: Write ``README.md``.
            dtype: Dtype of the stored floating-point parameters: float32 (default), or float16/bfloat16 for a
                smaller variant. Buffers keep their dtype.
            config: A complete ``config.json`` (from `artefact_config`) instead of the arguments above.
            model_card_kwargs: Passed to `generate_model_card` (``license``, ``repo_id``).

        Returns:
            The artefact directory.

        Example:
            >>> import tempfile
            >>> from scoredistill import OneStepGenerator, Precond
            >>> from scoredistill.networks import MLP
            >>> G = OneStepGenerator(Precond(MLP(dim=2, hidden=16)), sample_shape=(2,))
            >>> path = G.save_pretrained(tempfile.mkdtemp() + "/generator")
            >>> sorted(p.name for p in path.iterdir())
            ['README.md', 'config.json', 'model.safetensors']
        """
        if config is None:
            config = self.artefact_config(
                dtype=dtype, teacher_id=teacher_id, teacher_revision=teacher_revision, training=training
            )
        path = Path(save_directory)
        check_replaceable_artefact(path, (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME))
        with atomic_directory(path) as tmp:
            self._hub_mixin_config = config  # what _save_pretrained and generate_model_card read
            card_kwargs = {"license": license, **(model_card_kwargs or {})}
            super().save_pretrained(tmp, config=config, model_card_kwargs=card_kwargs)
            if not model_card:
                (tmp / MODEL_CARD_NAME).unlink()
        return path

    def _save_pretrained(self, save_directory: Path) -> None:
        config = self._hub_mixin_config
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        (save_directory / CONFIG_NAME).write_text(text, encoding="utf-8")
        dtype = _DTYPES[config["torch_dtype"]]
        params = {name for name, _ in self.named_parameters()}
        state: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            value = value.detach()
            if key in params and value.is_floating_point():
                value = value.to(dtype)
            state[key] = value.cpu().contiguous()
        metadata = {"format": "pt", "scoredistill_format_version": str(FORMAT_VERSION)}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata=metadata)

    def generate_model_card(self, *args: Any, license: str | None = None, repo_id: str | None = None, **kwargs: Any):
        """The ``README.md`` card: Hub metadata (`huggingface_hub.ModelCardData`) and how to load it."""
        config = self._hub_mixin_config
        name, where = config["_class_name"], repo_id or "PATH_OR_REPO_ID"
        teacher, revision = config.get("teacher_id"), config.get("teacher_revision")
        shape, label_dim = config.get("sample_shape"), config.get("label_dim", 0)
        is_generator = shape is not None
        tags = list(self._hub_mixin_info.model_card_data.tags or []) + (["one-step-generation"] if is_generator else [])
        pipeline = None
        if is_generator and len(shape) == 3:
            pipeline = "unconditional-image-generation" if label_dim == 0 else "image-generation"
        data = ModelCardData(
            library_name="scoredistill",
            license=license,
            base_model=[teacher] if teacher else None,
            base_model_relation="finetune" if teacher else None,
            pipeline_tag=pipeline,
            tags=tags,
        )
        n_params = sum(p.numel() for p in self.parameters())
        if is_generator:
            dims = ", ".join(map(str, shape))
            classes = f"{label_dim} classes" if label_dim else "unconditional"
            about = (
                f"A one-step generator ({n_params:,} parameters, samples of shape [{dims}], {classes}): "
                f"`x = D(sigma_init * z; sigma_init)` with `sigma_init = {config['sigma_init']}`, one network "
                "evaluation per sample."
            )
        elif name == "FakeScore":
            about = f"The fake score network of a score-distillation run ({n_params:,} parameters)."
        else:
            about = f"An EDM-preconditioned denoiser ({n_params:,} parameters)."
        backbone = config["backbone"]["_class_name"]
        lines = [f"# {name} ({backbone})", "", about, ""]
        lines += [
            f"Made with [scoredistill](https://github.com/scoredistill/scoredistill) "
            f"{config['_scoredistill_version']}; weights stored as {config['torch_dtype']}.",
            "",
        ]
        if teacher:
            at = f" at revision `{revision}`" if revision else ""
            lines += ["## Teacher", "", f"Distilled from [`{teacher}`](https://huggingface.co/{teacher}){at}.", ""]
        if license:
            lines += ["## Licence", "", f"`{license}`. Check that it is compatible with the teacher's licence.", ""]
        lines += ["## How to load", "", "```python", f"from scoredistill import {name}", ""]
        lines.append(f'model = {name}.from_pretrained("{where}")  # strict: every key and shape is checked')
        if is_generator:
            lines.append(f"x = model.sample(16)  # [16, {dims}]" + (" in [-1, 1]" if len(shape) == 3 else ""))
        lines += ["```", ""]
        if is_generator:
            lines += [f"Or from the command line: `scoredistill sample --model {where} --n 64 --out grid.png`.", ""]
        if config.get("training"):
            lines += ["## How it was made", "", "| setting | value |", "|---|---|"]
            lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in config["training"].items()]
            lines.append("")
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        teacher_id: str | None = None,
        teacher_revision: str | None = None,
        license: str | None = None,
        training: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CommitInfo:
        """Upload this module to a Hub model repo, creating the repo (and the branch ``revision``) when needed.

        Args:
            repo_id: ``"namespace/name"``.
            token: Hub token with write access (``None``: the saved login).
            private: Create the repo as private (an existing repo keeps its visibility).
            revision: Branch to commit to; created from the default branch when it does not exist.
            commit_message: Defaults to ``"Upload <role> with scoredistill"``.
            teacher_id: See `save_pretrained`.
            teacher_revision: See `save_pretrained`.
            license: See `save_pretrained`.
            training: See `save_pretrained`.
            dtype: See `save_pretrained`.

        Returns:
            The `huggingface_hub.CommitInfo` of the commit (``.oid`` is its hash).
        """
        config = self.artefact_config(
            dtype=dtype, teacher_id=teacher_id, teacher_revision=teacher_revision, training=training
        )
        if revision is not None:
            api = HfApi(token=token, library_name="scoredistill", library_version=__version__)
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return super().push_to_hub(
            repo_id,
            config=config,
            commit_message=commit_message or f"Upload {type(self).__name__} with scoredistill",
            private=private,
            token=token,
            branch=revision,
            model_card_kwargs={"license": license, "repo_id": repo_id},
        )

    # Loading -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load strictly from a local directory or a Hub repo; see
        [`scoredistill.hub.from_pretrained`][scoredistill.hub.from_pretrained]."""
        return from_pretrained(repo_id_or_path, expected_class=cls, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        **_: Any,
    ) -> HubMixin:
        directory = _resolve(model_id, revision, cache_dir, force_download, token, local_files_only)
        config = _read_config(directory)
        file = directory / CONFIG_NAME
        architecture = {k: v for k, v in config.items() if k not in _META_KEYS}
        # Build on the meta device: no time is spent on a random initialisation that the weights overwrite.
        try:
            with torch.device("meta"):
                module = cls.from_config(architecture)
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{file}: cannot build {config['_class_name']} from its config: {err}") from err
        _load_weights(module, directory / WEIGHTS_NAME, device)
        module.to(device=device)
        module.to(dtype=dtype)
        return module.eval()


# Loading ---------------------------------------------------------------------------------------------------------


def _resolve(
    source: str | os.PathLike,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    force_download: bool,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
    """A local directory holding the artefact: the path itself, or a Hub snapshot in the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {str(path)!r} is a local directory")
        return path
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    repo_id = str(source)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id") from err
    where = f"the Hub at {constants.ENDPOINT}"
    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            library_name="scoredistill",
            library_version=__version__,
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
    if config["_class_name"] not in ROLES:
        raise CheckpointError(f"{file}: unknown _class_name {config['_class_name']!r}; expected one of {sorted(ROLES)}")
    dtype = config.get("torch_dtype", "float32")
    if dtype not in _DTYPES:
        raise CheckpointError(f"{file}: torch_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return config


def _load_weights(module: nn.Module, file: Path, device: torch.device | str) -> None:
    """Strictly load ``file`` into ``module`` (built on the meta device) by assignment."""
    if not file.is_file():
        raise FileNotFoundError(f"{file.parent} has no {WEIGHTS_NAME}")
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


def load_config(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Read and validate an artefact's ``config.json`` (class, format version), e.g. for its ``teacher_id``.

    Arguments are those of [`from_pretrained`][scoredistill.hub.from_pretrained].
    """
    return _read_config(_resolve(repo_id_or_path, revision, cache_dir, False, token, local_files_only))


def from_pretrained(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    expected_class: type[nn.Module] | None = None,
) -> Any:
    """Load a role written by ``save_pretrained``, from a local directory or a Hub model repo.

    Loading is always strict: a missing, unexpected or mis-shaped key, an unknown class, a newer
    ``format_version`` or a malformed file raises an error that names it. Nothing is unpickled.

    Args:
        repo_id_or_path: A local artefact directory, or a Hub repo id such as ``"org/sid-cifar10-uncond"``
            (downloaded with `huggingface_hub.snapshot_download`, which honours ``HF_ENDPOINT`` and
            ``HF_HUB_OFFLINE``).
        revision: Hub branch, tag or commit hash (Hub repos only).
        cache_dir: Hub cache directory (default: the Hugging Face cache).
        device: Device of the returned module.
        dtype: Dtype of the returned module's floating-point tensors, whatever the stored dtype.
        token: Hub token for private repos (``None``: the saved login, if any).
        local_files_only: Use the Hub cache only; never touch the network.
        force_download: Download the files again even when they are cached.
        expected_class: Refuse an artefact of another role (the roles' ``from_pretrained`` pass their class).

    Returns:
        The role in eval mode; call ``.train()`` to fine-tune it.

    Raises:
        FileNotFoundError: No such directory or repo, or a file is missing (the message names it).
        CheckpointError: A malformed or incompatible ``config.json`` or ``model.safetensors``;
            `WeightsMismatchError` lists every bad key.
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
    directory = _resolve(repo_id_or_path, revision, cache_dir, force_download, token, local_files_only)
    config = _read_config(directory)
    cls = ROLES[config["_class_name"]]
    if expected_class is not None and cls is not expected_class:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} holds a {config['_class_name']}, not a {expected_class.__name__}: load it "
            f"with {config['_class_name']}.from_pretrained or scoredistill.hub.from_pretrained"
        )
    return cls._from_pretrained(model_id=str(directory), device=device, dtype=dtype)


def save_pretrained(module: HubMixin, directory: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``module`` (a role) as a public artefact; see `HubMixin.save_pretrained` for the arguments.

    Example:
        >>> import tempfile
        >>> from scoredistill import Precond
        >>> from scoredistill.networks import MLP
        >>> path = save_pretrained(Precond(MLP(dim=2, hidden=8)), tempfile.mkdtemp() + "/denoiser", model_card=False)
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'model.safetensors']
    """
    if not isinstance(module, HubMixin):
        raise TypeError(f"save_pretrained takes one of {sorted(ROLES)}, got {type(module).__name__}")
    return module.save_pretrained(directory, **kwargs)


def push_to_hub(module: HubMixin, repo_id: str, **kwargs: Any) -> CommitInfo:
    """Upload ``module`` to a Hub model repo; see `HubMixin.push_to_hub` for the arguments."""
    if not isinstance(module, HubMixin):
        raise TypeError(f"push_to_hub takes one of {sorted(ROLES)}, got {type(module).__name__}")
    return module.push_to_hub(repo_id, **kwargs)
