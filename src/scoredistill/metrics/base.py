"""The metric contract: what [`Distiller.run`][scoredistill.training.distill.Distiller.run] evaluates while it
trains, and which way is better."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..roles.generator import OneStepGenerator

__all__ = ["GeneratorMetric", "is_better"]


@runtime_checkable
class GeneratorMetric(Protocol):
    """Scores a one-step generator during training, e.g. [`FIDMetric`][scoredistill.metrics.FIDMetric].

    Every process of a multi-GPU run calls it with its own copy of the generator, so an implementation may
    split its work across processes; it must return the same value on each.

    Which way is better is the metric's optional attribute ``higher_is_better`` (FID: ``False``; an Inception
    score or a recall: ``True``); a metric without it counts as lower-is-better, as every metric of 0.1 did.

    Attributes:
        name: Key of the value in the logs, e.g. ``"fid10k"``.
    """

    name: str

    def __call__(self, generator: OneStepGenerator) -> float:
        """The generator's score."""
        ...


def is_better(metric: GeneratorMetric, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (``None``: nothing yet) for ``metric``; a non-finite value never does.

    Example:
        >>> class Recall:
        ...     name, higher_is_better = "recall", True
        >>> is_better(Recall(), 0.6, 0.5), is_better(Recall(), float("nan"), None)
        (True, False)
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if getattr(metric, "higher_is_better", False) else value < best
