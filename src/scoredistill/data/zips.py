"""Real images for SiDA's discriminator: EDM-style dataset zips and a resumable, infinite batch iterator.

The dataset layout is the one EDM-style training code reads: a zip of image files (any folder structure, read
in sorted name order) plus an optional ``dataset.json`` holding ``{"labels": [[filename, class_index], ...]}``;
``"labels": null`` or no ``dataset.json`` means unconditional. Decoding PNG/JPEG needs Pillow, the optional
extra ``data`` (``pip install -e '.[data]'`` in a clone of the repository), imported only when a dataset is
opened.

Pixel convention (docs/maths.md): images are uint8 ``[C, H, W]`` in the dataset and ``x = uint8 / 127.5 - 1`` in
[-1, 1] everywhere else.

Archives are untrusted input: sizes are checked from the zip's headers before a member is read (declared size,
compression ratio, encryption, compression method), image dimensions from the image header before its pixels are
decoded, and class labels against a bound before any one-hot is allocated. The limits are the module constants
below; raise them for a genuine dataset that exceeds them. Folders of image files (read by
``scoredistill.metrics.dataset_stats``) get the same file size and pixel limits.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["DatasetError", "ImageZipDataset", "RealBatches", "check_compatible", "real_batches"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
"""File name endings read as images (case-insensitive); every other member of the zip is ignored."""

MAX_MEMBER_BYTES = 2**27
"""Largest uncompressed size (128 MiB) of one member of a dataset zip, read from the zip's headers."""

MAX_COMPRESSION_RATIO = 200
"""Largest uncompressed / compressed size of a member over 1 MiB (zip bombs compress ~1000:1, images ~1:1)."""

MAX_IMAGE_PIXELS = 2**24
"""Largest image (width x height, 4096 x 4096), read from the image's header before its pixels are decoded."""

MAX_LABEL_DIM = 2**17
"""Largest number of classes (131072; ImageNet-21k has 21841): one-hot labels are batch x label_dim floats."""

_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_METHODS |= {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}

# Pillow modes -> (mode to convert to, channels). Palette and other colour modes become RGB.
_MODES = {"1": ("L", 1), "L": ("L", 1), "LA": ("LA", 2), "RGB": ("RGB", 3), "RGBA": ("RGBA", 4)}
_CONVERT_TO_RGB = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


class DatasetError(ValueError):
    """A dataset archive that cannot be read as an EDM-style image dataset (the message names the file)."""


def subset_indices(n: int, max_size: int | None) -> list[int]:
    """The indices of ``max_size`` of ``n`` items, drawn with a fixed seed and sorted (``None`` or ``>= n``: all).

    Example:
        >>> subset_indices(10, 4), subset_indices(3, None)
        ([2, 4, 8, 9], [0, 1, 2])
    """
    if max_size is None or max_size >= n:
        return list(range(n))
    order = np.arange(n)
    np.random.RandomState(0).shuffle(order)
    return sorted(int(i) for i in order[:max_size])


def _pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading image datasets needs Pillow: pip install Pillow (in a clone of the repository, the optional "
            "'data' extra: pip install -e '.[data]')"
        ) from err
    return Image


def _image_errors() -> tuple[type[BaseException], ...]:
    """What reading a hostile or corrupt image can raise (Pillow raises SyntaxError for some malformed files).

    Not cached: an answer given while Pillow could not be imported would otherwise stay without Pillow's
    ``DecompressionBombError`` for the rest of the process."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile)
    errors += (RuntimeError, NotImplementedError)  # zipfile: encrypted member, unsupported compression
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        return errors
    return (*errors, Image.DecompressionBombError)  # PIL.UnidentifiedImageError is an OSError


def _shown(value: Any) -> str:
    """A short description of an untrusted JSON value for a message: the value if it is short, else its type."""
    text = repr(value) if isinstance(value, (int, float, str)) else f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _check_pixels(where: str, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"{where} is {width}x{height}, over scoredistill.data.MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS:,} pixels); "
            "raise that limit if the dataset is genuine"
        )


def _check_file_size(where: str, size: int) -> None:
    """Refuse an image file (or zip member) larger than `MAX_MEMBER_BYTES` before it is read.

    Raises:
        DatasetError: Naming ``where`` and the limit.
    """
    if size > MAX_MEMBER_BYTES:
        raise DatasetError(
            f"{where} has {size:,} bytes, over scoredistill.data.MAX_MEMBER_BYTES ({MAX_MEMBER_BYTES:,}); "
            "raise that limit if the dataset is genuine"
        )


def _probe_image(source: Any, where: str) -> tuple[str, int, int, int]:
    """``(target mode, channels, width, height)`` of an image file from its header, without decoding its pixels.

    Args:
        source: A path or a binary stream, as for ``PIL.Image.open``.
        where: The image's name in messages.

    Raises:
        DatasetError: Not an image, an unsupported mode, or over `MAX_IMAGE_PIXELS`.
    """
    try:
        with _pil_image().open(source) as image:
            mode, (width, height) = image.mode, image.size
    except _image_errors() as err:
        raise DatasetError(f"{where} cannot be read as an image ({str(err)[:300]})") from err
    _check_pixels(where, width, height)
    target, channels = _target_mode(mode, where)
    return target, channels, width, height


def _target_mode(mode: str, where: str) -> tuple[str, int]:
    if mode in _MODES:
        return _MODES[mode]
    if mode in _CONVERT_TO_RGB:
        return "RGB", 3
    raise DatasetError(f"{where}: unsupported image mode {mode!r} (expected 8-bit grey, grey+alpha, RGB or RGBA)")


class ImageZipDataset(Dataset):
    """An EDM-style dataset zip: image files plus ``dataset.json`` class labels.

    Items are ``(image, label)``: by default a uint8 tensor and an ``int`` class index (``-1`` when the dataset
    has no labels or ``use_labels=False``). With ``normalize=True`` the image is float32 ``uint8 / 127.5 - 1``
    in [-1, 1]. Greyscale images come out as ``[1, H, W]``, palette images as RGB.

    The archive's index, ``dataset.json`` and the first image are checked when the dataset is built; every other
    image is checked against the first image's shape when it is read (or all at once by
    [`verify`][scoredistill.data.ImageZipDataset.verify]). The zip is opened lazily once per process and thread, so the
    dataset can be shared by DataLoader workers (fork or spawn) and threads.

    Args:
        path: Path of the ``.zip`` archive.
        use_labels: Read class labels from ``dataset.json``. ``False`` treats the dataset as unconditional.
        max_size: Keep ``max_size`` images (``None``: all): a subset drawn with a fixed seed and kept in name order,
            as EDM's datasets draw it (``numpy.random.RandomState(0)`` shuffles the indices, the first ``max_size``
            are kept), so that a class-sorted archive still gives every class its share.
        label_dim: Number of classes. ``None`` infers ``max(label) + 1`` over the whole archive; pass it when some
            classes are absent from the archive. Must be at least the inferred value.
        normalize: Return float32 images in [-1, 1] instead of uint8.
        verify: Check every image's size and channel count now (reads only image headers).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: The archive is not a readable zip, has no images, has a malformed ``dataset.json`` or labels
            that do not match the image files, or (with ``verify``) holds images of different shapes.

    Shape:
        image: ``[C, H, W]`` uint8 (or float32 with ``normalize``).

    Example:
        >>> ds = ImageZipDataset("tests/fixtures/cifar10-tiny.zip")  # the repository's test fixture
        >>> image, label = ds[0]; image.shape, image.dtype, ds.label_dim
        (torch.Size([3, 32, 32]), torch.uint8, 10)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        use_labels: bool = True,
        max_size: int | None = None,
        label_dim: int | None = None,
        normalize: bool = False,
        verify: bool = False,
    ):
        self.path = os.fspath(path)
        self.normalize = normalize
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be a positive number of images or None, got {max_size}")
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"dataset archive not found: {self.path}")
        if os.path.isdir(self.path):
            raise DatasetError(f"{self.path} is a directory; expected an EDM-style dataset .zip")
        self._local = threading.local()
        archive = self._archive()

        # Index the image files (sorted, like EDM's dataset tool writes them); their headers are checked here.
        names = sorted(
            info.filename
            for info in archive.infolist()
            if not info.is_dir()
            and info.filename.lower().endswith(IMAGE_EXTENSIONS)
            and not info.filename.startswith("__MACOSX/")
        )
        for name in names:
            self._check_member(archive.getinfo(name))
        if not names:
            raise DatasetError(f"{self.path} contains no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")

        # Read and match the labels against every image in the archive.
        all_labels = self._read_labels(archive, names) if use_labels else None
        inferred = int(max(all_labels)) + 1 if all_labels else 0
        if label_dim is not None:
            if isinstance(label_dim, bool) or not isinstance(label_dim, int) or not 0 <= label_dim <= MAX_LABEL_DIM:
                raise ValueError(f"label_dim must be an int in [0, {MAX_LABEL_DIM}] (MAX_LABEL_DIM), got {label_dim!r}")
            if all_labels is None and label_dim > 0:
                raise DatasetError(
                    f"label_dim={label_dim} was given but {self.path} has no labels (or use_labels=False)"
                )
            if label_dim < inferred:
                raise DatasetError(f"label_dim={label_dim} but {self.path} has class indices up to {inferred - 1}")
        self._label_dim = inferred if label_dim is None else label_dim

        keep = subset_indices(len(names), max_size)
        self._names = tuple(names[i] for i in keep)
        self._labels = None if all_labels is None else torch.tensor([all_labels[i] for i in keep], dtype=torch.int64)

        # The first image fixes the shape every other image must have.
        self._mode, channels, width, height = self._probe(self._names[0])
        self._shape = (channels, height, width)
        if verify:
            self.verify()

    # Zip access (one handle per process and thread).
    def _archive(self) -> zipfile.ZipFile:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: always reopen.
            try:
                local.archive = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as err:
                raise DatasetError(f"{self.path} is not a readable zip archive ({err})") from err
            local.pid = os.getpid()
        return local.archive

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def close(self) -> None:
        """Close this thread's handle on the archive (it reopens on the next read)."""
        archive = getattr(self._local, "archive", None)
        if archive is not None and getattr(self._local, "pid", None) == os.getpid():
            archive.close()
        self._local = threading.local()

    def __enter__(self) -> ImageZipDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_member(self, info: zipfile.ZipInfo) -> None:
        """Refuse a member from its zip header alone: encrypted, unsupported method, too large, or a bomb."""
        where = f"{self.path}:{info.filename}"
        if info.flag_bits & 0x1:
            raise DatasetError(f"{where} is encrypted; dataset zips must be unencrypted")
        if info.compress_type not in _ZIP_METHODS:
            raise DatasetError(
                f"{where} uses zip compression method {info.compress_type}; re-create the archive with one of "
                f"{sorted(_ZIP_METHODS.values())} (e.g. `zip -r` or Python's zipfile)"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise DatasetError(
                f"{where} declares {info.file_size:,} bytes uncompressed, over scoredistill.data.MAX_MEMBER_BYTES "
                f"({MAX_MEMBER_BYTES:,}); raise that limit if the archive is genuine"
            )
        if info.file_size > 2**20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise DatasetError(
                f"{where} expands {info.file_size / max(info.compress_size, 1):.0f}x when decompressed (a zip bomb?), "
                f"over scoredistill.data.MAX_COMPRESSION_RATIO ({MAX_COMPRESSION_RATIO}); raise it if it is genuine"
            )

    def _read_labels(self, archive: zipfile.ZipFile, names: list[str]) -> list[int] | None:
        if "dataset.json" not in archive.NameToInfo:
            return None
        where = f"{self.path}:dataset.json"
        self._check_member(archive.getinfo("dataset.json"))
        try:
            meta = json.loads(archive.read("dataset.json"))
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # ValueError: JSON, or a 5000-digit int
            raise DatasetError(f"{where} is not valid JSON ({str(err)[:200]})") from None
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as err:
            raise DatasetError(f"{where} cannot be read from the archive ({err})") from err
        if not isinstance(meta, dict):
            raise DatasetError(f"{where} must be a JSON object with a 'labels' key")
        entries = meta.get("labels")
        if entries is None:
            return None
        if not isinstance(entries, list):
            raise DatasetError(f"{where}: 'labels' must be a list of [filename, class_index] pairs or null")
        table: dict[str, int] = {}
        for entry in entries:
            if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise DatasetError(f"{where}: each label must be a [filename, class_index] pair, got {_shown(entry)}")
            fname, label = entry[0].replace("\\", "/"), entry[1]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_LABEL_DIM:
                raise DatasetError(
                    f"{where}: label of {fname[:200]!r} must be a non-negative class index below {MAX_LABEL_DIM} "
                    f"(scoredistill.data.MAX_LABEL_DIM), got {_shown(label)}"
                )
            if fname in table:
                raise DatasetError(f"{where}: {fname!r} is labelled twice")
            table[fname] = label
        missing = [name for name in names if name not in table]
        if missing:
            raise DatasetError(
                f"{where} has no label for {len(missing)} of {len(names)} images (e.g. {missing[:3]}); "
                "label every image, set 'labels' to null, or pass use_labels=False"
            )
        extra = sorted(set(table) - set(names))
        if extra:
            raise DatasetError(
                f"{where} labels {len(extra)} files that are not images in the archive (e.g. {extra[:3]}); "
                f"the archive has {len(names)} images and {len(table)} labels"
            )
        return [table[name] for name in names]

    def _probe(self, name: str) -> tuple[str, int, int, int]:
        """``(target mode, channels, width, height)`` from an image's header, without decoding its pixels.

        Reads the member as a stream, so only the first kilobytes of it are decompressed.
        """
        where = f"{self.path}:{name}"
        try:
            with self._archive().open(name) as stream:
                return _probe_image(stream, where)
        except DatasetError:
            raise
        except _image_errors() as err:  # the archive itself (a bad member, an unsupported method)
            raise DatasetError(f"{where} cannot be read as an image ({err})") from err

    def verify(self) -> None:
        """Check that every image has the first image's size and channel count (headers only).

        Raises:
            DatasetError: naming the first image that differs.
        """
        for name in self._names:
            _, channels, width, height = self._probe(name)
            self._check_shape(name, (channels, height, width))

    def _check_shape(self, name: str, shape: tuple[int, int, int]) -> None:
        if shape != self._shape:
            (c, h, w), (c0, h0, w0) = shape, self._shape
            raise DatasetError(
                f"{self.path}:{name} is {w}x{h} with {c} channel(s), but the dataset's first image "
                f"({self._names[0]}) is {w0}x{h0} with {c0}; all images must have one size and channel count"
            )

    # Dataset protocol.
    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        name = self._names[index]
        where = f"{self.path}:{name}"
        image_mod = _pil_image()
        try:
            with image_mod.open(io.BytesIO(self._archive().read(name))) as image:
                target, channels = _target_mode(image.mode, where)
                # The header's size and mode first: a 12000x12000 image must not be decoded to find it is wrong.
                width, height = image.size
                self._check_shape(name, (channels, height, width))
                array = np.array(image if image.mode == target else image.convert(target), dtype=np.uint8)
        except _image_errors() as err:
            raise DatasetError(f"{where} cannot be decoded ({err})") from err
        if array.ndim == 2:
            array = array[:, :, None]
        self._check_shape(name, (channels, array.shape[0], array.shape[1]))
        image_tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.normalize:
            image_tensor = image_tensor.to(torch.float32) / 127.5 - 1
        label = -1 if self._labels is None else int(self._labels[index])
        return image_tensor, label

    # Metadata.
    @property
    def names(self) -> tuple[str, ...]:
        """Image file names inside the archive, in item order."""
        return self._names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return self._shape

    @property
    def num_channels(self) -> int:
        """Channels per image (1 grey, 3 RGB, ...)."""
        return self._shape[0]

    @property
    def resolution(self) -> int:
        """Side length of the (square) images.

        Raises:
            DatasetError: The images are not square.
        """
        _, height, width = self._shape
        if height != width:
            raise DatasetError(f"{self.path} has non-square {width}x{height} images; use image_shape instead")
        return height

    @property
    def has_labels(self) -> bool:
        """Whether items carry class labels."""
        return self._labels is not None

    @property
    def label_dim(self) -> int:
        """Number of classes (one-hot width), 0 when unconditional."""
        return self._label_dim if self._labels is not None else 0

    @property
    def labels(self) -> Tensor | None:
        """All class indices, int64 ``[N]`` in item order, or ``None`` when unconditional."""
        return None if self._labels is None else self._labels.clone()

    def __repr__(self) -> str:
        c, h, w = self._shape
        return (
            f"{type(self).__name__}({self.path!r}, images={len(self)}, shape={c}x{h}x{w}, label_dim={self.label_dim})"
        )


def check_compatible(
    dataset: ImageZipDataset, *, resolution: int | tuple[int, int], channels: int, label_dim: int
) -> None:
    """Check that real data can be paired with a teacher (SiDA feeds both to one network).

    Args:
        dataset: The real-image dataset (anything with ``image_shape``, ``label_dim`` and ``has_labels``).
        resolution: The teacher's image side, or ``(H, W)``.
        channels: The teacher's image channels.
        label_dim: The teacher's number of classes (0: unconditional; dataset labels are then ignored). A dataset
            whose class indices all lie below it fits (a subset of the classes, e.g. 908 of ImageNet's 1000):
            make its batches with ``real_batches(..., label_dim=label_dim)``.

    Raises:
        ValueError: Listing every mismatch (resolution, channels, class indices beyond the teacher's classes).
    """
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    c, h, w = dataset.image_shape
    problems = []
    if (h, w) != (height, width):
        problems.append(f"resolution: dataset images are {w}x{h}, the teacher expects {width}x{height}")
    if c != channels:
        problems.append(f"channels: dataset images have {c}, the teacher expects {channels}")
    if label_dim > 0 and not dataset.has_labels:
        problems.append(
            f"labels: the teacher is class-conditional (label_dim={label_dim}) but the dataset has no labels "
            "(dataset.json labels missing or null, or use_labels=False)"
        )
    elif label_dim > 0 and dataset.label_dim > label_dim:
        problems.append(
            f"labels: the dataset has class indices up to {dataset.label_dim - 1}, beyond the teacher's {label_dim} "
            "classes"
        )
    if problems:
        raise ValueError(f"{getattr(dataset, 'path', 'dataset')} does not match the teacher: " + "; ".join(problems))


def _epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch: a pure function of ``(seed, epoch)``, so it can be recomputed on resume."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def _epoch_ended(position: int, batch_size: int, num_images: int, drop_last: bool) -> bool:
    return position + batch_size > num_images if drop_last else position >= num_images


class _ResumableBatchSampler:
    """Yields index batches forever, epoch after epoch, starting from ``(epoch, position)``."""

    def __init__(self, num_images: int, batch_size: int, seed: int, drop_last: bool, epoch: int, position: int):
        self.num_images, self.batch_size, self.seed, self.drop_last = num_images, batch_size, seed, drop_last
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = self.epoch, self.position
        while True:
            order = _epoch_permutation(self.num_images, self.seed, epoch)
            while not _epoch_ended(position, self.batch_size, self.num_images, self.drop_last):
                yield order[position : position + self.batch_size].tolist()
                position += self.batch_size
            epoch, position = epoch + 1, 0


class RealBatches:
    """An infinite iterator of shuffled real batches, resumable through ``state_dict()`` / ``load_state_dict()``.

    The state is ``(seed, epoch, position)``: epoch ``e`` visits the images in the order
    ``numpy.random.default_rng([seed, e]).permutation(N)``, and ``position`` counts the images of that epoch
    already *returned* (worker prefetching does not advance it). Saving
    [`state_dict`][scoredistill.data.RealBatches.state_dict] and loading it into a fresh iterator continues with exactly
    the next batch. Randomness is a seed rather than a ``torch.Generator``: each epoch's shuffle is a pure function of
    ``(seed, epoch)``, so resuming needs three integers instead of a generator state (EDM2 resumes the same way).

    Args:
        dataset: Items ``(image, class_index)``; uint8 images are mapped to ``uint8 / 127.5 - 1``, float images
            are taken to be in [-1, 1] already. [`ImageZipDataset`][scoredistill.data.ImageZipDataset] is the usual
            choice.
        batch_size: Images per batch.
        seed: Shuffle seed (non-negative).
        device: Where batches are returned. On CUDA the host batch is pinned and copied with ``non_blocking``.
        label_dim: One-hot width; ``None`` takes ``dataset.label_dim``. 0 returns ``labels=None`` (unconditional).
        drop_last: Drop each epoch's incomplete last batch (so every batch has ``batch_size`` images).
        num_workers: DataLoader worker processes (0 decodes in this process).
        pin_memory: Pin host batches; ``None`` pins when ``device`` is CUDA.

    Shape:
        Each item, ``(x_real, labels)``: x_real ``[B, C, H, W]`` float32 in [-1, 1]; labels: ``[B, L]`` float32
        one-hot, or ``None``.

    Example:
        >>> batches = real_batches(ImageZipDataset("tests/fixtures/cifar10-tiny.zip"), 8, seed=0)
        >>> x_real, labels = next(batches); x_real.shape, labels.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]))
        >>> state = batches.state_dict()
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        label_dim: int | None = None,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ):
        num_images = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and batch_size > num_images:
            raise ValueError(f"batch_size={batch_size} exceeds the dataset's {num_images} images with drop_last=True")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.label_dim = getattr(dataset, "label_dim", 0) if label_dim is None else label_dim
        if isinstance(self.label_dim, bool) or not isinstance(self.label_dim, int):
            raise ValueError(f"label_dim must be an int, got {type(self.label_dim).__name__}")
        if not 0 <= self.label_dim <= MAX_LABEL_DIM:
            raise ValueError(
                f"label_dim must lie in [0, {MAX_LABEL_DIM}] (scoredistill.data.MAX_LABEL_DIM), got {self.label_dim}"
            )
        if self.label_dim > 0 and not getattr(dataset, "has_labels", True):
            raise ValueError(f"label_dim={self.label_dim} but the dataset has no labels")
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.seed, self.epoch, self.position = seed, 0, 0
        self._iterator: Iterator[Any] | None = None

    @property
    def num_images(self) -> int:
        """Images per epoch before ``drop_last``."""
        return len(self.dataset)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, int]:
        """Plain ints (safe for ``torch.load(weights_only=True)``): seed, epoch, position and the dataset size."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_images": self.num_images}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved state; the next batch is the one that followed it.

        Raises:
            ValueError: The state was saved for a dataset of a different size.
        """
        if int(state["num_images"]) != self.num_images:
            raise ValueError(
                f"state was saved for a dataset of {state['num_images']} images, this one has {self.num_images}"
            )
        self.close()
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        """Stop the worker processes (a later ``next`` restarts them from the current state)."""
        self._iterator = None

    def __iter__(self) -> RealBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor | None]:
        if self._iterator is None:
            sampler = _ResumableBatchSampler(
                self.num_images, self.batch_size, self.seed, self.drop_last, self.epoch, self.position
            )
            loader = DataLoader(
                self.dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                # A private generator: creating a loader iterator would otherwise consume torch's global RNG.
                generator=torch.Generator().manual_seed(self.seed),
            )
            self._iterator = iter(loader)
        images, labels = next(self._iterator)

        # Advance the state exactly as the sampler does.
        self.position += images.shape[0]
        if _epoch_ended(self.position, self.batch_size, self.num_images, self.drop_last):
            self.epoch, self.position = self.epoch + 1, 0

        # Transfer uint8 (4x fewer bytes) and convert on the device.
        x_real = images.to(self.device, non_blocking=True)
        x_real = x_real.to(torch.float32) / 127.5 - 1 if x_real.dtype == torch.uint8 else x_real.to(torch.float32)
        if self.label_dim == 0:
            return x_real, None
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if int(labels.min()) < 0 or int(labels.max()) >= self.label_dim:
            raise ValueError(
                f"class labels in [{int(labels.min())}, {int(labels.max())}] do not fit label_dim={self.label_dim}"
            )
        # One-hot on the host (on CUDA, F.one_hot would check the indices with a device synchronisation).
        one_hot = F.one_hot(labels, self.label_dim).to(torch.float32)
        if self.pin_memory and self.device.type == "cuda":
            one_hot = one_hot.pin_memory()
        return x_real, one_hot.to(self.device, non_blocking=True)


real_batches = RealBatches
"""The name the examples use for [`RealBatches`][scoredistill.data.RealBatches] (the same class)."""
