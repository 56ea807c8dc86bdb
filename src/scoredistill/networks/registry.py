"""The backbone registry: the one place where a backbone class is looked up by the name ``config.json`` records.

Every backbone has ``to_config()`` (JSON-ready values) and ``from_config(config)``; the EDM UNets also name
their config dataclass in ``config_class``. Nothing is constructed from a string any other way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .dhariwal_unet import DhariwalUNet
from .song_unet import SongUNet
from .toy import MLP, TinyUNet

__all__ = ["BACKBONES", "backbone_from_config", "backbone_to_config", "build_backbone"]

BACKBONES: dict[str, type[nn.Module]] = {
    "SongUNet": SongUNet,
    "DhariwalUNet": DhariwalUNet,
    "MLP": MLP,
    "TinyUNet": TinyUNet,
}
"""The backbones an artefact may name in ``backbone._class_name``."""


def backbone_to_config(model: nn.Module) -> dict[str, Any]:
    """``{"_class_name": ..., "config": ...}`` for a registered backbone (matched exactly, never a subclass).

    Example:
        >>> backbone_to_config(MLP(dim=2, hidden=8))["_class_name"]
        'MLP'
    """
    for name, cls in BACKBONES.items():
        if type(model) is cls:
            return {"_class_name": name, "config": model.to_config()}
    raise TypeError(
        f"cannot save a {type(model).__name__} backbone: artefacts hold one of {sorted(BACKBONES)} "
        "(add the class to scoredistill.networks.registry.BACKBONES, with to_config/from_config)"
    )


def backbone_from_config(data: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised backbone for `backbone_to_config` output.

    Raises:
        ValueError: Unknown class, missing or unknown keys, or a config its class refuses.
    """
    if not isinstance(data, Mapping) or set(data) != {"_class_name", "config"}:
        got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"'backbone' must be an object with exactly '_class_name' and 'config', got {got}")
    cls = BACKBONES.get(data["_class_name"])
    if cls is None:
        raise ValueError(f"unknown backbone class {data['_class_name']!r}; this scoredistill knows {sorted(BACKBONES)}")
    if not isinstance(data["config"], Mapping):
        raise ValueError(f"'backbone.config' must be an object, got {type(data['config']).__name__}")
    return cls.from_config(data["config"])


def build_backbone(config: Any) -> nn.Module:
    """The backbone for an EDM UNet config dataclass: [`SongUNet`][scoredistill.networks.SongUNet] or
    [`DhariwalUNet`][scoredistill.networks.DhariwalUNet]."""
    for cls in BACKBONES.values():
        if type(config) is getattr(cls, "config_class", None):
            return cls(config)
    known = [cls.config_class.__name__ for cls in BACKBONES.values() if hasattr(cls, "config_class")]
    raise TypeError(f"expected one of {known}, got {type(config).__name__}")


def config_class(model_type: str) -> type:
    """The config dataclass of the EDM UNet family named ``model_type`` (``"SongUNet"``, ``"DhariwalUNet"``)."""
    families = {name: cls.config_class for name, cls in BACKBONES.items() if hasattr(cls, "config_class")}
    if model_type not in families:
        raise ValueError(f"unknown model_type {model_type!r}: pass one of {sorted(families)}")
    return families[model_type]
