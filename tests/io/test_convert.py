"""Restricted reading of EDM-family pickles: a synthetic EDM-format pickle, never executing embedded code."""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from helpers import FIXTURES
from helpers.edm_pickles import fake_edm_packages
from scoredistill.convert import (
    RecordedObject,
    UnsafePickleError,
    load_edm_pickle,
    read_edm_network,
    read_edm_pickle,
)
from scoredistill.networks import StateDictMismatchError, config_from_edm_kwargs, load_edm_state_dict
from scoredistill.networks.layers import UNetBlock
from scoredistill.roles.precond import edm_precond

GOLDEN = FIXTURES / "golden" / "ddpmpp-tiny-cond.safetensors"
EMBEDDED_SOURCE = "import os\nos.environ['SCOREDISTILL_PWNED'] = '1'\nraise SystemExit('embedded code ran')\n"


class Persistent:
    """Pickles like an EDM ``persistent_class`` instance: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, reconstruct, class_name: str, state: dict):
        self.reconstruct, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self):
        meta = {
            "type": "class",
            "version": 6,
            "module_src": EMBEDDED_SOURCE,
            "class_name": self.class_name,
            "state": self.state,
        }
        return self.reconstruct, (meta,)


def as_edm_record(module: nn.Module, reconstruct, **extra_state) -> object:
    """EDM's pickled form of a module tree: persistent records around torch internals; ModuleDicts stay torch's."""
    children = OrderedDict((name, as_edm_record(child, reconstruct)) for name, child in module._modules.items())
    if isinstance(module, nn.ModuleDict):
        plain = nn.ModuleDict()
        plain.__dict__["_modules"] = children
        return plain
    state = {k: v for k, v in module.__dict__.items() if k.startswith("_") or k == "training"}
    state["_modules"] = children
    if isinstance(module, UNetBlock):
        state["skip_scale"] = np.float64(module.skip_scale)
        state["resample_taps"] = np.asarray([1.0, 1.0])
    state.update(extra_state)
    return Persistent(reconstruct, type(module).__name__, state)


def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(GOLDEN, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return json.loads(f.metadata()["config"]), tensors


def edm_pickle(protocol: int = 4, drop: str | None = None) -> tuple[bytes, dict[str, torch.Tensor], dict]:
    """Bytes of a synthetic ``{'ema': EDMPrecond, ...}`` pickle holding the golden ddpmpp-tiny-cond network."""
    config, tensors = golden()
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    net = load_edm_state_dict(edm_precond(config_from_edm_kwargs(config)), state).eval()
    state = net.state_dict()
    if drop is not None:
        owner, name = drop.rsplit(".", 1)
        net.get_submodule(owner)._parameters.pop(name)
    init_kwargs = {**config, "use_fp16": False, "sigma_min": 0.0, "sigma_max": math.inf, "sigma_data": 0.5}
    with fake_edm_packages() as fake:
        ema = as_edm_record(net, fake.reconstruct, _init_args=(), _init_kwargs=init_kwargs)
        loss_fn = Persistent(fake.reconstruct, "EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5})
        dataset_kwargs = fake.EasyDict(class_name="training.dataset.ImageFolderDataset", path="cifar10.zip")
        root = {"ema": ema, "loss_fn": loss_fn, "augment_pipe": None, "dataset_kwargs": dataset_kwargs}
        return pickle.dumps(root, protocol=protocol), tensors, state


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_edm_pickle_without_running_its_code(protocol: int, tmp_path: Path) -> None:
    data, tensors, state = edm_pickle(protocol)
    assert b"embedded code ran" in data and "torch_utils" not in sys.modules
    path = tmp_path / "edm.pkl"
    path.write_bytes(data)

    root = read_edm_pickle(path)
    assert sorted(root) == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"]
    assert isinstance(root["ema"], RecordedObject) and root["ema"].class_name == "Precond"
    assert root["loss_fn"].state["P_std"] == 1.2 and root["dataset_kwargs"]["path"] == "cifar10.zip"
    assert "SCOREDISTILL_PWNED" not in os.environ

    record = read_edm_network(path)
    assert list(record.state_dict) == list(state)
    assert all(torch.equal(record.state_dict[k], v) for k, v in state.items())
    assert record.init_kwargs["model_type"] == "SongUNet_EncoderDecoder"

    D = load_edm_pickle(data)
    labels, augment = tensors["in.labels"], tensors["in.augment_labels"]
    with torch.no_grad():
        out = D.score(tensors["in.x"], tensors["in.sigma"], labels, augment)
    assert not D.training
    assert torch.allclose(out.denoised, tensors["out.denoised"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.logits, tensors["out.logits"], rtol=1e-4, atol=1e-5)


class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (Evil(builtins.eval, "1 + 1"), "builtins.eval"),
        (Evil(os.system, "true"), f"{os.system.__module__}.system"),
        (Evil(getattr, "x", "upper"), "builtins.getattr"),
        (Evil(torch.load, "x.pt"), "torch.serialization.load"),
        (config_from_edm_kwargs({"model_type": "SongUNet", "img_resolution": 64}), "song_unet.SongUNetConfig"),
    ],
    ids=["eval", "system", "getattr", "torch.load", "foreign-class"],
)
def test_refuses_globals_outside_the_allow_list(payload, named: str) -> None:
    data = pickle.dumps({"ema": payload}, protocol=4)
    with pytest.raises(UnsafePickleError, match=named.replace(".", r"\.")):
        read_edm_pickle(data)


def test_missing_network_and_strict_loading() -> None:
    data, _, _ = edm_pickle()
    with pytest.raises(KeyError, match=r"no 'G_ema' network in this pickle \(found \['augment_pipe'"):
        read_edm_network(data, key="G_ema")
    broken, _, _ = edm_pickle(drop="model.enc.8x8_block1.conv1.bias")
    with pytest.raises(StateDictMismatchError, match=r"missing: model\.enc\.8x8_block1\.conv1\.bias"):
        load_edm_pickle(broken)
