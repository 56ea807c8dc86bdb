"""What the ``scoredistill`` command and the example scripts share: one-line errors and the checks of their options.

Errors past argument parsing are printed as one line, ``PROG: error: ...``, naming the option to change, and exit
with status 2, as argparse's own errors do; ``--debug`` or ``SCOREDISTILL_DEBUG=1`` shows the Python traceback
instead. [`run_command`][scoredistill._cmdline.run_command] is that boundary; the helpers below raise
``SystemExit("one line")`` for the mistakes they find.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "CommandError",
    "OneLineParser",
    "blame",
    "blame_hub",
    "check_device",
    "debug",
    "local_artefact",
    "looks_local",
    "number",
    "one_line",
    "run_command",
    "set_debug",
]

# The library's error types: turned into one-line messages at the command-line boundary.
LIBRARY_ERRORS = (ValueError, OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError)


class CommandError(SystemExit):
    """A one-line command-line error: exit status 2, the message in ``str(err)`` (already printed to stderr)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``PROG: error: ...`` (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


_DEBUG = False  # set from --debug


def set_debug(value: bool) -> None:
    """Show tracebacks instead of one-line errors (``--debug``)."""
    global _DEBUG
    _DEBUG = bool(value)


def debug() -> bool:
    """Whether tracebacks are wanted: ``--debug`` or ``SCOREDISTILL_DEBUG`` set to anything but ``0``."""
    return _DEBUG or os.environ.get("SCOREDISTILL_DEBUG", "") not in ("", "0")


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    A DataLoader worker's error carries the worker's whole traceback in its message: only its last line, the
    worker's own message, is kept.
    """
    text = str(err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err)  # KeyError's str adds quotes
    if _WORKER_TRACEBACK in text:
        last = [line for line in text.split(_WORKER_TRACEBACK, 1)[1].splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())  # "scoredistill.data.DatasetError: ..."
    return " ".join(text.split())


@contextmanager
def blame(what: str) -> Iterator[None]:
    """Report a library error raised in the block as one line that starts with ``what`` (the flag to change)."""
    try:
        yield
    except LIBRARY_ERRORS as err:
        if debug():
            raise
        raise SystemExit(f"{what}: {one_line(err)}") from err


@contextmanager
def blame_hub(what: str) -> Iterator[None]:
    """[`blame`][scoredistill._cmdline.blame], and a Hub or network error (long and multi-line) said in one line."""
    with blame(what):
        try:
            yield
        except Exception as err:
            hub = type(err).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx"))
            if not hub or debug():
                raise
            raise OSError(
                f"could not load it from the Hub ({type(err).__name__}): check the repo id (org/name), the revision, "
                "your network and HF_TOKEN; a local directory must exist"
            ) from err


def run_command(prog: str, func: Callable[[], Any]) -> Any:
    """Run ``func()``; its errors become one line on stderr and a [`CommandError`][scoredistill._cmdline.CommandError].

    ``SystemExit("message")`` raised by the checks is printed as it is; a library error that no check tied to a
    flag is printed with a pointer to ``--debug``. With [`debug`][scoredistill._cmdline.debug] the original
    exception propagates instead.

    Raises:
        CommandError: The one-line error, exit status 2.
    """
    try:
        return func()
    except CommandError:
        raise
    except SystemExit as err:  # the checks' own one-line messages
        if not isinstance(err.code, str) or debug():
            raise
        message = one_line(err)
        cause: BaseException = err
    except LIBRARY_ERRORS as err:  # not tied to a flag: still one line, never a traceback
        if debug():
            raise
        message, cause = f"{one_line(err)} (run with --debug for the traceback)", err
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise CommandError(message) from cause


def number(
    kind: type[int] | type[float], *, low: float = 0.0, low_open: bool = True, high: float | None = None
) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` above ``low`` (``>= low`` unless ``low_open``) and at most ``high``."""

    def parse_value(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if low_open and not value > low:
            raise argparse.ArgumentTypeError(f"must be {'positive' if low == 0 else f'> {low:g}'}, got {text}")
        if not low_open and not value >= low:
            raise argparse.ArgumentTypeError(f"must be {'non-negative' if low == 0 else f'>= {low:g}'}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value

    return parse_value


def check_device(flag: str, name: str) -> str:
    """``name`` if it is a device this machine has; otherwise a one-line error naming ``flag``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SystemExit(f"{flag} {name}: not a device name; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise SystemExit(f"{flag} {name}: CUDA is not available on this machine ({built}); use {flag} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SystemExit(f"{flag} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"{flag} {name}: unsupported device type {device.type!r}; use cpu or cuda")
    return name


_FILE_SUFFIXES = {".pkl", ".pt", ".pth", ".safetensors", ".json", ".zip", ".npz", ".png", ".jpg"}


def looks_local(text: str) -> bool:
    """Whether ``text`` names a local path rather than a Hub repo id ``org/name``.

    It does when it exists, starts with ``.``, ``/`` or ``~``, is a bare file name (``model.pkl``), has more than
    one separator, uses the platform's own separator, or its first component is a local directory
    (``runs/my-run``: a mistyped run directory).
    """
    if not text or Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
        return True
    if "/" not in text and Path(text).suffix.lower() in _FILE_SUFFIXES:
        return True
    if (
        text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
        or (os.altsep and os.altsep != "/" and os.altsep in text)
    ):
        return True
    return "/" in text and Path(text.split("/")[0]).is_dir()


_RUN_GENERATORS = ("generator_ema", "generator_best", "generator_last")


def _is_artefact(path: Path) -> bool:
    """Whether ``path/config.json`` is an artefact's (it has ``_class_name``), not a run's record."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return True  # let the loader say what is wrong with it
    return not isinstance(config, dict) or "_class_name" in config or "args" not in config


def _run_teacher(path: Path) -> str | None:
    """The ``--teacher`` a run directory's ``config.json`` records, if any."""
    try:
        teacher = json.loads((path / "config.json").read_text())["args"]["teacher"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return teacher if isinstance(teacher, str) else None


def local_artefact(flag: str, text: str, *, role: str = "generator") -> Path:
    """The artefact directory that ``text`` names locally, or a one-line error that says what to pass instead.

    A run directory (what ``examples/distill_edm.py --outdir`` writes) stands for its ``generator_ema/`` where a
    generator is expected (``role="generator"``); where a teacher is expected, the error names the teacher the
    run recorded.
    """
    path = Path(text).expanduser()
    if path.is_dir():
        has_config = (path / "config.json").is_file()
        if has_config and _is_artefact(path):
            return path
        generators = [name for name in _RUN_GENERATORS if (path / name).is_dir()]
        if has_config or generators or (path / "training_state").is_dir():  # a run directory
            if role != "generator":
                recorded = _run_teacher(path)
                hint = f"; it was distilled from --teacher {recorded}" if recorded else ""
                raise SystemExit(
                    f"{flag} {text} is a run directory (its generator_ema/ is a one-step generator, not a {role})"
                    f": pass the {role} network{hint}"
                )
            if (path / "generator_ema" / "config.json").is_file():
                return path / "generator_ema"
            if generators:
                hint = " or ".join(str(path / name) for name in generators)
                raise SystemExit(f"{flag} {text} is a run directory without a finished generator_ema/: pass {hint}")
            raise SystemExit(
                f"{flag} {text} is a run directory without generator_ema/ (the run has not finished): finish or "
                "resume the run, or pass a generator directory"
            )
        raise SystemExit(f"{flag} {text} has no config.json: not a scoredistill artefact directory")
    if path.is_file():
        if path.suffix == ".pkl":
            if role == "teacher":
                return path
            raise SystemExit(
                f"{flag} {text} is a pickle: convert it first with `scoredistill convert {text} OUTDIR --as generator`"
            )
        if path.name in ("config.json", "model.safetensors"):
            raise SystemExit(f"{flag} {text} is a file: pass its directory, {path.parent}")
        raise SystemExit(f"{flag} {text} is a file: pass an artefact directory (config.json + model.safetensors)")
    parent = next((p for p in path.parents if p.is_dir()), Path("."))
    raise SystemExit(
        f"{flag} {text}: no such directory (nearest existing: {str(parent).rstrip(os.sep) + os.sep}); a Hub repo id "
        "looks like org/name"
    )
