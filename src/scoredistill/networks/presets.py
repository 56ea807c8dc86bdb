"""Configs of the published EDM teachers, EDM-kwarg parsing and strict loading of EDM-named weights.

The preset settings are the constructor arguments of the EDM checkpoints that SiD/SiDA distil
(``edm-{cifar10-32x32-uncond,cifar10-32x32-cond,ffhq-64x64-uncond,afhqv2-64x64-uncond}-vp.pkl`` and
``edm-imagenet-64x64-cond-adm.pkl``); parameter counts and every key are locked by ``tests/networks/test_networks.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .._io import StateDictMismatchError, load_state_dict_strict
from .dhariwal_unet import DhariwalUNetConfig
from .registry import build_backbone, config_class
from .song_unet import SongUNetConfig

__all__ = [
    "PRESETS",
    "EDMUNetConfig",
    "StateDictMismatchError",
    "build_backbone",
    "config_from_edm_kwargs",
    "load_edm_state_dict",
]

EDMUNetConfig = SongUNetConfig | DhariwalUNetConfig
"""Either EDM backbone config."""

_DDPMPP_CIFAR = SongUNetConfig(
    img_resolution=32,
    augment_dim=9,
    model_channels=128,
    channel_mult=(2, 2, 2),
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.13,
)
_DDPMPP_64 = dataclasses.replace(_DDPMPP_CIFAR, img_resolution=64, channel_mult=(1, 2, 2, 2), dropout=0.05)

PRESETS: dict[str, EDMUNetConfig] = {
    # EDM DDPM++ (VP) teachers: 55,733,891 / 55,735,299 / 61,805,571 parameters.
    "cifar10-32x32-uncond": _DDPMPP_CIFAR,
    "cifar10-32x32-cond": dataclasses.replace(_DDPMPP_CIFAR, label_dim=10),
    "ffhq-64x64": _DDPMPP_64,
    # Dropout 0.05 as in SiD's AFHQv2 runs; EDM trained this teacher with 0.25 (weights are unaffected).
    "afhqv2-64x64": _DDPMPP_64,
    # EDM ADM teacher: 295,899,267 parameters.
    "imagenet-64x64": DhariwalUNetConfig(img_resolution=64, label_dim=1000, dropout=0.10),
}
"""The published EDM teachers' backbone configs, keyed by dataset (EDM's names without ``edm-``/``-vp``)."""

_PRECOND_ONLY_KWARGS = ("use_fp16", "sigma_min", "sigma_max", "sigma_data")


def config_from_edm_kwargs(kwargs: Mapping[str, Any]) -> EDMUNetConfig:
    """Parse EDM-style constructor kwargs (``EDMPrecond(..., model_type=..., **model_kwargs)``) into a config.

    ``model_type`` picks the family (``SongUNet`` or ``DhariwalUNet``, optionally with SiDA's
    ``_EncoderDecoder`` suffix; default ``DhariwalUNet`` as in EDM). Preconditioning-only keys
    (``use_fp16``, ``sigma_min``, ``sigma_max``, ``sigma_data``) are ignored; any other unknown key raises.

    Args:
        kwargs: For example a golden file's ``config`` metadata or the init kwargs recorded in an EDM pickle.

    Returns:
        A [`SongUNetConfig`][scoredistill.networks.SongUNetConfig] or
        [`DhariwalUNetConfig`][scoredistill.networks.DhariwalUNetConfig].
    """
    kwargs = dict(kwargs)
    model_type = str(kwargs.pop("model_type", "DhariwalUNet")).removesuffix("_EncoderDecoder")
    for key in _PRECOND_ONLY_KWARGS:
        kwargs.pop(key, None)
    return config_class(model_type).from_dict(kwargs)


def load_edm_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], *, assign: bool = False) -> nn.Module:
    """Load EDM-named weights strictly, reporting every missing, unexpected and mis-shaped key at once.

    Keys must equal ``module.state_dict()``'s keys (parameters and persistent buffers such as
    ``resample_filter`` and ``freqs``). One normalisation is applied: EDM checkpoints name the backbone
    ``model.``; if EVERY key of ``state_dict`` starts with ``model.`` and the module's keys do not (a bare
    [`SongUNet`][scoredistill.networks.SongUNet]/[`DhariwalUNet`][scoredistill.networks.DhariwalUNet]), the prefix is
    stripped, and if NO key has it while the module's keys all do (a [`Precond`][scoredistill.roles.precond.Precond]),
    it is
    added. Values are copied in the module's dtype and device.

    Args:
        module: The destination, e.g. from [`edm_precond`][scoredistill.roles.precond.edm_precond] or `build_backbone`.
        state_dict: EDM-named tensors.
        assign: Assign the tensors instead of copying them (for a module built on the meta device).

    Returns:
        ``module``.

    Raises:
        StateDictMismatchError: Listing all offending keys; nothing is loaded.
    """
    expected = module.state_dict()
    prefix = "model."
    module_prefixed = bool(expected) and all(k.startswith(prefix) for k in expected)
    given_prefixed = bool(state_dict) and all(k.startswith(prefix) for k in state_dict)
    if given_prefixed and not module_prefixed:
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    elif module_prefixed and not any(k.startswith(prefix) for k in state_dict):
        state_dict = {prefix + k: v for k, v in state_dict.items()}

    return load_state_dict_strict(module, state_dict, assign=assign)
