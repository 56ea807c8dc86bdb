"""A backbone registered as documented (docs/extending.md, "A new network") saves and loads; its own facts are
what the loader checks a hostile config.json against, before building anything."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from torch import nn

from helpers import REPO_ROOT
from scoredistill import OneStepGenerator, Precond
from scoredistill.io.hub import CONFIG_NAME, CheckpointError, from_pretrained, save_pretrained
from scoredistill.networks import registry
from scoredistill.networks.registry import BACKBONES, register_backbone


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The built-in backbones only, restored after the test (the docs example registers its class)."""
    backbones = {
        name: cls for name, cls in BACKBONES.items() if name in ("SongUNet", "DhariwalUNet", "MLP", "TinyUNet")
    }
    monkeypatch.setattr(registry, "BACKBONES", backbones)
    return backbones


def _docs_example() -> dict:
    page = (REPO_ROOT / "docs" / "extending.md").read_text()
    section = page[page.index("## A new network") :]
    namespace: dict = {}
    exec(compile(re.findall(r"```python\n(.*?)```", section, flags=re.S)[0], "docs/extending.md", "exec"), namespace)
    return namespace


def test_the_documented_backbone_saves_and_loads(own_registry: dict, capsys) -> None:
    namespace = _docs_example()  # it saves, loads and compares outputs itself
    assert own_registry["GatedMLP"] is namespace["GatedMLP"]
    assert "'_class_name': 'GatedMLP'" in capsys.readouterr().out
    G2 = namespace["G2"]
    assert isinstance(G2.denoiser.model, namespace["GatedMLP"]) and G2.sample_shape == (2,)


def test_a_hostile_config_for_it_is_refused_before_building(
    own_registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = _docs_example()
    path = save_pretrained(namespace["G"], tmp_path / "gated", model_card=False)
    built: list = []
    monkeypatch.setattr(namespace["GatedMLP"], "from_config", classmethod(lambda cls, config: built.append(config)))
    for edit, message in [
        ({"hidden": 10**6}, r"declares a GatedMLP of at least [\d,]+ parameters"),
        ({"hidden": "64"}, r"GatedMLP config: hidden must be a positive int, got a str"),
        ({"width": 3}, r"GatedMLP config: unknown keys \['width'\]"),
    ]:
        config = json.loads((path / CONFIG_NAME).read_text())
        config["backbone"]["config"].update(edit)
        (path / CONFIG_NAME).write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=message):
            from_pretrained(path)
    config["backbone"]["config"] = {"dim": 3, "hidden": 64}
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"sample_shape \[2\] contradicts the GatedMLP backbone: it makes \[3\]"):
        from_pretrained(path)
    assert built == []


def test_a_class_without_its_facts_is_refused_when_it_registers(own_registry: dict) -> None:
    class Bare(nn.Module):
        def to_config(self) -> dict:
            return {}

        @classmethod
        def from_config(cls, config):
            return cls()

    with pytest.raises(TypeError, match=r"cannot register Bare as a backbone: it lacks \['config_facts'\]"):
        register_backbone(Bare)
    assert "Bare" not in own_registry
    with pytest.raises(TypeError, match=r"register the class with scoredistill\.networks\.registry\.register_backbone"):
        OneStepGenerator(Precond(Bare()), sample_shape=(2,)).to_config()
    own_registry["Bare"] = Bare  # by hand, past the check: refused when saved, not when its artefact is loaded
    with pytest.raises(TypeError, match=r"cannot save a Bare backbone: it lacks config_facts"):
        OneStepGenerator(Precond(Bare()), sample_shape=(2,)).to_config()


def test_a_name_taken_by_another_class_is_refused(own_registry: dict) -> None:
    def fact(*args):
        return None

    fake_mlp = type("MLP", (nn.Module,), {"to_config": fact, "from_config": fact, "config_facts": fact})
    with pytest.raises(ValueError, match=r"backbone name 'MLP' is taken by scoredistill\.networks\.toy\.MLP"):
        register_backbone(fake_mlp)
    assert own_registry["MLP"].__module__ == "scoredistill.networks.toy"
