"""Feature statistics for FID and precision/recall: exact, mergeable moments and the distances between them.

FID (Heusel et al. 2017) compares the mean and covariance of Inception features of two image sets. This module
keeps those moments as exact float64 sums ([`FeatureStats`][scoredistill.metrics.FeatureStats]) so that shards,
processes and separate runs combine to the one-pass result, computes the Fréchet distance without SciPy
([`frechet_distance`][scoredistill.metrics.frechet_distance]), the improved precision and recall of Kynkäänniemi et al.
2019 ([`precision_recall`][scoredistill.metrics.precision_recall]). Extracting the features from images, datasets and
generators is [`scoredistill.metrics.extract`][scoredistill.metrics.extract]'s job.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_FEATURE_DIM", "FeatureStats", "frechet_distance", "precision_recall"]

_NO_DIM = 2**62  # what a rank without features reports as its dimension's lower bound in all_reduce


class FeatureStats:
    """Exact, mergeable first and second moments of feature vectors.

    Holds ``count`` (number of vectors), ``sum`` (float64 ``[D]``) and ``sum_outer`` (float64 ``[D, D]``, the sum
    of ``x xᵀ``). The sums live on the device of the first features seen (or ``device``): on a GPU they stay
    float64 CUDA tensors, so [`update`][scoredistill.metrics.stats.FeatureStats.update] copies nothing to the host but
    one flag (the finiteness check). Because the sums are exact up to float64 rounding, statistics of shards, processes
    ([`all_reduce`][scoredistill.metrics.stats.FeatureStats.all_reduce]) and separate runs
    ([`merge`][scoredistill.metrics.stats.FeatureStats.merge], ``+``, ``sum(...)``) equal the one-pass statistics.

    Statistics read from a file holding only ``mu`` and ``sigma`` (the reference files published with EDM,
    Karras et al. 2022) are *moments-only*: they score ([`frechet_distance`][scoredistill.metrics.frechet_distance]) but
    cannot be updated or merged.

    Args:
        dim: Feature dimension; ``None`` takes it from the first
            [`update`][scoredistill.metrics.stats.FeatureStats.update].
        device: Where the sums live; ``None`` takes the device of the first
            [`update`][scoredistill.metrics.stats.FeatureStats.update].

    Example:
        >>> import torch
        >>> a = FeatureStats().update(torch.randn(100, 8))
        >>> b = FeatureStats().update(torch.randn(50, 8))
        >>> (a + b).count, a.mu.shape, a.sigma.shape
        (150, (8,), (8, 8))
    """

    def __init__(self, dim: int | None = None, *, device: torch.device | str | None = None):
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None
        self._device: torch.device | None = None if device is None else torch.device(device)
        self._moments: tuple[np.ndarray, np.ndarray] | None = None
        if dim is not None:
            self._allocate(dim, self._device or torch.device("cpu"))

    def _allocate(self, dim: int, device: torch.device) -> None:
        if dim < 1:
            raise ValueError(f"the feature dimension must be positive, got {dim}")
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @classmethod
    def from_moments(cls, mu: np.ndarray | Tensor, sigma: np.ndarray | Tensor) -> FeatureStats:
        """Moments-only statistics from a mean ``[D]`` and covariance ``[D, D]`` (they score but do not merge)."""
        mu_np = np.asarray(torch.as_tensor(mu).detach().cpu(), dtype=np.float64)
        sigma_np = np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=np.float64)
        if mu_np.ndim != 1 or sigma_np.shape != (mu_np.size, mu_np.size):
            raise ValueError(f"mu must be [D] and sigma [D, D], got {mu_np.shape} and {sigma_np.shape}")
        if not (np.isfinite(mu_np).all() and np.isfinite(sigma_np).all()):
            raise ValueError("mu and sigma must be finite")
        stats = cls()
        stats._moments = (mu_np, sigma_np)
        return stats

    # Properties.
    @property
    def dim(self) -> int | None:
        """Feature dimension ``D`` (``None`` before the first update)."""
        if self._moments is not None:
            return int(self._moments[0].size)
        return None if self.sum is None else int(self.sum.shape[0])

    @property
    def mergeable(self) -> bool:
        """Whether these statistics hold the sums (``False`` for moments-only statistics)."""
        return self._moments is None

    @property
    def mu(self) -> np.ndarray:
        """The mean, float64 ``[D]``."""
        if self._moments is not None:
            return self._moments[0].copy()
        if self.sum is None or self.count < 1:
            raise ValueError("no features yet: call update() first")
        return (self.sum / self.count).cpu().numpy()

    @property
    def sigma(self) -> np.ndarray:
        """The unbiased covariance ``(sum_outer - n mu muᵀ) / (n - 1)``, float64 ``[D, D]`` (as ``np.cov``)."""
        if self._moments is not None:
            return self._moments[1].copy()
        if self.sum is None or self.sum_outer is None or self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, got {self.count}")
        sigma = (self.sum_outer - torch.outer(self.sum, self.sum) / self.count) / (self.count - 1)
        return ((sigma + sigma.T) / 2).cpu().numpy()

    @property
    def device(self) -> torch.device | None:
        """Where the sums live (``None`` before the first update and for moments-only statistics)."""
        return None if self.sum is None else self.sum.device

    def __repr__(self) -> str:
        kind = "moments-only" if self._moments is not None else f"count={self.count}, device={self.device}"
        return f"{type(self).__name__}(dim={self.dim}, {kind})"

    # Accumulation.
    def update(self, features: Tensor | np.ndarray) -> FeatureStats:
        """Add a batch of feature vectors ``[N, D]`` (any float dtype, any device); returns ``self``.

        Raises:
            ValueError: The features are not ``[N, D]``, ``D`` differs from earlier updates, they hold NaN or
                infinity, or these statistics are moments-only.
        """
        self._require_sums("update")
        x = torch.as_tensor(features).detach()
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"features must be a matrix [N, D], got shape {tuple(x.shape)}")
        if self.sum is None:
            self._allocate(x.shape[1], self._device or x.device)
        assert self.sum is not None and self.sum_outer is not None
        if x.shape[1] != self.sum.shape[0]:
            raise ValueError(f"features have dimension {x.shape[1]}, but these statistics have {self.sum.shape[0]}")
        x = x.to(self.sum.device, torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("features contain NaN or infinity (check the images and the feature extractor)")
        self.count += x.shape[0]
        self.sum += x.sum(dim=0)
        self.sum_outer.addmm_(x.T, x)
        return self

    def _require_sums(self, action: str) -> None:
        if self._moments is not None:
            raise ValueError(
                f"cannot {action} moments-only statistics (a file with only mu and sigma, like EDM's reference "
                "files): they have no count, sum and sum_outer; recompute them with scoredistill to merge"
            )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics of both feature sets (on this object's device); neither input changes.

        Raises:
            ValueError: Either side is moments-only, or the dimensions differ.
        """
        self._require_sums("merge")
        other._require_sums("merge")
        if other.sum is None or other.sum_outer is None:
            return self._copy()
        if self.sum is None or self.sum_outer is None:
            return other._copy()
        if self.dim != other.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        out = self._copy()
        assert out.sum is not None and out.sum_outer is not None
        out.count += other.count
        out.sum += other.sum.to(out.sum.device)
        out.sum_outer += other.sum_outer.to(out.sum.device)
        return out

    def _copy(self) -> FeatureStats:
        out = FeatureStats(device=self._device)
        out.count = self.count
        out.sum = None if self.sum is None else self.sum.clone()
        out.sum_outer = None if self.sum_outer is None else self.sum_outer.clone()
        return out

    def __add__(self, other: FeatureStats) -> FeatureStats:
        if not isinstance(other, FeatureStats):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: object) -> FeatureStats:
        if isinstance(other, int) and other == 0:  # sum(list_of_stats) starts from 0
            return self._copy()
        return NotImplemented

    def all_reduce(self, group: Any = None) -> FeatureStats:
        """Sum the statistics over the processes of ``torch.distributed`` in place; returns ``self``.

        A no-op without an initialised process group. Works with gloo (CPU tensors) and NCCL (the sums travel
        on this process's CUDA device). Every process must call it; processes that saw no features may take
        part (they take the others' dimension).

        Args:
            group: The process group (``None``: the default group).

        Raises:
            ValueError: On every process, when the processes' dimensions differ or any statistics are
                moments-only.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        comm = _comm_device(dist.get_backend(group), self.device)
        dim = None if self.sum is None else self.dim
        # One small reduction first, so that every process agrees on the dimension (or fails together).
        meta = torch.tensor(
            [dim or 0, -(dim or _NO_DIM), int(self._moments is not None)], dtype=torch.int64, device=comm
        )
        dist.all_reduce(meta, op=dist.ReduceOp.MAX, group=group)
        max_dim, min_dim, moments_only = int(meta[0]), -int(meta[1]), int(meta[2])
        if moments_only:
            raise ValueError("cannot all_reduce moments-only statistics: some process holds only mu and sigma")
        if max_dim == 0:
            return self
        if min_dim != max_dim:
            raise ValueError(f"processes hold features of different dimensions (from {min_dim} to {max_dim})")
        if self.sum is None:
            self._allocate(max_dim, self._device or comm)
        assert self.sum is not None and self.sum_outer is not None
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        flat = torch.cat([count, self.sum, self.sum_outer.flatten()]).to(comm)
        dist.all_reduce(flat, group=group)
        flat = flat.to(self.sum.device)
        self.count = int(flat[0])
        self.sum.copy_(flat[1 : 1 + max_dim])
        self.sum_outer.copy_(flat[1 + max_dim :].view(max_dim, max_dim))
        return self

    # Files.
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.npz`` file (``np.savez``, no pickle) to exactly ``path``; returns it.

        It holds EDM's keys ``mu`` and ``sigma`` (float64), and for mergeable statistics ``count`` (int64),
        ``sum`` and ``sum_outer`` (float64) as well. The file is written next to ``path`` first and then
        renamed, so an interrupted save leaves no half-written file.

        Raises:
            ValueError: Fewer than 2 feature vectors (no covariance).
        """
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self._moments is None:
            assert self.sum is not None and self.sum_outer is not None
            arrays.update(
                count=np.int64(self.count), sum=self.sum.cpu().numpy(), sum_outer=self.sum_outer.cpu().numpy()
            )
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> FeatureStats:
        """Read statistics written by [`save`][scoredistill.metrics.stats.FeatureStats.save], or a ``mu``/``sigma``-only
        file (moments-only statistics).

        Args:
            path: The ``.npz`` file (read with ``allow_pickle=False``).
            device: Where the sums of mergeable statistics go.

        Raises:
            FileNotFoundError: No file at ``path``.
            ValueError: The file is not a readable ``.npz``, lacks keys, holds arrays of the wrong dtypes or shapes,
                or declares a feature dimension above
                [`MAX_FEATURE_DIM`][scoredistill.metrics.stats.MAX_FEATURE_DIM]. Shapes and dtypes are checked
                from the arrays' headers before any array is read, and only the arrays used are read, so a small
                file cannot make the loader allocate gigabytes.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        try:
            headers = _npz_headers(path)
        except _Refused as err:
            raise ValueError(f"{path}: {err}") from err
        except Exception as err:  # a corrupt file fails in many ways: BadZipFile, zlib.error, EOFError, ValueError
            raise ValueError(f"{path} is not a readable .npz statistics file ({type(err).__name__}: {err})") from err
        keys = ("count", "sum", "sum_outer") if {"count", "sum", "sum_outer"} <= headers.keys() else ("mu", "sigma")
        if not set(keys) <= headers.keys():
            raise ValueError(
                f"{path} holds {sorted(headers)}; expected 'mu' and 'sigma' (and 'count', 'sum', 'sum_outer' to merge)"
            )
        try:
            _check_sizes(keys, headers)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        try:  # only the arrays used, each of a size checked above
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in keys}
        except Exception as err:
            raise ValueError(f"{path} is not a readable .npz statistics file ({type(err).__name__}: {err})") from err
        if keys[0] == "count":
            count, total, outer = arrays["count"], arrays["sum"], arrays["sum_outer"]
            if int(count) < 0:
                raise ValueError(f"{path}: 'count' must be a non-negative integer, got {count!r}")
            if not (np.isfinite(total).all() and np.isfinite(outer).all()):
                raise ValueError(f"{path}: 'sum' and 'sum_outer' must be finite")
            stats = cls(device=device)
            stats.count = int(count)
            stats.sum = torch.from_numpy(total.astype(np.float64)).to(device)
            stats.sum_outer = torch.from_numpy(outer.astype(np.float64)).to(device)
            return stats
        try:
            return cls.from_moments(arrays["mu"], arrays["sigma"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


MAX_FEATURE_DIM = 8192
"""Largest feature dimension a statistics file may declare (a float64 ``[D, D]`` covariance of 512 MiB; Inception's
is 2048). [`FeatureStats.load`][scoredistill.metrics.stats.FeatureStats.load] checks it before reading any array."""

_NPZ_KEYS = ("count", "sum", "sum_outer", "mu", "sigma")


class _Refused(ValueError):
    """A readable statistics file that the loader refuses (its message is complete)."""


_NPZ_MAX_MEMBERS = 64


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of a statistics ``.npz`` that the loader knows, from the ``.npy`` headers
    alone (no array data is read)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if len(names) > _NPZ_MAX_MEMBERS:
            raise _Refused(f"{len(names)} arrays; a statistics file holds at most {len(_NPZ_KEYS)}")
        headers = {}
        for name in names:
            key = name.removesuffix(".npy")
            if key not in _NPZ_KEYS:
                continue
            with archive.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise _Refused(f"'{key}' has .npy format version {version}, expected 1.0 or 2.0")
            headers[key] = (tuple(shape), dtype)
    return headers


def _check_sizes(keys: tuple[str, ...], headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse arrays of the wrong kind, shape or size before they are read."""
    if keys[0] == "count":
        shape, dtype = headers["count"]
        if shape != () or dtype.kind not in "iu":
            raise ValueError(f"'count' must be a non-negative integer, got a {dtype} array of shape {shape}")
        vector, matrix = "sum", "sum_outer"
    else:
        vector, matrix = "mu", "sigma"
    (v_shape, v_dtype), (m_shape, m_dtype) = headers[vector], headers[matrix]
    for key, dtype in ((vector, v_dtype), (matrix, m_dtype)):
        if dtype.kind != "f":
            raise ValueError(f"'{key}' must hold floating point numbers, got {dtype}")
    if len(v_shape) != 1 or m_shape != (v_shape[0], v_shape[0]):
        raise ValueError(f"'{vector}' must be [D] and '{matrix}' [D, D], got {v_shape} and {m_shape}")
    if not 1 <= v_shape[0] <= MAX_FEATURE_DIM:
        raise ValueError(
            f"'{matrix}' is declared {m_shape}: the feature dimension must be between 1 and {MAX_FEATURE_DIM} "
            "(refusing to read it)"
        )


def _comm_device(backend: str, device: torch.device | None) -> torch.device:
    """Where tensors of ``device`` travel for a collective: the CPU for gloo, a CUDA device for NCCL."""
    if backend == "gloo":
        return torch.device("cpu")
    if device is not None and device.type != "cpu":
        return device
    if torch.cuda.is_available():  # NCCL with tensors on the CPU
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _as_stats(stats: FeatureStats | str | os.PathLike[str]) -> FeatureStats:
    return stats if isinstance(stats, FeatureStats) else FeatureStats.load(stats)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative eigenvalues from rounding clamp to 0)."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(a: FeatureStats | str | os.PathLike[str], b: FeatureStats | str | os.PathLike[str]) -> float:
    """The Fréchet distance of two Gaussians fitted to features: FID when they are Inception features.

    ``FID = ||mu_a - mu_b||² + Tr(Σa + Σb - 2 (Σa Σb)^{1/2})`` (Heusel et al. 2017), in float64 and without
    SciPy: ``Σa Σb`` is similar to the symmetric PSD matrix ``Σa^{1/2} Σb Σa^{1/2}``, so ``Tr((Σa Σb)^{1/2})``
    is the sum of the square roots of that matrix's eigenvalues. Two symmetric eigendecompositions
    (``numpy.linalg.eigh``; ``Σa^{1/2}`` from the first) give it, with eigenvalues that rounding makes slightly
    negative clamped to 0. Unlike a general matrix square root this stays accurate for singular covariances
    (fewer images than feature dimensions). The result is clamped at 0: a negative value can only be rounding.

    Args:
        a: Statistics, or the path of a statistics file (see
            [`FeatureStats.load`][scoredistill.metrics.stats.FeatureStats.load]).
        b: The other statistics or file.

    Returns:
        The distance, a Python float.

    Raises:
        ValueError: The dimensions differ, or a side has fewer than 2 feature vectors.
    """
    stats_a, stats_b = _as_stats(a), _as_stats(b)
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"cannot compare statistics of dimension {stats_a.dim} and {stats_b.dim}")
    mu_a, sigma_a, mu_b, sigma_b = stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma
    root_a = _psd_sqrt(sigma_a)
    product = root_a @ sigma_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    fid = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
    return max(float(fid), 0.0)


# Precision and recall.


def _feature_matrix(features: Tensor | np.ndarray, name: str) -> Tensor:
    x = torch.as_tensor(features).detach()
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a matrix [N, D], got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinity")
    return x


def _squared_distances(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """``[len(a), len(b)]`` squared Euclidean distances ``|a|² + |b|² - 2 a·b``, clamped at 0, in one buffer."""
    return torch.addmm(b_sq[None], a, b.T, alpha=-2).add_(a_sq[:, None]).clamp_(min=0)


def _knn_radii_sq(x: Tensor, x_sq: Tensor, k: int, batch_size: int) -> Tensor:
    """Squared distance of each row to its k-th nearest other row."""
    radii = []
    for start in range(0, len(x), batch_size):
        d2 = _squared_distances(x[start : start + batch_size], x_sq[start : start + batch_size], x, x_sq)
        rows = torch.arange(d2.shape[0], device=x.device)
        d2[rows, rows + start] = 0  # exact self-distance: the self entry is the 0th neighbour
        radii.append(d2.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def precision_recall(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 5000,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake against real features.

    Each set's manifold is the union of balls around its points, of radius the distance to the point's k-th
    nearest neighbour in the same set (the point itself excluded). Precision is the fraction of fake points
    inside the real manifold (``|f - r| <= radius(r)`` for some real ``r``); recall the fraction of real points
    inside the fake manifold.

    Distances are computed on the real features' device in row blocks of ``batch_size``, as squared distances
    ``|a|² + |b|² - 2 a·b`` (one matrix product per block) of features centred on the real mean, clamped at 0,
    with exact zero self-distances. Memory beyond the two inputs: centred copies of both sets in ``dtype``
    (``N × D × 4`` bytes each in float32) and one ``batch_size × N`` block of distances (4 bytes each) with a
    boolean mask of the same shape: for 50 000 × 50 000 Inception features with ``batch_size=5000``, about
    0.8 GB of copies plus 1.25 GB per block. Time: three ``N × N × D`` products (real-real, fake-fake, and the
    cross distances once for both directions).

    Note:
        If TF32 matmuls are enabled globally on an Ampere or newer GPU, float32 products are rounded to 10
        mantissa bits; pass ``dtype=torch.float64`` for full precision there (as fast as float32 on data-centre
        GPUs, much slower on consumer ones).

    Args:
        real_features: ``[N_real, D]`` features of real images (tensor or array, any device).
        fake_features: ``[N_fake, D]`` features of generated images.
        k: The neighbourhood size (3 in the paper).
        batch_size: Rows of distances computed at once; lower it to save memory.
        dtype: The distance precision.

    Returns:
        ``(precision, recall)`` as Python floats in [0, 1].

    Raises:
        ValueError: Shapes that are not ``[N, D]`` with equal ``D``, fewer than ``k + 1`` points in a set,
            non-finite features, or a non-positive ``k`` or ``batch_size``.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be positive, got k={k}, batch_size={batch_size}")
    real = _feature_matrix(real_features, "real_features")
    fake = _feature_matrix(fake_features, "fake_features").to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"each set needs more than k={k} points, got {len(real)} real and {len(fake)} fake")
    center = real.mean(dim=0, dtype=torch.float64).to(dtype)
    real, fake = real.to(dtype) - center, fake.to(dtype) - center
    real_sq, fake_sq = (real * real).sum(dim=1), (fake * fake).sum(dim=1)
    real_radii, fake_radii = _knn_radii_sq(real, real_sq, k, batch_size), _knn_radii_sq(fake, fake_sq, k, batch_size)
    precise = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for start in range(0, len(fake), batch_size):
        stop = start + batch_size
        d2 = _squared_distances(fake[start:stop], fake_sq[start:stop], real, real_sq)  # [batch, N_real]
        precise[start:stop] = (d2 <= real_radii[None]).any(dim=1)
        recalled |= (d2 <= fake_radii[start:stop, None]).any(dim=0)
    return float(precise.double().mean()), float(recalled.double().mean())
