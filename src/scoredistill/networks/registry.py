"""The backbone registry: the one place where a backbone class is looked up by the name ``config.json`` records.

A backbone class registers with [`register_backbone`][scoredistill.networks.registry.register_backbone] and owns
three facts about itself; nothing is constructed from a string any other way:

- ``to_config(self) -> dict``: its architecture as JSON-ready values;
- ``from_config(cls, config)`` (classmethod): a freshly initialised network for that dict;
- ``config_facts(cls, config)`` (classmethod): that dict checked without building anything, as
  [`BackboneFacts`][scoredistill.networks.facts.BackboneFacts] (conditioning, sample shape, a lower bound on
  its size), so that a loader refuses a hostile ``config.json`` before building it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from .dhariwal_unet import DhariwalUNet
from .facts import BackboneFacts
from .song_unet import SongUNet
from .toy import MLP, TinyUNet

__all__ = [
    "BACKBONES",
    "BackboneFacts",
    "backbone_facts",
    "backbone_from_config",
    "backbone_to_config",
    "build_backbone",
    "register_backbone",
]

_CONTRACT = ("to_config", "from_config", "config_facts")
B = TypeVar("B", bound=type)

BACKBONES: dict[str, type[nn.Module]] = {}
"""The backbones an artefact may name in ``backbone._class_name``; add one with `register_backbone`."""


def register_backbone(cls: B, name: str | None = None) -> B:
    """Let artefacts record and rebuild backbones of class ``cls`` (under ``name``, default its class name).

    Usable as a class decorator. Registering the same class again (or a class of the same module and name,
    defined anew, as when a notebook cell runs twice) replaces the entry.

    Raises:
        TypeError: ``cls`` lacks ``to_config``, ``from_config`` or ``config_facts``.
        ValueError: Another class is registered under ``name``.
    """
    missing = [attr for attr in _CONTRACT if not callable(getattr(cls, attr, None))]
    if missing:
        raise TypeError(f"cannot register {cls.__name__} as a backbone: it lacks {missing} (see {__name__})")
    name = name or cls.__name__
    old = BACKBONES.get(name, cls)
    if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"backbone name {name!r} is taken by {old.__module__}.{old.__qualname__}")
    BACKBONES[name] = cls
    return cls


for _cls in (SongUNet, DhariwalUNet, MLP, TinyUNet):
    register_backbone(_cls)


def backbone_to_config(model: nn.Module) -> dict[str, Any]:
    """``{"_class_name": ..., "config": ...}`` for a registered backbone (matched exactly, never a subclass).

    Example:
        >>> backbone_to_config(MLP(dim=2, hidden=8))["_class_name"]
        'MLP'
    """
    for name, cls in BACKBONES.items():
        if type(model) is cls:
            if not callable(getattr(cls, "config_facts", None)):  # put in BACKBONES by hand: it would not load
                raise TypeError(f"cannot save a {cls.__name__} backbone: it lacks config_facts (see {__name__})")
            return {"_class_name": name, "config": model.to_config()}
    raise TypeError(
        f"cannot save a {type(model).__name__} backbone: artefacts hold one of {sorted(BACKBONES)} "
        "(register the class with scoredistill.networks.registry.register_backbone)"
    )


def backbone_facts(class_name: str, config: Mapping[str, Any]) -> BackboneFacts:
    """The [`BackboneFacts`][scoredistill.networks.facts.BackboneFacts] of a registered backbone's config, from
    its class's ``config_facts``; nothing is built.

    Raises:
        ValueError: Unknown class, or a config its class refuses (the message is cut to 300 characters).
    """
    cls = BACKBONES.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        shown = repr(class_name[:80]) if isinstance(class_name, str) else f"a {type(class_name).__name__}"
        raise ValueError(f"unknown backbone class {shown}; this scoredistill knows {sorted(BACKBONES)}")
    try:
        facts = cls.config_facts(config)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as err:  # the message may quote untrusted values: never whole
        raise ValueError(f"{class_name} config: {str(err)[:300]}") from None
    if not isinstance(facts, BackboneFacts):
        raise TypeError(f"{cls.__qualname__}.config_facts returned a {type(facts).__name__}, not BackboneFacts")
    return facts


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
