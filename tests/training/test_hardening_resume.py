"""Edited checkpoints (issue 21): a training state is untrusted input, even when its manifest is re-signed.

Each test reproduces a fault that the previous ``Distiller.load`` let through: a deleted checkpoint brought back,
a checkpoint without a manifest, a manifest or a file too large to read, and counters, hyper-parameters and
structures in ``state.pt`` that hung, exhausted memory or silently changed the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from helpers import ResumableStream, tiny_vector_roles
from scoredistill import DistillConfig, Distiller, DSMLoss, SiDLoss, _io
from scoredistill.checkpoint import has_training_state


def _distiller(**cfg) -> Distiller:
    teacher, G, fake = tiny_vector_roles()
    config = DistillConfig(batch_size=4, total_nimg=1000, **cfg)
    return Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config, data=ResumableStream(4, (2,)))


def _saved(tmp_path, steps=1):
    d = _distiller()
    for _ in range(steps):
        d.step()
    d.save(tmp_path / "ckpt")
    return d, tmp_path / "ckpt"


def _resign(ckpt) -> None:
    """Re-sign every file, as whoever can edit the files can: the manifest is an unkeyed digest."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _edit_state(ckpt, edit) -> None:
    state = torch.load(ckpt / "state.pt", weights_only=True)
    edit(state)
    torch.save(state, ckpt / "state.pt")
    _resign(ckpt)


# -- a deleted checkpoint stays deleted --------------------------------------------------------------------


@pytest.mark.parametrize("kill", ["before_old_removed", "before_old_moved"])
def test_a_deleted_checkpoint_is_not_brought_back_by_what_a_kill_left(tmp_path, monkeypatch, kill):
    # Old code: a kill after the swap (or before it) left a complete sibling; after `rm -rf training_state` the
    # next resume renamed that sibling into place, bringing back the checkpoint the user had deleted.
    d, ckpt = _saved(tmp_path)
    d.step()
    real_rmtree, real_rename = shutil.rmtree, os.rename

    def rmtree(target, *a, **k):
        if ".ckpt.old-" in str(target):
            raise KeyboardInterrupt("killed before the old version was removed")
        return real_rmtree(target, *a, **k)

    def rename(src, dst, *a, **k):
        if str(src) == str(ckpt):
            raise KeyboardInterrupt("killed before the old version was moved aside")
        return real_rename(src, dst, *a, **k)

    if kill == "before_old_removed":
        monkeypatch.setattr(_io.shutil, "rmtree", rmtree)
    else:
        monkeypatch.setattr(_io.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        d.save(ckpt)
    monkeypatch.undo()
    assert any(p.name.startswith(".ckpt.") for p in tmp_path.iterdir())  # the kill left a sibling
    shutil.rmtree(ckpt)  # the user starts over
    assert not has_training_state(ckpt)
    with pytest.raises(FileNotFoundError):
        _distiller().load(ckpt)
