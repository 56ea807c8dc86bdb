"""Image folders as datasets, under the same limits as dataset zips (used by the FID statistics of a folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .zips import (
    IMAGE_EXTENSIONS,
    DatasetError,
    _check_file_size,
    _check_pixels,
    _image_errors,
    _pil_image,
    _probe_image,
    subset_indices,
)

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(Dataset):
    """Image files under a folder (recursively, sorted by relative path), decoded as RGB uint8 ``[3, H, W]``.

    Each file gets a dataset zip's limits ([`MAX_MEMBER_BYTES`][scoredistill.data.MAX_MEMBER_BYTES] and
    [`MAX_IMAGE_PIXELS`][scoredistill.data.MAX_IMAGE_PIXELS]) and its header's size is checked against the first
    image's before its pixels are decoded. Items are ``(image, -1)``: a folder has no labels.

    Args:
        root: The folder.
        max_images: Keep this many files (``None``: all), drawn as a zip's ``max_size`` subset is.

    Raises:
        DatasetError: No image files, a file over the limits, an image of another size, or one that cannot be
            decoded (when it is read).
    """

    def __init__(self, root: str | os.PathLike[str], max_images: int | None = None):
        root = Path(root)
        self.root = root
        files = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise DatasetError(f"{root} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.files = [files[i] for i in subset_indices(len(files), max_images)]
        _check_file_size(str(self.files[0]), self.files[0].stat().st_size)
        _, _, width, height = _probe_image(self.files[0], str(self.files[0]))
        self.shape = (3, height, width)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        try:
            _check_file_size(str(path), path.stat().st_size)
            with _pil_image().open(path) as image:
                # The header's size first: a 12000x12000 image must not be decoded to find it is too large.
                width, height = image.size
                _check_pixels(str(path), width, height)
                if (3, height, width) != self.shape:
                    raise DatasetError(
                        f"{path} is {width}x{height}, but {self.files[0]} is {self.shape[2]}x{self.shape[1]}; "
                        "all images must have one size"
                    )
                array = np.array(image.convert("RGB"), dtype=np.uint8)
        except DatasetError:
            raise
        except _image_errors() as err:
            raise DatasetError(f"{path} cannot be decoded ({str(err)[:200]})") from err
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), -1
