"""Saving, loading and publishing roles, locally or on the Hugging Face Hub, and the artefact format they use.

[`HubMixin`][scoredistill.io.hub.HubMixin] gives a role ``save_pretrained``, ``from_pretrained`` and ``push_to_hub``
on top of `huggingface_hub.ModelHubMixin`. The Hub layer knows no role: each role (``OneStepGenerator``,
``FakeScore``, ``Precond``) writes its architecture with ``to_config()`` and rebuilds it with
``from_config(config)``.

An artefact is one role per directory: ``config.json`` (the role's ``to_config()``, its class, versions, weights
dtype and provenance) + ``model.safetensors`` (+ a ``README.md`` card); ``docs/api/hub.md`` shows one.

Reading is strict: a malformed file, an unknown class, a newer ``format_version``, or any missing, unexpected or
mis-shaped weight raises an error that names the file. Nothing is ever unpickled. A Hub repo is downloaded from
URLs built from the commit id the Hub answered (checked to be 40 hex digits), each file checked against the size
and hash the Hub listed for it: nothing an endpoint answers becomes a path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, ModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from typing_extensions import Self, override

from .. import _io
from .._io import StateDictMismatchError
from .._version import __version__
from . import _untrusted
from ._untrusted import inside, truncate

__all__ = ["CONFIG_NAME", "DTYPES", "FORMAT_VERSION", "MAX_CONFIG_BYTES", "META_KEYS", "MODEL_CARD_NAME", "ROLES"]
__all__ += ["WEIGHTS_NAME", "CheckpointError", "HubMixin", "WeightsMismatchError", "artefact_config"]
__all__ += ["from_pretrained", "load_config", "load_weights", "push_to_hub", "read_config", "save_pretrained"]
__all__ += ["save_weights"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
"""Version of the artefact layout; readers refuse a newer one."""

MAX_CONFIG_BYTES = 4 * 2**20
"""Largest ``config.json`` read (bytes), checked before parsing; real ones hold a few kilobytes."""

ROLES: dict[str, type[nn.Module]] = {}
"""The classes an artefact may name in ``_class_name``, by class name (every ``HubMixin`` subclass adds itself)."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The values of ``torch_dtype``."""

META_KEYS = ("_class_name", "_scoredistill_version", "format_version", "torch_dtype", "teacher_id")
META_KEYS += ("teacher_revision", "training")
"""The keys of ``config.json`` that are not the role's ``to_config()``."""

_TAGS = ["scoredistill", "score-distillation", "diffusion", "pytorch"]


class CheckpointError(ValueError):
    """A malformed or incompatible artefact (bad JSON, corrupt weights, unknown class, newer format, ...).

    The message names the offending file (or, for a Hub answer, the endpoint).
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


# The format on local disk ----------------------------------------------------------------------------------------


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
        ValueError: ``dtype`` is not one of [`DTYPES`][scoredistill.io.hub.DTYPES].
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

    The file is refused unread when larger than [`MAX_CONFIG_BYTES`][scoredistill.io.hub.MAX_CONFIG_BYTES], and
    error messages quote its strings cut short.

    Raises:
        FileNotFoundError: The directory has no ``config.json``.
        CheckpointError: The file is too large, malformed, names an unknown role or dtype, or is of a newer format.
    """
    file = Path(directory) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not a scoredistill artefact")
    with open(file, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{file} is larger than MAX_CONFIG_BYTES ({MAX_CONFIG_BYTES:,} bytes): not a config")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # ValueError: also a 5000-digit int
        raise CheckpointError(f"{file} is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in ("_class_name", "format_version") if k not in config]
    if missing:
        raise CheckpointError(f"{file}: the config lacks {missing}")
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: format_version must be a positive integer, got a {type(version).__name__}")
    if version > FORMAT_VERSION:
        written_by = truncate(str(config.get("_scoredistill_version", "?")), 40)
        raise CheckpointError(
            f"{file} has format_version {truncate(str(version), 20)}, newer than this scoredistill reads "
            f"({FORMAT_VERSION}); it was written by scoredistill {written_by}: upgrade scoredistill"
        )
    try:  # every key's type and range, and its agreement with the backbone
        _untrusted.check_artefact_config(config)
    except ValueError as err:
        raise CheckpointError(f"{file}: {err}") from None
    if config["_class_name"] not in ROLES:
        name = truncate(config["_class_name"])
        raise CheckpointError(f"{file}: unknown _class_name {name!r}; expected one of {sorted(ROLES)}")
    dtype = config.get("torch_dtype", "float32")
    if dtype not in DTYPES:
        raise CheckpointError(f"{file}: torch_dtype must be one of {sorted(DTYPES)}, got {truncate(dtype)!r}")
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
            [`WeightsMismatchError`][scoredistill.io.hub.WeightsMismatchError] lists every bad key.
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
        _io.load_state_dict_strict(module, state, assign=True)
    except StateDictMismatchError as err:
        raise WeightsMismatchError(file, err.missing, err.unexpected, err.mismatched) from None
    leftovers = [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta]
    if leftovers:
        raise CheckpointError(f"{file}: {leftovers} were not restored")


def _write_artefact(module: nn.Module, directory: Path, config: dict[str, Any]) -> None:
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    (directory / CONFIG_NAME).write_text(text, encoding="utf-8")
    save_weights(module, directory / WEIGHTS_NAME, DTYPES[config["torch_dtype"]])


def _load_artefact(cls: type, directory: Path, config: dict[str, Any], device: Any, dtype: torch.dtype) -> Any:
    """Build ``cls`` from a read ``config.json`` on the meta device, after the weights file's header fits it."""
    weights = directory / WEIGHTS_NAME
    try:  # before building: its size fits the file
        header = _untrusted.check_weights_file(config, weights)
    except ValueError as err:
        raise CheckpointError(f"{weights} {err}") from None
    try:  # on the meta device: no time is spent on a random initialisation that the weights overwrite
        with torch.device("meta"):
            module = cls.from_config({k: v for k, v in config.items() if k not in META_KEYS})
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot build {cls.__name__} from it: {err}") from err
    try:
        _untrusted.check_weight_dtypes(module, header, config.get("torch_dtype", "float32"))
    except ValueError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    load_weights(module, weights, device)
    return module.to(device=device).to(dtype=dtype).eval()


def _model_card(config: Mapping[str, Any], n_params: int, license: str | None, repo_id: str | None) -> ModelCard:
    """The ``README.md`` card: Hub metadata (`huggingface_hub.ModelCardData`), what the role is, how to load it."""
    name, where, teacher = config["_class_name"], repo_id or "PATH_OR_REPO_ID", config.get("teacher_id")
    teacher = teacher if _untrusted.is_hub_id(teacher) else None  # a local path would leak, and link nowhere
    shape, label_dim, revision = config.get("sample_shape"), config.get("label_dim", 0), config.get("teacher_revision")
    image = shape is not None and len(shape) == 3
    data = ModelCardData(
        library_name="scoredistill",
        license=license,
        base_model=[teacher] if teacher else None,
        base_model_relation="finetune" if teacher else None,
        pipeline_tag=("unconditional-image-generation" if label_dim == 0 else "image-generation") if image else None,
        tags=sorted([*_TAGS, "model_hub_mixin"]) + (["one-step-generation"] if shape is not None else []),
    )
    dims = ", ".join(map(str, shape or ()))
    kinds = {"FakeScore": "The fake score network of a score-distillation run"}
    about = f"{kinds.get(name, 'An EDM-preconditioned denoiser')} ({n_params:,} parameters)."
    if shape is not None:
        classes = f"{label_dim} classes" if label_dim else "unconditional"
        about = (
            f"A one-step generator ({n_params:,} parameters, samples of shape [{dims}], {classes}): `x = D(sigma_init"
            f" * z; sigma_init)` with `sigma_init = {config['sigma_init']}`, one network evaluation per sample."
        )
    made = f"Made with [scoredistill](https://github.com/scoredistill/scoredistill) {config['_scoredistill_version']}"
    parts = [
        f"# {name} ({config['backbone']['_class_name']})",
        about,
        f"{made}; weights stored as {config['torch_dtype']}.",
    ]
    if teacher:
        at = f" at revision `{revision}`" if revision else ""
        parts += ["## Teacher", f"Distilled from [`{teacher}`](https://huggingface.co/{teacher}){at}."]
    elif (training := config.get("training") or {}).get("teacher_file"):
        sha = f" (SHA-256 `{training['teacher_sha256']}`)" if training.get("teacher_sha256") else ""
        parts += ["## Teacher", f"Distilled from a local teacher, `{training['teacher_file']}`{sha}."]
    if license:
        parts += ["## Licence", f"`{license}`. Check that it is compatible with the teacher's licence."]
    code = f'from scoredistill import {name}\n\nmodel = {name}.from_pretrained("{where}")'
    code += "  # strict: every key and shape is checked"
    if shape is not None:
        code += f"\nx = model.sample(16)  # [16, {dims}]" + (" in [-1, 1]" if image else "")
    parts += ["## How to load", f"```python\n{code}\n```"]
    if shape is not None:
        parts.append(f"Or from the command line: `scoredistill sample --model {where} --n 64 --out grid.png`.")
    if config.get("training"):
        rows = [f"| `{k}` | `{json.dumps(v)}` |" for k, v in config["training"].items()]
        parts += ["## How it was made", "\n".join(["| setting | value |", "|---|---|", *rows])]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


# The roles' mixin ------------------------------------------------------------------------------------------------


class HubMixin(
    ModelHubMixin,
    library_name="scoredistill",
    repo_url="https://github.com/scoredistill/scoredistill",
    tags=_TAGS,
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a role with ``to_config`` / ``from_config``.

    Subclasses register themselves in [`ROLES`][scoredistill.io.hub.ROLES] under their class name (what
    ``_class_name`` records). Loading goes through the mixin's ``_from_pretrained`` hook; ``from_pretrained``
    only skips the mixin's own reading of ``config.json``, which downloads it with ``hf_hub_download`` (an
    endpoint then picks cache paths) and parses it whatever its size.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ROLES[cls.__name__] = cls

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

        The path is resolved first (links and ``..``), then checked, then written. The directory is written next
        to its final place and renamed into it (files get the modes of any file the user saves), so readers never
        see a half-written artefact. An existing directory is replaced only when it is empty or an artefact
        scoredistill wrote (nothing but these three files, and a ``config.json`` with ``_class_name`` and
        ``_scoredistill_version``); a symlinked one is replaced behind its link.

        Args:
            save_directory: The artefact directory, e.g. ``run/generator_ema``.
            teacher_id: Hub id of the teacher it was distilled from (recorded, and the card's ``base_model``).
            teacher_revision: The teacher's revision (a commit hash pins it).
            license: Licence identifier for the card, e.g. ``"cc-by-nc-sa-4.0"`` (check the teacher's licence).
            training: How it was made, e.g. ``dataclasses.asdict(distill_config)``; JSON-ready values only.
            model_card: Write ``README.md``.
            dtype: Dtype of the stored floating-point parameters: float32 (default), or float16/bfloat16 for a
                smaller variant. Buffers keep their dtype.
            config: A complete ``config.json`` (from [`artefact_config`][scoredistill.io.hub.artefact_config])
                instead of the arguments above.
            model_card_kwargs: Passed to ``generate_model_card`` (``license``, ``repo_id``).

        Returns:
            The artefact directory, resolved.

        Raises:
            FileExistsError: The directory holds something else than an artefact of scoredistill.
            ValueError: The directory is the working directory or holds it.

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
            config = artefact_config(
                self, dtype=dtype, teacher_id=teacher_id, teacher_revision=teacher_revision, training=training
            )
        path = _io.writable_directory(save_directory)
        _io.check_replaceable_artefact(path, (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME))
        with _io.atomic_directory(path) as tmp:
            _write_artefact(self, tmp, config)
            if model_card:
                card_kwargs = {"license": license, **(model_card_kwargs or {})}
                self.generate_model_card(config=config, **card_kwargs).save(tmp / MODEL_CARD_NAME)
        return path

    @override
    def _save_pretrained(self, save_directory: Path) -> None:
        _write_artefact(self, Path(save_directory), artefact_config(self))

    @override
    def generate_model_card(self, *args: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> ModelCard:
        """The ``README.md`` card of ``config`` (default: this module's float32 one); takes ``license``, ``repo_id``."""
        n_params = sum(p.numel() for p in self.parameters())
        return _model_card(config or artefact_config(self), n_params, kwargs.get("license"), kwargs.get("repo_id"))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        **save_kwargs: Any,
    ) -> CommitInfo:
        """Upload this module to a Hub model repo, creating the repo (and the branch ``revision``) when needed.

        Args:
            repo_id: ``"namespace/name"``.
            token: Hub token with write access (``None``: the saved login).
            private: Create the repo as private (an existing repo keeps its visibility).
            revision: Branch to commit to; created from the default branch when it does not exist.
            commit_message: Defaults to ``"Upload <role> with scoredistill"``.
            **save_kwargs: ``teacher_id``, ``teacher_revision``, ``license``, ``training`` and ``dtype``, as for
                ``save_pretrained``.

        Returns:
            The `huggingface_hub.CommitInfo` of the commit (``.oid`` is its hash).
        """
        license = save_kwargs.pop("license", None)
        config = artefact_config(self, **save_kwargs)
        api = HfApi(token=token, library_name="scoredistill", library_version=__version__)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            card = {"license": license, "repo_id": repo_id}
            folder = self.save_pretrained(Path(tmp) / "artefact", config=config, model_card_kwargs=card)
            message = commit_message or f"Upload {type(self).__name__} with scoredistill"
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, revision=revision)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, **kwargs: Any) -> Self:
        """Load strictly from a directory or a Hub repo: [`from_pretrained`][scoredistill.io.hub.from_pretrained]
        (the same keyword arguments), refusing an artefact of another role."""
        return cls._from_pretrained(model_id=str(repo_id_or_path), **kwargs)

    @classmethod
    @override
    def _from_pretrained(cls, *, model_id: str, **kwargs: Any) -> Self:
        return from_pretrained(model_id, expected_class=cls, **kwargs)


# The Hub: downloads that no answer of the endpoint can steer -----------------------------------------------------


def _hub_file(repo_id: str, sha: str, sibling: Any, target: Path, storage: Path, force: bool, token: Any) -> None:
    """Download one listed file of commit ``sha`` to ``target`` (unless cached), checking its size and hash."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    where, name = f"the Hub at {truncate(constants.ENDPOINT)}: {repo_id}/{sibling.rfilename}", sibling.rfilename
    try:
        size, digest, git_blob = _untrusted.listed_file(sibling, MAX_CONFIG_BYTES if name == CONFIG_NAME else None)
    except ValueError as err:
        raise CheckpointError(f"{where} {err}: refusing it") from None
    if not force and target.is_file() and inside(storage, target) and target.stat().st_size == size:
        return  # cached
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inside(storage, target.parent):
        raise CheckpointError(f"{target.parent} links out of the cache {storage}: refusing to write there")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".incomplete", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = _untrusted.CheckedDownload(raw, size, digest, git_blob)
            headers = build_hf_headers(token=token, library_name="scoredistill", library_version=__version__)
            try:
                http_get(hf_hub_url(repo_id, name, revision=sha), sink, headers=headers, expected_size=size)  # type: ignore[arg-type]
            except OSError:  # http_get's own size check: sink.check() names both sizes
                if sink.written == size:
                    raise
            sink.check()
        os.replace(tmp, target)
    except ValueError as err:  # more bytes than listed, fewer, or other ones
        raise CheckpointError(f"{where} {err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _artefact_directory(source: Any, revision: Any, cache_dir: Any, token: Any, force: bool, offline: bool) -> Path:
    """A local directory holding the artefact: the path itself, or a Hub snapshot in the cache (``offline``: the
    cache only, as ``local_files_only``; ``force``: download again, as ``force_download``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {str(path)!r} is a local directory")
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    repo_id, where = str(source), f"the Hub at {truncate(constants.ENDPOINT)}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id") from err
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    if offline or constants.HF_HUB_OFFLINE:
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        out = [p.name for p in (snapshot, snapshot / CONFIG_NAME, snapshot / WEIGHTS_NAME) if not inside(storage, p)]
        if out:
            raise CheckpointError(f"{snapshot}: {out} link out of the cache {storage}: refusing them")
        return snapshot
    api = HfApi(token=token, library_name="scoredistill", library_version=__version__)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError as err:
        err.append_to_message(f"\nscoredistill: model repo {repo_id!r} on {where} has no revision {revision!r}.")
        raise
    except RepositoryNotFoundError as err:
        err.append_to_message(
            f"\nscoredistill: {repo_id!r} is not a local directory, and {where} has no model repo "
            "of that name that this token can read."
        )
        raise
    sha = info.sha
    if not _untrusted.is_commit_id(sha) or (_untrusted.is_commit_id(revision) and sha != revision):
        raise CheckpointError(f"{where}: answered a malformed commit id for {repo_id}@{revision}: refusing it")
    snapshot = storage / "snapshots" / sha
    listed = {sibling.rfilename: sibling for sibling in info.siblings or ()}
    for name in (CONFIG_NAME, WEIGHTS_NAME):  # a file the repo lacks is named by the loader
        if name in listed:
            _hub_file(repo_id, sha, listed[name], snapshot / name, storage, force, token)
    ref = storage / "refs" / (revision or "main")
    if revision != sha and inside(storage / "refs", ref):  # what local_files_only=True reads
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(sha)
    return snapshot


# The functions ---------------------------------------------------------------------------------------------------


def load_config(repo_id_or_path: str | os.PathLike, *, revision: str | None = None, **hub: Any) -> dict[str, Any]:
    """Read and validate an artefact's ``config.json`` (class, format version), e.g. for its ``teacher_id``.

    Takes ``cache_dir``, ``token`` and ``local_files_only`` of [`from_pretrained`][scoredistill.io.hub.from_pretrained].
    """
    if unknown := sorted(set(hub) - {"cache_dir", "token", "local_files_only"}):
        raise TypeError(f"load_config() got unexpected keyword arguments {unknown}")
    args = (hub.get("cache_dir"), hub.get("token"), False, hub.get("local_files_only", False))
    return read_config(_artefact_directory(repo_id_or_path, revision, *args))


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
    expected_class: type[torch.nn.Module] | None = None,
) -> Any:
    """Load a role written by ``save_pretrained``, strictly, from a local directory or a Hub model repo.

    Args:
        repo_id_or_path: A local artefact directory, or a Hub repo id such as ``"org/sid-cifar10-uncond"``
            (``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are honoured). One request lists the revision's commit and
            files; ``config.json`` and ``model.safetensors`` are then downloaded from that commit into the
            Hugging Face cache, each checked against the size and hash listed for it.
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
        CheckpointError: A malformed or incompatible ``config.json`` or ``model.safetensors``
            ([`WeightsMismatchError`][scoredistill.io.hub.WeightsMismatchError] lists every bad key), or a Hub
            answer that is malformed or does not match what it listed.
        huggingface_hub.errors.RepositoryNotFoundError: The Hub has no such repo (or it is private).
        huggingface_hub.errors.RevisionNotFoundError: The repo has no such revision.
    """
    directory = _artefact_directory(repo_id_or_path, revision, cache_dir, token, force_download, local_files_only)
    config = read_config(directory)
    cls = ROLES[config["_class_name"]]
    if expected_class is not None and cls is not expected_class:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} holds a {config['_class_name']}, not a {expected_class.__name__}: load it "
            f"with {config['_class_name']}.from_pretrained or scoredistill.io.hub.from_pretrained"
        )
    return _load_artefact(cls, directory, config, device, dtype)


def save_pretrained(module: HubMixin, directory: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a role as an artefact: [`HubMixin.save_pretrained`][scoredistill.io.hub.HubMixin.save_pretrained]."""
    if not isinstance(module, HubMixin):
        raise TypeError(f"save_pretrained takes one of {sorted(ROLES)}, got {type(module).__name__}")
    return module.save_pretrained(directory, **kwargs)


def push_to_hub(module: HubMixin, repo_id: str, **kwargs: Any) -> CommitInfo:
    """Upload ``module`` to a Hub model repo: [`HubMixin.push_to_hub`][scoredistill.io.hub.HubMixin.push_to_hub]."""
    if not isinstance(module, HubMixin):
        raise TypeError(f"push_to_hub takes one of {sorted(ROLES)}, got {type(module).__name__}")
    return module.push_to_hub(repo_id, **kwargs)
