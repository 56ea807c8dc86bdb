"""Shared makers of hostile inputs for the hardening tests."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

__all__ = ["png_header_only", "resign_checkpoint"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` grey pixels but holds one row: what a decoder must not trust."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def resign_checkpoint(ckpt: Path) -> None:
    """Re-sign every file of a training checkpoint, as whoever can edit the files can (the manifest is an unkeyed
    digest): the semantic checks must hold on their own."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
