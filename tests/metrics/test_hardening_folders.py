"""Hostile image folders for ``dataset_stats`` (``scoredistill fid``): a folder gets a dataset zip's limits.

Each PNG is crafted here: it declares a size in its header but holds one row, so the tests never hold the
gigabytes that decoding it would take, and a reader that decodes before checking fails with another message.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from helpers.hostile import png_header_only
from scoredistill.data import DatasetError
from scoredistill.data import zips as data
from scoredistill.metrics import dataset_stats

Image = pytest.importorskip("PIL.Image")


def _png(width: int = 8, height: int = 8, seed: int | None = None) -> bytes:
    """A grey PNG: zeros, or noise (which compresses worse: a larger file of the same size) with a seed."""
    pixels = np.zeros((height, width), np.uint8)
    if seed is not None:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _extractor(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(2, 3))


def _folder(tmp_path, *images: bytes):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i:03d}.png").write_bytes(image)
    return folder


@pytest.mark.parametrize("which", ["first", "later"])
def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path, which):
    # Old code: a folder had no pixel limit; each 6000x4000 image was decoded (8 such PNGs reached 5 GB).
    big = png_header_only(6000, 4000)  # 24 M pixels, over MAX_IMAGE_PIXELS (16.7 M)
    folder = _folder(tmp_path, big) if which == "first" else _folder(tmp_path, _png(), _png(), big)
    with pytest.raises(DatasetError, match="MAX_IMAGE_PIXELS"):
        dataset_stats(folder, _extractor, num_workers=0, progress=False)


def test_an_image_of_another_size_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    folder = _folder(tmp_path, _png(), png_header_only(64, 2000))
    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(
        Image.Image, "convert", lambda self, *a, **k: decoded.append(self.size) or real_convert(self, *a, **k)
    )
    with pytest.raises(DatasetError, match="all images must have one size"):
        dataset_stats(folder, _extractor, num_workers=0, progress=False)
    assert (64, 2000) not in decoded


def test_image_files_over_the_size_limit_are_refused(tmp_path, monkeypatch):
    folder = _folder(tmp_path, _png(), _png(seed=0))
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", len(_png()))
    with pytest.raises(DatasetError, match="MAX_MEMBER_BYTES"):
        dataset_stats(folder, _extractor, num_workers=0, progress=False)
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", 2**27)
    assert dataset_stats(folder, _extractor, num_workers=0, progress=False).count == 2


@pytest.mark.parametrize("first", [True, False])
def test_a_file_that_is_not_an_image_is_a_dataset_error(tmp_path, first):
    # Old code: a first file that was no image raised PIL's own UnidentifiedImageError.
    junk = b"not a png at all"
    folder = _folder(tmp_path, junk, _png()) if first else _folder(tmp_path, _png(), junk)
    with pytest.raises(DatasetError, match=r"00[01]\.png"):
        dataset_stats(folder, _extractor, num_workers=0, progress=False)
