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
from scoredistill.io.hub import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    WEIGHTS_NAME,
    CheckpointError,
    from_pretrained,
    save_pretrained,
)
from scoredistill.networks import MLP, PRESETS, TinyUNet, build_backbone
from scoredistill.networks.registry import backbone_facts, backbone_to_config


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
        ("mlp", _set("backbone", "_class_name", ["MLP"]), r"unknown backbone class a list"),
        ("mlp", _set("backbone", "config", "depth", True), r"MLP config: depth must be a positive int, got a bool"),
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
        entry = backbone_to_config(net)
        name, facts = entry["_class_name"], backbone_facts(entry["_class_name"], entry["config"])
        tensors, elements = facts.min_tensors, facts.min_elements
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


def test_hub_answering_a_malformed_commit_id_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.answer_commit = "../../../escape"
    cache = tmp_path / "a" / "b" / "c" / "cache"
    with pytest.raises(CheckpointError, match=r"the Hub at http://127\.0\.0\.1:\d+: answered a malformed commit id"):
        from_pretrained("org/model", cache_dir=cache)
    assert _files_outside(tmp_path, cache) == []


@pytest.mark.parametrize("second_answer", [False, True], ids=["every-answer", "second-answer"])
@pytest.mark.parametrize("field", ["commit", "etag"])
def test_hub_answers_with_dot_dot_never_become_paths(hub: FakeHub, tmp_path: Path, field: str, second_answer) -> None:
    """The endpoint answers the first request of each path honestly and later ones with ``../``: the downloads
    come from URLs built from the commit id checked once, so nothing lands outside the cache (a ``.pth`` file
    there would run code at the next interpreter start). ETags are never read at all."""
    escape = "../../../../../escape.pth"
    hub.second_answer = second_answer
    hub.answer_commit, hub.answer_etag = (escape, None) if field == "commit" else (None, escape)
    cache = tmp_path / "a" / "b" / "c" / "cache"
    if field == "commit" and not second_answer:  # the commit id is checked: refused
        with pytest.raises(CheckpointError, match="malformed commit id"):
            from_pretrained("org/model", cache_dir=cache)
    else:
        assert isinstance(from_pretrained("org/model", cache_dir=cache), OneStepGenerator)
    assert _files_outside(tmp_path, cache) == []
    fetched = [p for m, p in hub.requests if "/resolve/" in p]
    assert all(f"/resolve/{hub.head('org/model')}/" in p for p in fetched) and len(fetched) <= 2


@pytest.mark.parametrize("change", ["longer", "shorter", "same-size"])
def test_hub_files_that_differ_from_their_listing_are_refused(hub: FakeHub, tmp_path: Path, change: str) -> None:
    true = hub.files("org/model")[WEIGHTS_NAME]
    tampered = {"longer": true + b"\0" * 64, "shorter": true[:-8], "same-size": true[:-4] + b"\x7f\x7f\x7f\x7f"}
    hub.serve_instead[WEIGHTS_NAME] = tampered[change]
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=rf"org/model/{WEIGHTS_NAME}.*(bytes|hash) the Hub listed"):
        from_pretrained("org/model", cache_dir=cache)
    snapshot = cache / "models--org--model" / "snapshots" / hub.head("org/model")
    assert sorted(p.name for p in snapshot.iterdir()) == [CONFIG_NAME]  # no weights, no partial download
    hub.serve_instead.clear()
    assert isinstance(from_pretrained("org/model", cache_dir=cache), OneStepGenerator)


def test_hub_config_larger_than_the_cap_is_not_downloaded(hub: FakeHub, artefacts, tmp_path: Path) -> None:
    config = json.loads((artefacts["mlp"] / CONFIG_NAME).read_text())
    config["training"] = {"notes": "x" * MAX_CONFIG_BYTES}
    hub.commit("org/model", {CONFIG_NAME: json.dumps(config).encode()})
    with pytest.raises(CheckpointError, match=r"org/model/config\.json is [\d,]+ bytes, more than MAX_CONFIG_BYTES"):
        from_pretrained("org/model", cache_dir=tmp_path / "cache")
    assert not [p for m, p in hub.requests if p.endswith(f"/{CONFIG_NAME}")]


def test_cached_files_linking_out_of_the_cache_are_refused(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    from_pretrained("org/model", cache_dir=cache)
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    cached = cache / "models--org--model" / "snapshots" / hub.head("org/model") / CONFIG_NAME
    cached.unlink()
    cached.symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"links? out of the cache"):
        from_pretrained("org/model", cache_dir=cache, local_files_only=True)
    assert isinstance(from_pretrained("org/model", cache_dir=cache), OneStepGenerator)  # downloaded again
    assert not cached.is_symlink() and outside.read_text() == "{}"


# Oversized configs and long strings: refused unread, and never quoted whole ----------------------------------------


def test_config_larger_than_the_cap_is_refused_unread(artefacts, tmp_path: Path) -> None:
    text = json.dumps({"_class_name": "x" * (MAX_CONFIG_BYTES + 10), "format_version": 1})
    path = _tampered(artefacts["mlp"], tmp_path, text)
    with pytest.raises(CheckpointError, match=r"config\.json is larger than MAX_CONFIG_BYTES") as info:
        from_pretrained(path)
    assert len(str(info.value)) < 500


@pytest.mark.parametrize(
    "edit",
    [
        _set("_class_name", "C" * 100_000),
        _set("torch_dtype", "f" * 100_000),
        lambda config: config.update(format_version=2, _scoredistill_version="9" * 100_000),
        _set("sample_shape", [10**4000, 1, 1]),
    ],
    ids=["class-name", "torch-dtype", "version", "sample-shape"],
)
def test_untrusted_strings_are_never_quoted_whole(artefacts, tmp_path: Path, edit) -> None:
    path = _tampered(artefacts["mlp"], tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        from_pretrained(path)
    assert len(str(info.value)) < 600, len(str(info.value))


def test_honest_stand_in_hub_still_loads(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert isinstance(from_pretrained("org/model", cache_dir=cache), OneStepGenerator)
    assert (cache / "models--org--model" / "snapshots" / hub.head("org/model") / CONFIG_NAME).is_file()
