"""Training checkpoints under attack: kills mid-save, stale temporaries, bit flips, swapped files, bad counters.

Each test reproduces a fault of issue 12 that the old ``save_training_state`` / ``Distiller.load`` let through.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from helpers import saved_tiny_distiller, tiny_vector_distiller
from helpers.hostile import resign_checkpoint
from scoredistill import Distiller
from scoredistill.io.artefact import CheckpointError
from scoredistill.training.checkpoint import LegacyCheckpointWarning, has_training_state


def _snapshot(d: Distiller) -> dict:
    """Everything Distiller.load may change, copied."""
    return {
        "nets": {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in d._modules().items()},
        "opt_g": str(d.opt_g.state_dict()),
        "opt_f": str(d.opt_f.state_dict()),
        "counters": (d.nimg, d.step_index, d.best),
        "data": d.data.state_dict(),
    }


def _assert_unchanged(d: Distiller, before: dict) -> None:
    after = _snapshot(d)
    for name, tensors in before["nets"].items():
        assert all(torch.equal(t, after["nets"][name][k]) for k, t in tensors.items()), f"{name} was overwritten"
    assert after["opt_g"] == before["opt_g"] and after["opt_f"] == before["opt_f"]
    assert after["counters"] == before["counters"] and after["data"] == before["data"]


# -- writing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kill_at", [0, 1, 2])
def test_a_kill_at_any_rename_leaves_a_complete_checkpoint(tmp_path, monkeypatch, kill_at):
    # Old code: the old checkpoint was renamed away before the new one came in; a kill between the two left no
    # training_state at all (and the new one was deleted on the way out), so a resume started from scratch.
    d, ckpt = saved_tiny_distiller(tmp_path)
    old_nimg = d.nimg
    d.step()
    calls = []
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        calls.append((src, dst))
        if len(calls) - 1 == kill_at:
            raise KeyboardInterrupt("killed")  # the process dies here: nothing after this runs
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        d.save(ckpt)
    monkeypatch.setattr(os, "rename", real_rename)
    assert len(calls) == kill_at + 1
    assert has_training_state(ckpt)  # puts back the complete version a kill left beside it
    resumed = tiny_vector_distiller()
    resumed.load(ckpt)
    assert resumed.nimg in (old_nimg, d.nimg)
    if kill_at == 2:  # old moved aside, new complete beside it: the new one wins
        assert resumed.nimg == d.nimg
    # The next save cleans up what the kill left behind and leaves only the checkpoint.
    resumed.save(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_stale_temporaries_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    d, ckpt = saved_tiny_distiller(tmp_path)
    stale = [tmp_path / ".ckpt.tmp-abcd1234", tmp_path / ".ckpt.new-zz_99xyz", tmp_path / ".ckpt.old-q1w2e3r4"]
    for s in stale:
        s.mkdir()
        (s / "generator.safetensors").write_bytes(b"x" * 1000)  # a half-written checkpoint
    keep_dirs = [tmp_path / ".ckpt.tmp-mine", tmp_path / ".other.tmp-abcd1234", tmp_path / "ckpt.tmp-abcd1234"]
    for k in keep_dirs:
        k.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    link = tmp_path / ".ckpt.tmp-linked12"
    link.symlink_to(outside, target_is_directory=True)
    file_named_alike = tmp_path / ".ckpt.old-file1234"
    file_named_alike.write_text("a file, not ours")
    d.step()
    d.save(ckpt)
    assert not any(s.exists() for s in stale)
    assert all(k.is_dir() for k in keep_dirs)
    assert link.is_symlink() and (outside / "precious.txt").read_text() == "keep"
    assert file_named_alike.read_text() == "a file, not ours"


def test_checkpoint_files_and_folders_are_flushed_to_disk(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _, ckpt = saved_tiny_distiller(tmp_path)
    names = {os.path.basename(str(p)) for p in synced}
    expected_files = {p.name for p in ckpt.iterdir()}
    if os.path.exists("/proc/self/fd"):  # Linux: check what was flushed, by name
        assert {n.split(".tmp-")[0] for n in names} >= expected_files  # every file of the checkpoint
        assert str(tmp_path) in synced  # the parent directory, after the renames
    assert len(synced) >= len(expected_files) + 2


# -- reading -----------------------------------------------------------------------------------------------


def test_a_bit_flip_in_tensor_data_is_refused_and_changes_nothing(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    file = ckpt / "generator_ema.safetensors"
    data = bytearray(file.read_bytes())
    data[-7] ^= 0x10  # one bit of the last tensor's data: the file still parses
    file.write_bytes(bytes(data))
    other = tiny_vector_distiller(seed=0)
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match=r"generator_ema.safetensors.*digest"):
        other.load(ckpt)
    _assert_unchanged(other, before)


def test_swapped_network_files_are_refused(tmp_path):
    # Generator and fake score have the same keys and shapes: only their roles tell the files apart.
    _, ckpt = saved_tiny_distiller(tmp_path, steps=2)
    g, f = ckpt / "generator.safetensors", ckpt / "fake_score.safetensors"
    g_bytes, f_bytes = g.read_bytes(), f.read_bytes()
    g.write_bytes(f_bytes)
    f.write_bytes(g_bytes)
    with pytest.raises(CheckpointError, match="digest"):
        tiny_vector_distiller().load(ckpt)
    resign_checkpoint(ckpt)  # even re-signed, each file says which network it holds
    with pytest.raises(CheckpointError, match="swapped"):
        tiny_vector_distiller().load(ckpt)


def test_a_config_mismatch_leaves_the_live_networks_untouched(tmp_path):
    # Old code: the networks were overwritten before the config was compared.
    _, ckpt = saved_tiny_distiller(tmp_path, steps=2)
    other = tiny_vector_distiller(lr_generator=1e-3)
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match=r"differs.*lr_generator"):
        other.load(ckpt)
    _assert_unchanged(other, before)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("nimg", -8, "nimg"),
        ("nimg", 2.5, "nimg"),
        ("step_index", True, "step_index"),
        ("best", ["x", 1.0], "best"),
        ("config", None, "config"),
    ],
)
def test_bad_counters_are_refused_even_when_re_signed(tmp_path, key, value, match):
    _, ckpt = saved_tiny_distiller(tmp_path)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    state[key] = value
    torch.save(state, ckpt / "state.pt")
    resign_checkpoint(ckpt)
    other = tiny_vector_distiller()
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match=match):
        other.load(ckpt)
    _assert_unchanged(other, before)


def test_an_optimizer_state_of_the_wrong_shape_is_refused_before_anything_changes(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    first = next(iter(state["opt_g"]["state"]))
    state["opt_g"]["state"][first]["exp_avg"] = torch.zeros(3)
    torch.save(state, ckpt / "state.pt")
    resign_checkpoint(ckpt)
    other = tiny_vector_distiller()
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match="opt_g: exp_avg"):
        other.load(ckpt)
    _assert_unchanged(other, before)


def test_a_data_state_the_stream_refuses_changes_nothing_else(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    other = tiny_vector_distiller()

    def refuse(state):
        raise ValueError("state was saved for a dataset of 10 images, this one has 20")

    other.data.load_state_dict = refuse
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match="data stream refused"):
        other.load(ckpt)
    _assert_unchanged(other, before)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage", ["truncate_state", "garbage_state", "truncate_net", "garbage_header"])
def test_damaged_files_raise_one_clear_error_type(tmp_path, damage):
    # Old code: EOFError / UnpicklingError / SafetensorError escaped raw. Without the manifest (a 0.1 checkpoint),
    # the readers themselves meet the damage; with it, the digest does first.
    _, ckpt = saved_tiny_distiller(tmp_path)
    state, net = ckpt / "state.pt", ckpt / "fake_score.safetensors"
    if damage == "truncate_state":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage_state":
        state.write_bytes(b"\x80\x04not a pickle at all")
    elif damage == "truncate_net":
        net.write_bytes(net.read_bytes()[:-64])
    else:
        net.write_bytes(b"\xff" * 8 + net.read_bytes()[8:])
    with pytest.raises(CheckpointError, match=r"digest|bytes"):
        tiny_vector_distiller().load(ckpt)
    (ckpt / "manifest.json").unlink()
    with pytest.warns(LegacyCheckpointWarning), pytest.raises(CheckpointError, match=net.name + "|" + state.name):
        tiny_vector_distiller().load(ckpt, allow_legacy=True)


def test_a_checkpoint_without_manifest_resumes_with_a_warning_when_allowed(tmp_path):
    # Checkpoints of scoredistill 0.1 have no manifest: they resume on request (keys, shapes, config still checked).
    straight = tiny_vector_distiller(seed=3)
    trace = [float(straight.step()["sid/generator_loss"]) for _ in range(3)]
    first = tiny_vector_distiller(seed=3)
    first.step()
    first.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "manifest.json").unlink()
    resumed = tiny_vector_distiller(seed=3)
    with pytest.raises(CheckpointError, match="allow_legacy=True"):  # only when the caller opts in
        resumed.load(tmp_path / "ckpt")
    with pytest.warns(LegacyCheckpointWarning, match="manifest"):
        resumed.load(tmp_path / "ckpt", allow_legacy=True)
    assert [float(resumed.step()["sid/generator_loss"]) for _ in range(2)] == trace[1:]


def test_a_manifest_listing_other_files_is_refused(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"].pop("fake_score.safetensors")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"missing.*fake_score"):
        tiny_vector_distiller().load(ckpt)
    (ckpt / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest"):
        tiny_vector_distiller().load(ckpt)


def test_a_good_checkpoint_loads_without_warnings(tmp_path):
    d, ckpt = saved_tiny_distiller(tmp_path, steps=2)
    other = tiny_vector_distiller()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.load(ckpt)
    assert other.nimg == d.nimg == 8
    for (name, a), b in zip(d.generator.state_dict().items(), other.generator.state_dict().values()):
        assert torch.equal(a, b), name
