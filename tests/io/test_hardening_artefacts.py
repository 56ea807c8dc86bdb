"""Hostile or careless artefacts: every bad config.json is refused with CheckpointError before anything is built.

Also checks the size bound used for that (a lower bound on every backbone's real size) and that a Hub endpoint
answering ``../`` in a commit id or ETag cannot make the download write outside its cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from helpers.hub_server import FakeHub, serve_hub
from scoredistill import FakeScore, OneStepGenerator, Precond
from scoredistill.io._untrusted import min_backbone_size
from scoredistill.io.hub import CONFIG_NAME, CheckpointError, from_pretrained, save_pretrained
from scoredistill.networks import MLP, PRESETS, TinyUNet, build_backbone


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hardening")
    torch.manual_seed(0)
    mlp = OneStepGenerator(Precond(MLP(2, 16, depth=2)), sample_shape=(2,))
    tiny = FakeScore(Precond(TinyUNet(img_channels=1, channels=8, label_dim=3), label_dim=3))
    return {
        "mlp": save_pretrained(mlp, root / "mlp", model_card=False),
        "mlp16": save_pretrained(mlp, root / "mlp16", model_card=False, dtype=torch.float16),
        "tiny": save_pretrained(tiny, root / "tiny", model_card=False),
    }


def _tampered(src: Path, tmp_path: Path, edit: Callable[[dict], None] | str) -> Path:
    path = tmp_path / src.name
    path.mkdir()
    for file in src.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    if isinstance(edit, str):
        (path / CONFIG_NAME).write_text(edit)
    else:
        config = json.loads((path / CONFIG_NAME).read_text())
        edit(config)
        (path / CONFIG_NAME).write_text(json.dumps(config))
    return path


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config: dict) -> None:
        for key in keys[:-1]:
            config = config[key]
        config[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("mlp", _set("sigma_init", float("nan")), r"sigma_init must be a positive finite number .*, got nan"),
        ("mlp", _set("sigma_init", float("inf")), r"sigma_init must be a positive finite number .*, got inf"),
        ("mlp", _set("sigma_init", "2.5"), r"sigma_init must be a positive finite number .*, got a builtins\.str"),
        ("mlp", _set("precond", "sigma_data", float("nan")), r"sigma_data must be a positive finite number"),
        ("tiny", _set("precond", "sigma_data", float("-inf")), r"sigma_data must be a positive finite number"),
        ("mlp", _set("sample_shape", [3, 8, 8]), r"sample_shape \[3, 8, 8\] contradicts the MLP backbone"),
        ("mlp", _set("label_dim", 4), r"label_dim must equal precond\.label_dim 0"),
        ("mlp", _set("precond", "label_dim", 5), r"precond\.label_dim 5 contradicts the MLP's 0"),
        ("tiny", _set("precond", "augment_dim", 9), r"precond\.augment_dim 9 contradicts the TinyUNet's 0"),
        ("mlp", _set("_class_name", ["OneStepGenerator"]), r"_class_name must be a string, got a builtins\.list"),
        ("mlp", _set("torch_dtype", ["float32"]), r"torch_dtype must be a string"),
        ("mlp", _set("backbone", "_class_name", ["MLP"]), r"unknown backbone class a builtins\.list"),
        ("mlp", _set("backbone", "config", "depth", True), r"backbone\.config\.depth must be a positive int"),
    ],
)
def test_bad_configs_are_refused_with_checkpoint_error(artefacts, tmp_path: Path, name, edit, message) -> None:
    path = _tampered(artefacts[name], tmp_path, edit)
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{message}"):
        from_pretrained(path)


@pytest.mark.parametrize(
    "text",
    [
        '{"_class_name": "OneStepGenerator", "format_version": 1, "training": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"_class_name": "OneStepGenerator", "format_version": 1, "sigma_init": ' + "9" * 5000 + "}",
    ],
    ids=["nested-100k", "5000-digit-int"],
)
def test_unparsable_json_is_refused_with_checkpoint_error(artefacts, tmp_path: Path, text: str) -> None:
    path = _tampered(artefacts["mlp"], tmp_path, text)
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        from_pretrained(path)


def test_weights_stored_in_another_dtype_than_declared_are_refused(artefacts, tmp_path: Path) -> None:
    path = _tampered(artefacts["mlp16"], tmp_path, _set("torch_dtype", "float32"))
    with pytest.raises(CheckpointError, match=r"not stored in the dtype config\.json declares .*\(F16, expected F32\)"):
        from_pretrained(path)
    assert from_pretrained(artefacts["mlp16"]).sample(2).dtype == torch.float32  # the honest file loads


@pytest.mark.parametrize(
    ("name", "edit", "backbone"),
    [
        ("mlp", _set("backbone", "config", "depth", 2000), "MLP"),  # 10^5 takes minutes to build, even on meta
        ("mlp", _set("backbone", "config", "hidden", 20_000), "MLP"),  # 800M parameters
        ("tiny", _set("backbone", "config", "channels", 4096), "TinyUNet"),
    ],
)
def test_absurd_sizes_are_refused_before_building(artefacts, tmp_path, monkeypatch, name, edit, backbone) -> None:
    built: list[object] = []
    monkeypatch.setattr(Precond, "from_config", classmethod(lambda cls, config: built.append(config)))
    path = _tampered(artefacts[name], tmp_path, edit)
    with pytest.raises(CheckpointError, match=rf"declares a {backbone} of at least [\d,]+ parameters"):
        from_pretrained(path)
    assert built == []


def test_absurd_unet_is_refused_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = type(PRESETS["cifar10-32x32-uncond"])
    small = config(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    net = Precond(build_backbone(small))
    path = save_pretrained(FakeScore(net), tmp_path / "unet", model_card=False)
    built: list[object] = []
    monkeypatch.setattr(Precond, "from_config", classmethod(lambda cls, config: built.append(config)))
    (tmp_path / "bad").mkdir()
    bad = _tampered(path, tmp_path / "bad", _set("backbone", "config", "num_blocks", 10_000))
    with pytest.raises(CheckpointError, match=r"declares a SongUNet of at least [\d,]+ parameters in [\d,]+ tensors"):
        from_pretrained(bad)
    assert built == []


def test_size_bound_is_a_lower_bound_of_every_backbone() -> None:
    nets = [MLP(3, 8, depth=4, label_dim=2), MLP(2), TinyUNet(img_channels=3, channels=4, label_dim=2, augment_dim=9)]
    with torch.device("meta"):
        nets += [build_backbone(config) for config in PRESETS.values()]
    for net in nets:
        name = type(net).__name__
        config = net.config.to_dict() if hasattr(net, "config") else net.to_config()
        tensors, elements = min_backbone_size(name, config)
        state = net.state_dict()
        assert 0 < tensors <= len(state), name
        assert 0 < elements <= sum(v.numel() for v in state.values()), name
        if name == "MLP":  # exact
            assert (tensors, elements) == (len(state), sum(v.numel() for v in state.values()))


# The Hub ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def hub(artefacts, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """The stand-in Hub serving the ``mlp`` artefact as ``org/model``; tests make it answer like a hostile one."""
    with serve_hub(monkeypatch, str(tmp_path / "default-cache")) as hub:
        hub.commit("org/model", {p.name: p.read_bytes() for p in artefacts["mlp"].iterdir()})
        yield hub


def _files_outside(root: Path, inside: Path) -> list[str]:
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if not Path(d).is_relative_to(inside)
    )


@pytest.mark.parametrize(
    ("commit", "etag"), [("../../../escape", None), (None, "../../../escape")], ids=["commit", "etag"]
)
def test_hub_answers_with_dot_dot_are_refused(
    hub: FakeHub, tmp_path: Path, commit: str | None, etag: str | None
) -> None:
    hub.answer_commit, hub.answer_etag = commit, etag
    cache = tmp_path / "a" / "b" / "c" / "cache"
    with pytest.raises(CheckpointError, match=r"the Hub at http://127\.0\.0\.1:\d+: answered a malformed commit id"):
        from_pretrained("org/model", cache_dir=cache)
    assert _files_outside(tmp_path, cache) == []


def test_honest_stand_in_hub_still_loads(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert isinstance(from_pretrained("org/model", cache_dir=cache), OneStepGenerator)
    assert (cache / "models--org--model" / "snapshots" / hub.head("org/model") / CONFIG_NAME).is_file()
