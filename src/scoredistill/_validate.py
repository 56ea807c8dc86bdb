"""Fail-fast checks for settings: typed, finite, in range, each error naming the setting and what to pass.

Every config dataclass and every loss / EMA constructor checks its numbers with these, so that NaN, infinity,
a float where an int is meant and a ``bool`` where a number is meant are refused where they are given, not
several thousand images into a run.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_real"]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    hint: str = "",
) -> None:
    """Refuse ``value`` unless it is a finite real number (not a ``bool``) in the given range.

    Example:
        >>> check_real("alpha", 1.2, low=0, low_open=True)
        >>> check_real("alpha", float("inf"), low=0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be finite, got inf

    Args:
        name: The setting's name, used in the message.
        value: What was given.
        low: Lower bound, or ``None`` for none.
        high: Upper bound, or ``None`` for none.
        low_open: Exclude ``low`` itself (``value > low``).
        high_open: Exclude ``high`` itself (``value < high``).
        optional: Accept ``None`` (the setting's "off" value).
        hint: Appended to the message, e.g. what the reference uses.

    Raises:
        TypeError: Not a real number (or a ``bool``).
        ValueError: NaN, infinite or out of range.
    """
    if optional and value is None:
        return
    if not _is_real(value):
        none = " or None" if optional else ""
        raise TypeError(f"{name} must be a real number{none}, got {value!r} ({type(value).__name__}){hint}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            bound = f"> {low:g}" if low_open else f">= {low:g}"
        elif low is None:
            bound = f"< {high:g}" if high_open else f"<= {high:g}"
        else:
            bound = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {bound}, got {value:g}{hint}")


def check_int(name: str, value: Any, *, low: int | None = None, optional: bool = False, hint: str = "") -> None:
    """Refuse ``value`` unless it is an ``int`` (not a ``bool``, not a float such as ``2.5`` or ``2.0``) ``>= low``.

    Raises:
        TypeError: Not an integer.
        ValueError: Below ``low``.
    """
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        none = " or None" if optional else ""
        raise TypeError(f"{name} must be an int{none}, got {value!r} ({type(value).__name__}){hint}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}{hint}")


def check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    """Refuse anything but ``True`` / ``False`` (and ``None`` when ``optional``).

    Raises:
        TypeError: Not a ``bool``.
    """
    if (optional and value is None) or isinstance(value, bool):
        return
    none = " or None" if optional else ""
    raise TypeError(f"{name} must be True or False{none}, got {value!r} ({type(value).__name__})")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (compared by type and value, so ``1`` is not ``True``).

    Raises:
        ValueError: Not one of ``choices``.
    """
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
