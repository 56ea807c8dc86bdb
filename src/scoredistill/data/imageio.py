"""Writing images without an imaging dependency: PNG encoding (zlib + struct) and sample grids."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "to_uint8", "write_png"]

# PNG colour types by channel count: greyscale, greyscale + alpha, RGB, RGBA (PNG spec, IHDR).
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def write_png(path: str | Path, image: np.ndarray, *, compress_level: int = 6) -> Path:
    """Write an 8-bit image as a PNG file.

    Args:
        path: Destination file; its parent directory must exist.
        image: ``uint8`` array ``[H, W]`` (greyscale) or ``[H, W, C]`` with C in 1 (grey), 2 (grey + alpha),
            3 (RGB) or 4 (RGBA).
        compress_level: zlib level, 0 (none) to 9 (smallest).

    Returns:
        ``path`` as a `Path`.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = write_png(pathlib.Path(tempfile.mkdtemp()) / "black.png", np.zeros((4, 4, 3), np.uint8))
        >>> out.read_bytes()[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"write_png takes uint8 pixels, got {image.dtype}: convert with to_uint8() first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _COLOUR_TYPES or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be [H, W] or [H, W, C] with C in 1, 2, 3, 4, got shape {image.shape}")
    height, width, channels = image.shape
    # Each scanline starts with its filter type; 0 = none.
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    path = Path(path)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, compress_level))
        + chunk(b"IEND", b"")
    )
    return path


def to_uint8(x: Tensor) -> Tensor:
    """Map images in EDM's data range [-1, 1] to ``uint8`` pixels, ``round(127.5 x + 128)`` clipped (as EDM).

    Shape:
        Any shape; the result has the same shape.
    """
    return (x.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_grid(images: Tensor, *, cols: int | None = None) -> np.ndarray:
    """Tile a batch of images in [-1, 1] into one ``uint8`` ``[H, W, C]`` grid (row-major, no padding).

    Args:
        images: ``[N, C, H, W]`` with C in 1, 3 or 4.
        cols: Images per row; ``ceil(sqrt(N))`` by default. Empty cells stay black.

    Returns:
        ``[rows * H, cols * W, C]`` uint8 array, ready for `write_png`.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4) or images.shape[0] < 1:
        raise ValueError(f"images must be [N, C, H, W] with N >= 1 and C in 1, 3, 4, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    canvas[:n] = to_uint8(images.cpu())
    grid = canvas.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return grid.numpy()
