"""Saving, loading and publishing roles, locally or on the Hugging Face Hub.

[`HubMixin`][scoredistill.io.hub.HubMixin] gives a role ``save_pretrained``, ``from_pretrained`` and ``push_to_hub``
on top of `huggingface_hub.ModelHubMixin`. The Hub layer knows no role: each role
(``OneStepGenerator``, ``FakeScore``, ``Precond``) writes its architecture with ``to_config()`` and rebuilds it with
``from_config(config)``; the files follow [`scoredistill.io.artefact`][scoredistill.io.artefact].
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelHubMixin, snapshot_download
from typing_extensions import Self, override

from .._io import atomic_directory, check_replaceable_artefact
from .._version import __version__
from ._card import model_card
from ._untrusted import check_hub_revision, check_weight_dtypes, check_weights_file
from .artefact import (
    CONFIG_NAME,
    DTYPES,
    META_KEYS,
    MODEL_CARD_NAME,
    ROLES,
    WEIGHTS_NAME,
    CheckpointError,
    WeightsMismatchError,
    artefact_config,
    load_weights,
    read_config,
    save_weights,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = ["CheckpointError", "HubMixin", "WeightsMismatchError", "from_pretrained", "load_config", "push_to_hub"]
__all__ += ["save_pretrained"]


class HubMixin(
    ModelHubMixin,
    library_name="scoredistill",
    repo_url="https://github.com/scoredistill/scoredistill",
    tags=["scoredistill", "score-distillation", "diffusion", "pytorch"],
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a role with ``to_config`` / ``from_config``.

    Subclasses register themselves in [`ROLES`][scoredistill.io.artefact.ROLES] under their class name (what
    ``_class_name`` records).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ROLES[cls.__name__] = cls

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - every role overrides it
        """The JSON-ready architecture that ``from_config`` rebuilds."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:  # pragma: no cover - every role overrides it
        """A freshly initialised module for ``to_config`` output."""
        raise NotImplementedError

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
            config: A complete ``config.json`` (from [`artefact_config`][scoredistill.io.artefact.artefact_config])
                instead of the arguments above.
            model_card_kwargs: Passed to ``generate_model_card`` (``license``, ``repo_id``).

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
            config = artefact_config(
                self, dtype=dtype, teacher_id=teacher_id, teacher_revision=teacher_revision, training=training
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

    @override
    def _save_pretrained(self, save_directory: Path) -> None:
        config = self._hub_mixin_config
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        (save_directory / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_weights(self, save_directory / WEIGHTS_NAME, DTYPES[config["torch_dtype"]])

    @override
    def generate_model_card(
        self, *args: Any, license: str | None = None, repo_id: str | None = None, **kwargs: Any
    ) -> ModelCard:
        """The ``README.md`` card: Hub metadata and how to load the artefact."""
        n_params = sum(p.numel() for p in self.parameters())
        tags = self._hub_mixin_info.model_card_data.tags or []
        return model_card(self._hub_mixin_config, n_params, tags=tags, license=license, repo_id=repo_id)

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

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, **kwargs: Any) -> Self:
        """Load strictly from a directory or a Hub repo: [`from_pretrained`][scoredistill.io.hub.from_pretrained]."""
        return from_pretrained(repo_id_or_path, expected_class=cls, **kwargs)

    @classmethod
    @override
    def _from_pretrained(
        cls, *, model_id: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, **_: Any
    ) -> Self:
        directory = Path(model_id)
        config = read_config(directory)
        architecture = {k: v for k, v in config.items() if k not in META_KEYS}
        header = check_weights_file(config, directory / WEIGHTS_NAME)  # before building: its size fits the file
        try:  # on the meta device: no time is spent on a random initialisation that the weights overwrite
            with torch.device("meta"):
                module = cls.from_config(architecture)
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{directory / CONFIG_NAME}: cannot build {cls.__name__} from it: {err}") from err
        check_weight_dtypes(module, header, config.get("torch_dtype", "float32"), directory / WEIGHTS_NAME)
        load_weights(module, directory / WEIGHTS_NAME, device)
        return module.to(device=device).to(dtype=dtype).eval()


def _resolve(source: str | os.PathLike, revision: str | None = None, **download: Any) -> Path:
    """A local directory holding the artefact: the path itself, or a Hub snapshot in the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {str(path)!r} is a local directory")
        return path
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    repo_id, where = str(source), f"the Hub at {constants.ENDPOINT}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id") from err
    try:
        if not download.get("local_files_only") and not constants.HF_HUB_OFFLINE:  # answers become cache paths
            check_hub_revision(repo_id, revision, download.get("token"), (CONFIG_NAME, WEIGHTS_NAME))
        snapshot = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            library_name="scoredistill",
            library_version=__version__,
            **download,
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


def load_config(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Read and validate an artefact's ``config.json`` (class, format version), e.g. for its ``teacher_id``.

    Arguments are those of [`from_pretrained`][scoredistill.io.hub.from_pretrained].
    """
    download = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
    return read_config(_resolve(repo_id_or_path, revision, **download))


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
            (downloaded with `huggingface_hub.snapshot_download`, which honours
            ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``).
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
            [`WeightsMismatchError`][scoredistill.io.artefact.WeightsMismatchError] lists every bad key.
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
    download = {"cache_dir": cache_dir, "force_download": force_download, "token": token}
    directory = _resolve(repo_id_or_path, revision, local_files_only=local_files_only, **download)
    config = read_config(directory)
    cls = ROLES[config["_class_name"]]
    if expected_class is not None and cls is not expected_class:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} holds a {config['_class_name']}, not a {expected_class.__name__}: load it "
            f"with {config['_class_name']}.from_pretrained or scoredistill.io.hub.from_pretrained"
        )
    return cls._from_pretrained(model_id=str(directory), device=device, dtype=dtype)


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
