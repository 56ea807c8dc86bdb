"""Helpers shared by the Hub layer, the training checkpoints and the EDM loaders.

- `atomic_directory`: write a directory next to its final place and swap it in, so that a kill at any
  moment leaves either the old or the new complete directory (see `recover_directory`); files and folders
  get the modes of any file the user saves (``0o666`` / ``0o777`` less the umask), not the private modes of a
  temporary directory.
- `check_replaceable_artefact`: refuse to replace a directory that is not an artefact written by this library.
- `load_state_dict_strict`: load a state dict only when every key and shape fits, naming every bad key.
"""

from __future__ import annotations

import json
import os
import re
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
    "recover_directory",
    "state_dict_mismatch",
    "writable_directory",
]

ARTEFACT_MARKER = ("_class_name", "_scoredistill_version")
"""Keys every ``config.json`` written by ``save_pretrained`` carries: what marks a directory as ours to replace."""

# The siblings a write of ``name`` makes: ``.name.tmp-XXXX`` (being written), ``.name.new-XXXX`` (complete and
# synced, about to go in), ``.name.old-XXXX`` (the previous directory, moved aside). XXXX is mkdtemp's suffix.
_SIBLING = r"\.{name}\.(tmp|new|old)-[a-z0-9_]{{6,32}}"


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then put it back
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows; NTFS renames are journalled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Give everything under ``root`` the user's usual modes and flush every file and folder to disk."""
    mask = _umask()
    for here, dirs, files in os.walk(root, topdown=False):
        for name in files:
            file = os.path.join(here, name)
            os.chmod(file, 0o666 & ~mask)
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        for name in dirs:
            os.chmod(os.path.join(here, name), 0o777 & ~mask)
            _fsync_dir(Path(here) / name)
    os.chmod(root, 0o777 & ~mask)
    _fsync_dir(root)


def _siblings(path: Path, kind: str) -> list[Path]:
    """``path``'s own sibling directories of one kind (``tmp``, ``new``, ``old``), newest first; never links."""
    if not path.parent.is_dir():
        return []
    pattern = re.compile(_SIBLING.format(name=re.escape(path.name)))
    found = []
    for entry in os.scandir(path.parent):
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) == kind and entry.is_dir(follow_symlinks=False):
            found.append((entry.stat(follow_symlinks=False).st_mtime_ns, Path(entry.path)))
    return [p for _, p in sorted(found, reverse=True)]


def recover_directory(path: str | os.PathLike) -> bool:
    """Put back ``path`` after a write of `atomic_directory` was killed between its two renames.

    That is the one moment when a write leaves no ``path``: the previous version moved aside as
    ``.NAME.old-XXXX`` and the complete new one waiting as ``.NAME.new-XXXX``, with the same ``XXXX``. Only
    then is the new version renamed into place. A sibling alone is never used: a ``path`` missing beside it was
    deleted by someone (``rm -rf training_state`` to start over), and must stay deleted.

    Returns:
        Whether ``path`` exists now.
    """
    path = Path(path).expanduser().resolve()  # as atomic_directory named the siblings
    if path.exists():
        return True
    prefix = f".{path.name}.new-"
    for candidate in _siblings(path, "new"):
        moved_aside = path.parent / f".{path.name}.old-{candidate.name[len(prefix) :]}"
        if moved_aside.is_symlink() or not moved_aside.is_dir():
            continue  # not the crash window: this write never moved a previous version aside
        try:
            os.rename(candidate, path)
        except OSError:  # another process (another rank) put one back first, or took this one
            if path.exists():
                return True
            continue
        _fsync_dir(path.parent)
        return True
    return False


def remove_stale_siblings(path: str | os.PathLike) -> None:
    """Delete what killed writes of ``path`` left beside it: only directories named like this module's own.

    Call it when ``path`` exists (after `recover_directory`): a missing ``path`` would otherwise lose the
    complete version that a killed write left beside it.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: recover_directory() it before removing its siblings")
    for kind in ("tmp", "new", "old"):
        for sibling in _siblings(path, kind):
            shutil.rmtree(sibling, ignore_errors=True)


def writable_directory(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every link and ``..`` resolved, before anything checks or writes it.

    Resolving first means that ``out/typo/../victim`` is checked as ``out/victim`` (and ``out/typo`` is never
    created), and that a symlinked directory is replaced behind its link rather than the link itself.

    Raises:
        ValueError: ``path`` is the working directory or holds it: replacing it would pull the directory out
            from under this process (and the shell that started it).
    """
    path = Path(path).expanduser().resolve()
    if Path.cwd().resolve().is_relative_to(path):
        raise ValueError(f"{path} is the working directory or holds it: pass a new or dedicated directory to write")
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path`` that replaces ``path`` once the block succeeds.

    The steps, each a point where a kill leaves a complete directory behind:

    1. the block writes into ``.NAME.tmp-XXXX``; its files and folders are then flushed to disk (fsync);
    2. without a ``path`` to replace, it is renamed ``path`` and the parent directory flushed: done. Otherwise it is
       renamed ``.NAME.new-XXXX`` (complete), and the parent directory flushed;
    3. ``path`` is renamed ``.NAME.old-XXXX``;
    4. ``.NAME.new-XXXX`` is renamed ``path``, the parent flushed, and ``.NAME.old-XXXX`` removed.

    A kill between 3 and 4 leaves no ``path`` but two complete siblings of one ``XXXX``: `recover_directory`
    (called by the readers and by the next write) renames the new one into place. Siblings left by a kill at any
    other moment are never put back, so a ``path`` deleted after such a kill stays deleted. Each write also removes
    the siblings left by killed writes, matching only the names above. One writer per ``path`` at a time.

    ``path`` is resolved first (`writable_directory`): a symlinked directory is replaced behind its link, and
    ``a/typo/../b`` means ``a/b`` without creating ``a/typo``. If the block or a rename raises, ``path`` is left
    as it was and the temporary directories are deleted.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("done")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']
    """
    path = writable_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if recover_directory(path):
        remove_stale_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    suffix = tmp.name[len(f".{path.name}.tmp-") :]
    new, old = path.parent / f".{path.name}.new-{suffix}", path.parent / f".{path.name}.old-{suffix}"
    try:
        yield tmp
        _sync_tree(tmp)
        if not path.exists():
            os.rename(tmp, path)
            _fsync_dir(path.parent)
            return
        os.rename(tmp, new)
        _fsync_dir(path.parent)
        os.rename(path, old)
        try:
            os.rename(new, path)
        except OSError:  # put the previous directory back
            os.rename(old, path)
            raise
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except Exception:  # a failed swap leaves no complete copy beside path (a kill, which raises nothing, does)
        shutil.rmtree(new, ignore_errors=True)
        raise
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
    path = writable_directory(path)
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
