"""What a backbone's config declares, learnt without building the network.

Every registered backbone answers ``config_facts(config)``: it checks a ``config.json`` entry (types and ranges,
cheaply) and says what the network will take and hold, so that a loader can refuse a hostile or careless config
(10,000 blocks, an MLP 10^5 deep) before spending minutes and gigabytes building it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BackboneFacts", "config_ints"]


@dataclass(frozen=True)
class BackboneFacts:
    """What a backbone config declares: its conditioning, its sample shape and a lower bound on its size.

    Attributes:
        label_dim: Number of classes it is conditioned on (0: unconditional); a Precond around it must agree.
        augment_dim: Size of its augmentation conditioning (0: none); a Precond around it must agree.
        sample_shape: The shape of one sample it takes and makes; an entry ``None`` is a free size (a multiple of
            ``size_multiple``), and ``None`` as a whole says nothing about the shape.
        size_multiple: What a free size must be a multiple of (a UNet that halves its input twice: 4).
        min_tensors: A lower bound on the number of tensors in its state dict.
        min_elements: A lower bound on the number of elements in its state dict. The bounds need not be tight,
            only never above the real network: a loader refuses a file that holds far fewer.
    """

    label_dim: int = 0
    augment_dim: int = 0
    sample_shape: tuple[int | None, ...] | None = None
    size_multiple: int = 1
    min_tensors: int = 0
    min_elements: int = 0

    def shape_error(self, shape: tuple[int, ...]) -> str | None:
        """Why a role's ``sample_shape`` contradicts this backbone, or ``None`` when it fits."""
        want = self.sample_shape
        if want is None:
            return None
        fits = len(shape) == len(want) and all(
            s == w if w is not None else s > 0 and s % self.size_multiple == 0 for s, w in zip(shape, want)
        )
        if fits:
            return None
        shown = ", ".join("N" if w is None else str(w) for w in want)
        free = f" with N a multiple of {self.size_multiple}" if None in want and self.size_multiple > 1 else ""
        return f"it makes [{shown}]{free}"


def config_ints(
    config: Mapping[str, Any], defaults: Mapping[str, int | None], *, zero_ok: tuple[str, ...] = ()
) -> dict[str, int]:
    """A config of int fields, checked: no unknown key, every required key (default ``None``) present, every value
    an int of at least 1 (0 allowed for the keys in ``zero_ok``). Values are never shown whole in errors.

    Returns:
        ``defaults`` updated with ``config``.

    Raises:
        ValueError: Naming the first bad key.

    Example:
        >>> config_ints({"dim": 2}, {"dim": None, "hidden": 64})
        {'dim': 2, 'hidden': 64}
    """
    unknown = sorted(str(k)[:40] for k in config if k not in defaults)
    if unknown:
        raise ValueError(f"unknown keys {unknown[:10]}; valid keys: {list(defaults)}")
    out = {**defaults, **config}
    for key, value in out.items():
        if value is None:
            raise ValueError(f"{key} is required")
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key in zero_ok else 1):
            kind = "non-negative" if key in zero_ok else "positive"
            shown = repr(value)[:20] if type(value) is int else f"a {type(value).__name__}"
            raise ValueError(f"{key} must be a {kind} int, got {shown}")
    return out  # type: ignore[return-value]
