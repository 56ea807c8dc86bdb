"""Edited checkpoints (issue 21): a training state is untrusted input, even when its manifest is re-signed.

Each test reproduces a fault that the previous ``Distiller.load`` let through: a deleted checkpoint brought back,
a checkpoint without a manifest, a manifest or a file too large to read, and counters, hyper-parameters and
structures in ``state.pt`` that hung, exhausted memory or silently changed the run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch

from helpers import saved_tiny_distiller, tiny_vector_distiller, tiny_vector_roles
from helpers.hostile import resign_checkpoint
from scoredistill import DistillConfig, Distiller, DSMLoss, SiDLoss, _io
from scoredistill.io.artefact import CheckpointError
from scoredistill.training.checkpoint import has_training_state


def _edit_state(ckpt, edit) -> None:
    state = torch.load(ckpt / "state.pt", weights_only=True)
    edit(state)
    torch.save(state, ckpt / "state.pt")
    resign_checkpoint(ckpt)


# -- a deleted checkpoint stays deleted --------------------------------------------------------------------


@pytest.mark.parametrize("kill", ["before_old_removed", "before_old_moved"])
def test_a_deleted_checkpoint_is_not_brought_back_by_what_a_kill_left(tmp_path, monkeypatch, kill):
    # Old code: a kill after the swap (or before it) left a complete sibling; after `rm -rf training_state` the
    # next resume renamed that sibling into place, bringing back the checkpoint the user had deleted.
    d, ckpt = saved_tiny_distiller(tmp_path)
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
        tiny_vector_distiller().load(ckpt)


# -- the manifest ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "fifo", "folder", "dangling_link"])
def test_a_checkpoint_without_a_readable_manifest_is_refused(tmp_path, kind):
    # Old code: each of these loaded with only a LegacyCheckpointWarning, i.e. without any integrity check.
    _, ckpt = saved_tiny_distiller(tmp_path)
    manifest = ckpt / "manifest.json"
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "folder":
        manifest.mkdir()
    elif kind == "dangling_link":
        manifest.symlink_to(tmp_path / "nowhere.json")
    other = tiny_vector_distiller()
    with pytest.raises(CheckpointError, match="allow_legacy" if kind == "missing" else "not a regular file"):
        other.load(ckpt)
    if kind != "missing":  # opting in to legacy checkpoints is for a missing manifest, not a strange one
        with pytest.raises(CheckpointError, match="not a regular file"):
            other.load(ckpt, allow_legacy=True)
    assert other.nimg == 0


def test_a_huge_or_deeply_nested_manifest_is_refused(tmp_path):
    # Old code: a 200 MB manifest was parsed whole, and deep nesting raised a raw RecursionError.
    _, ckpt = saved_tiny_distiller(tmp_path)
    manifest = ckpt / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**good, "padding": "x" * (2 * 2**20)}))
    with pytest.raises(CheckpointError, match="MAX_MANIFEST_BYTES"):
        tiny_vector_distiller().load(ckpt)
    manifest.write_text('{"format": 1, "files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="not a valid checkpoint manifest"):
        tiny_vector_distiller().load(ckpt)
    good["files"]["state.pt"]["bytes"] = "12"  # a string where an int belongs
    manifest.write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match="not a valid checkpoint manifest"):
        tiny_vector_distiller().load(ckpt)


def test_a_file_s_size_and_type_are_checked_before_it_is_hashed(tmp_path, monkeypatch):
    # Old code: a state.pt linked to a 3 GiB file was hashed in full before the digest refused it.
    from scoredistill.training import checkpoint

    _, ckpt = saved_tiny_distiller(tmp_path)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(3 * 2**30)  # sparse: costs no disk
    hashed, real_sha256 = [], checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda file: hashed.append(file.name) or real_sha256(file))
    (ckpt / "state.pt").unlink()
    (ckpt / "state.pt").symlink_to(big)
    with pytest.raises(CheckpointError, match="not a regular file"):
        tiny_vector_distiller().load(ckpt)
    (ckpt / "state.pt").unlink()
    os.link(big, ckpt / "state.pt")  # a hard link: a regular file of 3 GiB
    with pytest.raises(CheckpointError, match="bytes, the manifest recorded"):
        tiny_vector_distiller().load(ckpt)
    assert "state.pt" not in hashed


# -- state.pt ----------------------------------------------------------------------------------------------


def _dag(depth: int) -> list:
    node: list = [1]
    for _ in range(depth):
        node = [node, node]
    return node


@pytest.mark.parametrize("where", ["nimg", "best", "world", "config"])
def test_a_shared_structure_in_state_pt_is_refused_quickly(tmp_path, where):
    # Old code: repr and == walked all 2^40 paths of a few hundred bytes of DAG: Distiller.load hung.
    _, ckpt = saved_tiny_distiller(tmp_path)

    def edit(state):
        if where == "config":
            state["config"]["seed"] = _dag(40)
        else:
            state[where] = _dag(40)

    _edit_state(ckpt, edit)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"MAX_STATE_DEPTH|MAX_STATE_ITEMS"):
        tiny_vector_distiller().load(ckpt)
    assert time.perf_counter() - start < 5


def test_a_wide_shared_structure_within_the_depth_limit_is_refused_by_its_item_budget(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    node: list = [1]
    for _ in range(12):  # 4^12 = 16.8 M paths, 12 deep
        node = [node] * 4
    _edit_state(ckpt, lambda state: state.__setitem__("data", {"index": node}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="MAX_STATE_ITEMS"):
        tiny_vector_distiller().load(ckpt)
    assert time.perf_counter() - start < 5


def test_a_state_deeper_than_the_limit_is_refused(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)
    deep: list = []
    for _ in range(50):
        deep = [deep]
    _edit_state(ckpt, lambda state: state.__setitem__("data", deep))
    with pytest.raises(CheckpointError, match="MAX_STATE_DEPTH"):
        tiny_vector_distiller().load(ckpt)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("best", [math.inf, 1.0], "best"),  # old code: OverflowError from int(inf)
        ("best", [math.nan, 1.0], "best"),  # old code: ValueError from int(nan)
        ("best", [0, math.nan], "finite"),  # old code: loaded; NaN then disabled generator_best/ for good
        ("best", [0, -math.inf], "finite"),
        ("best", [10**6, 1.0], "best"),  # reached after nimg
        ("nimg", 4 * 10**15, "nimg"),  # old code: loaded, whatever step_index said
        ("nimg", 8, "step_index"),  # one step of a global batch of 4 cannot have seen 8 images
        ("world", 2.0, "world"),
        ("world", 10**9, "world"),
        ("step_index", 2**60, "step_index"),
    ],
)
def test_counters_must_be_typed_ranged_and_consistent(tmp_path, key, value, match):
    _, ckpt = saved_tiny_distiller(tmp_path)
    _edit_state(ckpt, lambda state: state.__setitem__(key, value))
    other = tiny_vector_distiller()
    with pytest.raises(CheckpointError, match=match):
        other.load(ckpt)
    assert (other.nimg, other.step_index, other.best) == (0, 0, None)


def test_a_string_batch_size_is_refused_before_it_is_multiplied(tmp_path):
    # Old code: with another process count, the saved batch_size times the saved world was computed first: a
    # string batch_size times a world of 10^8 allocated gigabytes.
    _, ckpt = saved_tiny_distiller(tmp_path)

    def edit(state):
        state["config"]["batch_size"] = "x" * 30
        state["world"] = 2

    _edit_state(ckpt, edit)
    with pytest.raises(CheckpointError, match="batch_size must be an int"):
        tiny_vector_distiller().load(ckpt)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("lr", math.nan),  # old code: loaded; the weights were non-finite three steps later
        ("lr", 1e30),
        ("lr", -1.0),
        ("maximize", True),
        ("betas", (5.0, math.nan)),
        ("weight_decay", 1e6),
        ("eps", 1),  # an int where the config's float belongs
    ],
)
def test_optimizer_hyper_parameters_must_equal_the_config(tmp_path, setting, value):
    _, ckpt = saved_tiny_distiller(tmp_path)
    _edit_state(ckpt, lambda state: state["opt_g"]["param_groups"][0].__setitem__(setting, value))
    other = tiny_vector_distiller()
    with pytest.raises(CheckpointError, match=f"opt_g: group 0 has {setting}"):
        other.load(ckpt)
    assert other.opt_g.param_groups[0]["lr"] == other.config.lr_generator
    assert other.opt_g.param_groups[0]["maximize"] is False


def test_non_finite_optimizer_moments_are_refused(tmp_path):
    _, ckpt = saved_tiny_distiller(tmp_path)

    def edit(state):
        first = next(iter(state["opt_f"]["state"]))
        state["opt_f"]["state"][first]["exp_avg_sq"][0] = -1.0

    _edit_state(ckpt, edit)
    with pytest.raises(CheckpointError, match="opt_f: exp_avg_sq holds non-finite or negative"):
        tiny_vector_distiller().load(ckpt)


def test_a_resumed_optimizer_keeps_this_run_s_implementation_switches(tmp_path):
    # Old code: the saved foreach / fused / capturable replaced this machine's own (a CUDA run's fused=True on
    # the CPU, capturable=False under CUDA graphs).
    d, ckpt = saved_tiny_distiller(tmp_path)
    _edit_state(ckpt, lambda state: state["opt_g"]["param_groups"][0].__setitem__("foreach", False))
    other = tiny_vector_distiller()
    other.load(ckpt)
    assert other.opt_g.param_groups[0]["foreach"] is True
    assert other.nimg == d.nimg
    assert torch.equal(other.opt_g.state_dict()["state"][0]["exp_avg"], d.opt_g.state_dict()["state"][0]["exp_avg"])


# -- the config --------------------------------------------------------------------------------------------


def test_a_config_changed_behind_its_checks_is_refused_when_built_and_saved(tmp_path):
    # Old code: object.__setattr__ on the frozen config skipped validation; the run trained with lr NaN.
    config = DistillConfig(batch_size=4, total_nimg=1000)
    object.__setattr__(config, "lr_generator", math.nan)
    teacher, G, fake = tiny_vector_roles()
    with pytest.raises(ValueError, match="lr_generator must be finite"):
        Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)
    d = tiny_vector_distiller()
    object.__setattr__(d.config, "batch_size", "4")
    with pytest.raises(TypeError, match="batch_size must be an int"):
        d.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("scale", math.nan, "scale must be a positive finite"), ("growth_factor", 1e9, "growth_factor is")],
)
def test_loss_scaler_states_must_be_finite_and_of_this_run_s_settings(tmp_path, key, value, match):
    # Old code: a scale of NaN loaded into the fp16 loss scaler, and every later step was skipped as an overflow.
    d = tiny_vector_distiller(precision="fp16")
    d.step()
    d.save(tmp_path / "ckpt")
    _edit_state(tmp_path / "ckpt", lambda state: state["scalers"]["g"].__setitem__(key, value))
    other = tiny_vector_distiller(precision="fp16")
    with pytest.raises(CheckpointError, match=match):
        other.load(tmp_path / "ckpt")
    assert other.scalers["g"].get_scale() == 65536.0


@pytest.mark.parametrize("value", ["abc", [1, 2]])
def test_a_data_state_that_is_not_a_dict_is_a_checkpoint_error(tmp_path, value):
    # Old code: dict(state["data"]) raised a raw ValueError or TypeError.
    _, ckpt = saved_tiny_distiller(tmp_path)
    _edit_state(ckpt, lambda state: state.__setitem__("data", value))
    with pytest.raises(CheckpointError, match="data must be"):
        tiny_vector_distiller().load(ckpt)


def test_a_network_with_many_unexpected_keys_gets_a_short_message(tmp_path):
    from safetensors.torch import save_file

    _, ckpt = saved_tiny_distiller(tmp_path)
    save_file({f"k{i:05d}" * 20: torch.zeros(1) for i in range(2000)}, ckpt / "fake_score.safetensors")
    resign_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="does not fit this run's fake_score") as info:
        tiny_vector_distiller().load(ckpt)
    assert len(str(info.value)) < 1000 and "\n" not in str(info.value)
