"""Two helpers shared by the Hub layer, the training checkpoints and the EDM loaders.

- `atomic_directory`: write a directory next to its final place and rename it into place, so readers never
  see a half-written one; files and folders get the modes of any file the user saves (``0o666`` / ``0o777``
  less the umask), not the private modes of a temporary directory.
- `check_replaceable_artefact`: refuse to replace a directory that is not an artefact written by this library.
- `load_state_dict_strict`: load a state dict only when every key and shape fits, naming every bad key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor, nn

__all__ = [
    "ARTEFACT_MARKER",
    "StateDictMismatchError",
    "atomic_directory",
    "check_replaceable_artefact",
    "load_state_dict_strict",
    "state_dict_mismatch",
]

ARTEFACT_MARKER = ("_class_name", "_scoredistill_version")
"""Keys every ``config.json`` written by ``save_pretrained`` carries: what marks a directory as ours to replace."""


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then put it back
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path`` that replaces ``path`` once the block succeeds.

    An existing ``path`` is moved aside, the new directory renamed into its place, then the old one removed;
    if the block raises, ``path`` is left untouched and the temporary directory is deleted.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("done")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        # mkdtemp creates 0700 and some writers (safetensors) 0600: give everything the user's usual modes.
        mask = _umask()
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o777 & ~mask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable_artefact(path: str | os.PathLike, files: tuple[str, ...]) -> None:
    """Refuse to replace ``path`` unless it is missing, empty, or an artefact this library wrote.

    An artefact directory is replaced as a whole, so anything else in it would be lost. A directory qualifies
    when it holds only ``files`` (e.g. ``config.json``, ``model.safetensors``, ``README.md``) and its
    ``config.json`` carries the keys of `ARTEFACT_MARKER`; a directory whose only file is someone else's
    ``config.json`` does not.

    Args:
        path: The directory about to be replaced.
        files: The names an artefact consists of; the first is its ``config.json``.

    Raises:
        FileExistsError: ``path`` is a file, holds other files, or its config was not written by scoredistill.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return
    advice = "save_pretrained replaces its directory as a whole, so pass a new or dedicated directory"
    foreign = [name for name in names if name not in files]
    if foreign:
        raise FileExistsError(f"{path} holds other files ({', '.join(foreign[:5])}): {advice}")
    config = path / files[0]
    try:
        marked = all(key in json.loads(config.read_text(encoding="utf-8")) for key in ARTEFACT_MARKER)
    except (OSError, UnicodeDecodeError, ValueError, TypeError):  # missing, unreadable, not JSON, not an object
        marked = False
    if not marked:
        raise FileExistsError(
            f"{path} is not a scoredistill artefact (its {files[0]} lacks {' and '.join(ARTEFACT_MARKER)}): "
            f"{advice}, or remove it yourself"
        )


class StateDictMismatchError(RuntimeError):
    """A state dict that does not fit a module exactly; names every missing, unexpected and mis-shaped key.

    Attributes:
        missing: Keys the module has but the state dict lacks.
        unexpected: Keys the state dict has but the module lacks.
        mismatched: ``(key, expected_shape, got_shape)`` for keys whose shapes differ.
    """

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"state dict does not match the module ({len(missing) + len(unexpected) + len(mismatched)} keys):"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {k}: module {list(a)}, state dict {list(b)}" for k, a, b in mismatched]
        super().__init__("\n".join(lines))


def state_dict_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> StateDictMismatchError | None:
    """The error describing how ``given`` misfits ``expected`` (keys and shapes), or ``None`` if it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in given.items()
        if k in expected and tuple(expected[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        return StateDictMismatchError(missing, unexpected, mismatched)
    return None


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], *, assign: bool = False) -> nn.Module:
    """Load ``state_dict`` into ``module`` only if every key and shape fits; nothing is loaded otherwise.

    Args:
        module: The destination.
        state_dict: Tensors named like ``module.state_dict()`` (parameters and persistent buffers).
        assign: Assign the tensors instead of copying them (for a module built on the meta device).

    Returns:
        ``module``.

    Raises:
        StateDictMismatchError: Listing every missing, unexpected and mis-shaped key at once.
    """
    error = state_dict_mismatch(module.state_dict(), state_dict)
    if error is not None:
        raise error
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module
