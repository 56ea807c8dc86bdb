"""Hostile dataset zips: each is refused with DatasetError from the zip or image headers, before big reads.

Every archive is crafted here in memory (a few KB each): bombs are recognised by their declared sizes, so the
tests never need to hold the gigabytes a real bomb expands to.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers.hostile import png_header_only
from scoredistill.data import DatasetError, ImageZipDataset, RealBatches
from scoredistill.data import zips as data

Image = pytest.importorskip("PIL.Image")


def _png(width: int = 8, height: int = 8, value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bmp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).save(buffer, format="BMP")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED, encrypt: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            archive.writestr(info, content)
    if encrypt:  # set the "encrypted" flag bit of one member in its local and central headers
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(encrypt)
        raw[info.header_offset + 6] |= 0x1
        central = raw.find(b"PK\x01\x02")
        while central != -1:
            name_length = struct.unpack_from("<H", raw, central + 28)[0]
            if raw[central + 46 : central + 46 + name_length] == encrypt.encode():
                raw[central + 8] |= 0x1
            central = raw.find(b"PK\x01\x02", central + 4)
        path.write_bytes(bytes(raw))
    return path


def _set_method(path: Path, method: int) -> Path:
    """Rewrite every member's compression method in its local and central headers (e.g. to PPMd, 98)."""
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(signature)
        while at != -1:
            struct.pack_into("<H", raw, at + offset, method)
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    return path


def test_zip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    # A 1024x1024 BMP of zeros: 1 MiB that deflates ~1000:1, a valid image a version without the check reads.
    bomb = _zip(tmp_path / "bomb.zip", {"0.png": _png(), "1.bmp": _bmp(1024, 1024)})
    assert bomb.stat().st_size < 10_000
    with pytest.raises(DatasetError, match=r"1\.bmp expands \d+x when decompressed .*MAX_COMPRESSION_RATIO"):
        ImageZipDataset(bomb)


def test_member_size_limit_is_read_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip(tmp_path / "big.zip", {"0.png": _png(), "1.png": _png(64, 64, 7)}, method=zipfile.ZIP_STORED)
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", len(_png()) + 10)
    with pytest.raises(DatasetError, match=r"1\.png declares \d+ bytes uncompressed, over .*MAX_MEMBER_BYTES"):
        ImageZipDataset(path)


def test_header_probe_never_reads_whole_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip(tmp_path / "ok.zip", {f"{i}.png": _png(value=i) for i in range(3)})
    read: list[str] = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile, "read", lambda self, name, pwd=None: read.append(name) or real_read(self, name)
    )
    ds = ImageZipDataset(path, verify=True)
    assert read == [] and ds.image_shape == (1, 8, 8)
    assert int(ds[2][0].max()) == 2 and read == ["2.png"]  # reading an item does read it


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_first_image_is_refused_from_its_header(tmp_path: Path) -> None:
    path = _zip(tmp_path / "huge.zip", {"0.png": png_header_only(12_000, 12_000)})
    with pytest.raises(DatasetError, match=r"0\.png is 12000x12000, over .*MAX_IMAGE_PIXELS"):
        ImageZipDataset(path)


def test_pillow_decompression_bomb_error_becomes_dataset_error(tmp_path: Path) -> None:
    path = _zip(tmp_path / "bomb.zip", {"0.png": png_header_only(20_000, 20_000)})  # 2x Pillow's own limit
    with pytest.raises(DatasetError, match=r"0\.png cannot be read as an image .*decompression bomb"):
        ImageZipDataset(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_later_image_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    path = _zip(tmp_path / "mixed.zip", {"0.png": _png(), "1.png": png_header_only(12_000, 12_000)})
    ds = ImageZipDataset(path)
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(DatasetError, match=r"1\.png is 12000x12000 with 1 channel\(s\), but the dataset's first"):
        ds[1]
    assert decoded == []
    with pytest.raises(DatasetError, match=r"1\.png is 12000x12000"):
        ImageZipDataset(path, verify=True)


@pytest.mark.parametrize("label", [10**12, 2**17], ids=["1e12", "max"])
def test_labels_are_range_checked_before_any_one_hot(tmp_path: Path, label: int) -> None:
    labels = json.dumps({"labels": [["0.png", 0], ["1.png", label]]}).encode()
    path = _zip(tmp_path / "labels.zip", {"0.png": _png(), "1.png": _png(), "dataset.json": labels})
    with pytest.raises(DatasetError, match=r"label of '1\.png' must be a non-negative class index below 131072"):
        ImageZipDataset(path)
    fine = _zip(tmp_path / "fine.zip", {"0.png": _png(), "dataset.json": b'{"labels": [["0.png", 3]]}'})
    with pytest.raises(ValueError, match=r"label_dim must be an int in \[0, 131072\]"):
        ImageZipDataset(fine, label_dim=10**12)
    with pytest.raises(ValueError, match=r"label_dim must lie in \[0, 131072\]"):
        RealBatches(ImageZipDataset(fine), 1, label_dim=10**12)


def test_nested_dataset_json_is_a_dataset_error(tmp_path: Path) -> None:
    nested = b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = _zip(tmp_path / "nested.zip", {"0.png": _png(), "dataset.json": nested})
    with pytest.raises(DatasetError, match=r"dataset\.json is not valid JSON"):
        ImageZipDataset(path)


def test_encrypted_member_is_a_dataset_error(tmp_path: Path) -> None:
    path = _zip(tmp_path / "enc.zip", {"0.png": _png(), "1.png": _png()}, method=zipfile.ZIP_STORED, encrypt="1.png")
    with pytest.raises(DatasetError, match=r"1\.png is encrypted"):
        ImageZipDataset(path)


def test_unsupported_compression_is_a_dataset_error(tmp_path: Path) -> None:
    path = _set_method(_zip(tmp_path / "ppmd.zip", {"0.png": _png()}, method=zipfile.ZIP_STORED), 98)
    with pytest.raises(DatasetError, match=r"0\.png uses zip compression method 98; re-create the archive"):
        ImageZipDataset(path)


def test_bomb_error_is_caught_after_a_lookup_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set of image errors was cached: asked once while Pillow was hidden, it lacked DecompressionBombError."""
    getattr(data._image_errors, "cache_clear", lambda: None)()  # a first lookup, as in a fresh process
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "PIL", None)
        data._image_errors()
    test_pillow_decompression_bomb_error_becomes_dataset_error(tmp_path)
