"""Feature extraction for FID and precision/recall: from image batches, dataset zips or image folders, and one-step
generators, on one process or split across several ([`image_stats`][scoredistill.metrics.image_stats],
[`dataset_stats`][scoredistill.metrics.dataset_stats], [`generator_stats`][scoredistill.metrics.generator_stats]).

The feature extractor is an argument everywhere: any callable mapping uint8 images ``[B, 3, H, W]`` to float
features ``[B, D]`` (a [`FeatureExtractor`][scoredistill.metrics.FeatureExtractor]), usually
[`scoredistill.metrics.load_inception`][scoredistill.metrics.load_inception]'s network. Greyscale images (one
channel) are repeated to three channels before they reach it. The statistics themselves are
[`scoredistill.metrics.stats`][scoredistill.metrics.stats]'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import ImageFolderDataset, ImageZipDataset
from .stats import FeatureStats, _comm_device

__all__ = ["FeatureExtractor", "dataset_stats", "generator_stats", "image_stats"]

FeatureExtractor = Callable[[Tensor], Tensor]
"""Maps uint8 images ``[B, 3, H, W]`` to float features ``[B, D]`` (the Inception network, or a stand-in)."""


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(n: int, rank: int, world: int) -> range:
    """This process's contiguous slice of ``range(n)`` (slices differ in length by at most one)."""
    return range(n * rank // world, n * (rank + 1) // world)


def _progress_bar(total: int | None, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def _extract(
    batches: Iterable[Tensor], extractor: FeatureExtractor, device: torch.device, keep: bool, bar: Any
) -> tuple[FeatureStats, Tensor | None]:
    stats, kept = FeatureStats(device=device), []
    try:
        with torch.no_grad():
            for images in batches:
                if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
                    raise ValueError(
                        f"images must be uint8 [B, 1 or 3, H, W], got {images.dtype} of shape {tuple(images.shape)}"
                    )
                images = images.to(device, non_blocking=True)
                if images.shape[1] == 1:
                    images = images.repeat(1, 3, 1, 1)
                features = extractor(images)
                if features.ndim != 2 or features.shape[0] != images.shape[0]:
                    raise ValueError(
                        f"the extractor must map {images.shape[0]} images to [{images.shape[0]}, D] features, "
                        f"got shape {tuple(features.shape)}"
                    )
                features = features.float()
                stats.update(features)
                if keep:
                    kept.append(features)
                if bar is not None:
                    bar.update(images.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if not keep:
        return stats, None
    return stats, torch.cat(kept) if kept else torch.empty(0, stats.dim or 0, device=device)


def _gather_rows(rows: Tensor, n: int, dim: int, device: torch.device) -> Tensor:
    """All processes' rows of a ``_shard`` split of ``n`` items, in item order, on every process."""
    import torch.distributed as dist

    _, world = _rank_world()
    counts = [len(_shard(n, r, world)) for r in range(world)]
    comm = _comm_device(dist.get_backend(), device)
    padded = torch.zeros(max(counts), dim, dtype=torch.float32, device=comm)
    padded[: len(rows)] = rows.reshape(-1, dim).to(comm)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts)]).to(device)


def _finish(
    stats: FeatureStats, features: Tensor | None, n: int, device: torch.device
) -> FeatureStats | tuple[FeatureStats, Tensor]:
    """All-reduce (and gather the features) under torch.distributed; the one-process result otherwise."""
    if _rank_world()[1] > 1:
        stats.all_reduce()
        if features is not None and stats.dim is not None:
            features = _gather_rows(features, n, stats.dim, device)
    return stats if features is None else (stats, features)


def image_stats(
    batches: Iterable[Tensor],
    extractor: FeatureExtractor,
    *,
    device: torch.device | str = "cpu",
    return_features: bool = False,
    progress: bool = True,
    total: int | None = None,
) -> FeatureStats | tuple[FeatureStats, Tensor]:
    """Feature statistics of uint8 image batches (this process's batches only; no all-reduce).

    Args:
        batches: uint8 image batches ``[B, C, H, W]`` with ``C`` 1 or 3 (greyscale is repeated to RGB).
        extractor: Maps uint8 ``[B, 3, H, W]`` on ``device`` to features ``[B, D]``.
        device: Where images go before the extractor (the extractor's device).
        return_features: Also return all features, float32 ``[N, D]`` on ``device`` (for
            [`precision_recall`][scoredistill.metrics.precision_recall]).
        progress: Show a tqdm bar (when tqdm is installed).
        total: Number of images, for the bar.

    Returns:
        The statistics, or ``(stats, features)`` with ``return_features``.

    Raises:
        ValueError: Batches that are not uint8 ``[B, 1 or 3, H, W]``, or extractor outputs that are not
            ``[B, D]`` or not finite.
    """
    device = torch.device(device)
    stats, features = _extract(batches, extractor, device, return_features, _progress_bar(total, progress, "images"))
    return stats if features is None else (stats, features)


def _open_images(path: Path, max_images: int | None) -> Dataset:
    if not path.exists():
        raise FileNotFoundError(f"no dataset zip or image folder at {path}")
    if path.is_dir():
        return ImageFolderDataset(path, max_images)
    return ImageZipDataset(path, use_labels=False, max_size=max_images)


def dataset_stats(
    path: str | os.PathLike[str],
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    return_features: bool = False,
    progress: bool = True,
) -> FeatureStats | tuple[FeatureStats, Tensor]:
    """Feature statistics of an EDM-style dataset zip or a folder of image files.

    A zip is read with [`scoredistill.data.ImageZipDataset`][scoredistill.data.ImageZipDataset] (sorted names, labels
    ignored); a folder's image files (PNG, JPEG, ... found recursively, sorted by relative path) are decoded as RGB with
    Pillow. Under ``torch.distributed`` every process reads a contiguous slice of the images and the statistics (and
    features) are combined on all processes; only rank 0 shows a bar.

    Args:
        path: The ``.zip`` archive or the folder.
        extractor: Maps uint8 ``[B, 3, H, W]`` on ``device`` to features ``[B, D]``.
        batch_size: Images per extractor call.
        max_images: Use ``max_images`` images (``None``: all), a subset drawn with a fixed seed as EDM draws one
            (not the first ones: a class-sorted archive keeps every class).
        device: The extractor's device.
        num_workers: DataLoader processes decoding images (0: decode in this process).
        return_features: Also return all features, float32 ``[N, D]`` on ``device``, in image order.
        progress: Show a tqdm bar (when tqdm is installed).

    Returns:
        The statistics, or ``(stats, features)`` with ``return_features``.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        scoredistill.data.DatasetError: Unreadable archive or images, no images, or images of different sizes.
    """
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise ValueError(f"batch_size and max_images must be positive, got {batch_size} and {max_images}")
    device = torch.device(device)
    dataset = _open_images(Path(path), max_images)
    n = len(dataset)  # type: ignore[arg-type]
    rank, world = _rank_world()
    shard = _shard(n, rank, world)
    loader = DataLoader(
        Subset(dataset, shard),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    bar = _progress_bar(len(shard), progress and rank == 0, Path(path).name)
    stats, features = _extract((images for images, _ in loader), extractor, device, return_features, bar)
    return _finish(stats, features, n, device)


def _noise_and_labels(
    indices: range, shape: tuple[int, ...], seed: int, label_dim: int, labels: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Sample ``i``'s noise (then class) from ``numpy.random.default_rng([seed, i])``: no dependence on batching."""
    zs, ys = [], []
    for i in indices:
        rng = np.random.default_rng([seed, i])
        zs.append(rng.standard_normal(shape, dtype=np.float32))
        if label_dim and labels is None:
            ys.append(int(rng.integers(label_dim)))
    z = torch.from_numpy(np.stack(zs))
    if not label_dim:
        return z, None
    return z, labels[indices.start : indices.stop] if labels is not None else torch.tensor(ys, dtype=torch.int64)


def generator_stats(
    generator: nn.Module,
    n: int,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
    labels: Tensor | Literal["uniform"] | None = None,
    return_features: bool = False,
    progress: bool = True,
) -> FeatureStats | tuple[FeatureStats, Tensor]:
    """Feature statistics of ``n`` images from a one-step generator.

    Images are converted to uint8 as the reference metric code does, ``clip(floor(127.5 x + 128), 0, 255)``,
    with the generator in eval mode (its mode is restored afterwards).

    Seeding: sample ``i`` (``0 <= i < n``) takes its noise ``z_i`` (float32, ``sample_shape``) and then, for
    conditional generators without fixed ``labels``, its class (uniform over ``label_dim``) from
    ``numpy.random.default_rng([seed, i])``. The images therefore depend only on ``(seed, i)``: not on
    ``batch_size``, the device or the number of processes. (The noise is drawn on the CPU: about a second per
    100 million values, negligible next to Inception for 32x32 to 64x64 images.) Under ``torch.distributed``
    each process generates a contiguous slice of the indices; statistics (and features) are combined on every
    process, and only rank 0 shows a bar.

    Args:
        generator: A [`scoredistill.OneStepGenerator`][scoredistill.OneStepGenerator] (or any module with
            ``sample_shape``, ``label_dim`` and ``generator(z, labels) -> images in [-1, 1]``, ``[B, C, H, W]`` with
            ``C`` 1 or 3).
        n: Total number of images (over all processes).
        extractor: Maps uint8 ``[B, 3, H, W]`` on ``device`` to features ``[B, D]``.
        batch_size: Images per generator and extractor call.
        seed: Non-negative seed of the sample indices' generators.
        device: Where the generator and extractor run (``None``: the generator's device).
        labels: ``None`` or ``"uniform"``: uniform random classes for conditional generators (none for
            unconditional ones); or int64 class indices ``[n]``, sample ``i`` taking ``labels[i]``.
        return_features: Also return all ``n`` features, float32 ``[n, D]`` on ``device``, in index order.
        progress: Show a tqdm bar (when tqdm is installed).

    Returns:
        The statistics, or ``(stats, features)`` with ``return_features``.

    Raises:
        ValueError: A non-positive ``n`` or ``batch_size``, a negative seed, labels that do not fit the
            generator, or non-finite images.
    """
    if n < 1 or batch_size < 1 or seed < 0:
        raise ValueError(f"n and batch_size must be positive and seed non-negative, got {n}, {batch_size}, {seed}")
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    shape, label_dim = tuple(generator.sample_shape), int(getattr(generator, "label_dim", 0))
    fixed = None
    if isinstance(labels, Tensor):
        if label_dim == 0:
            raise ValueError("labels were given but the generator is unconditional")
        if labels.shape != (n,) or labels.is_floating_point() or labels.min() < 0 or labels.max() >= label_dim:
            raise ValueError(f"labels must be {n} class indices in [0, {label_dim}), got {labels.dtype} {labels.shape}")
        fixed = labels.cpu().long()
    elif labels not in (None, "uniform"):
        raise ValueError(f"labels must be None, 'uniform' or a tensor of class indices, got {labels!r}")
    rank, world = _rank_world()
    indices = _shard(n, rank, world)

    def batches() -> Iterator[Tensor]:
        for start in range(indices.start, indices.stop, batch_size):
            z, y = _noise_and_labels(range(start, min(start + batch_size, indices.stop)), shape, seed, label_dim, fixed)
            x = generator(z.to(device), None if y is None else y.to(device))
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"the generator produced NaN or infinite images (samples {start}...)")
            yield (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)

    bar = _progress_bar(len(indices), progress and rank == 0, "generator")
    was_training = generator.training
    generator.eval()
    try:
        stats, features = _extract(batches(), extractor, device, return_features, bar)
    finally:
        generator.train(was_training)
    return _finish(stats, features, n, device)
