"""Backbones ``F(x, noise_labels, class_labels, augment_labels)`` for EDM preconditioning.

- :mod:`scoredistill.networks.toy`: tiny MLP and UNet for tests, docs and the analytic demo.
- :mod:`scoredistill.networks.song_unet`: DDPM++ / NCSN++ (``SongUNet``) with EDM's parameter names.
- :mod:`scoredistill.networks.dhariwal_unet`: ADM (``DhariwalUNet``) with EDM's parameter names.
- :mod:`scoredistill.networks.presets`: the published EDM teachers' configs, ``edm_precond`` and strict loading.
"""

from .dhariwal_unet import DhariwalUNet as DhariwalUNet
from .dhariwal_unet import DhariwalUNetConfig as DhariwalUNetConfig
from .presets import PRESETS as PRESETS
from .presets import EDMUNetConfig as EDMUNetConfig
from .presets import StateDictMismatchError as StateDictMismatchError
from .presets import build_backbone as build_backbone
from .presets import config_from_edm_kwargs as config_from_edm_kwargs
from .presets import edm_precond as edm_precond
from .presets import load_edm_state_dict as load_edm_state_dict
from .song_unet import SongUNet as SongUNet
from .song_unet import SongUNetConfig as SongUNetConfig
from .toy import MLP as MLP
from .toy import TinyUNet as TinyUNet

__all__ = [
    "MLP",
    "PRESETS",
    "DhariwalUNet",
    "DhariwalUNetConfig",
    "EDMUNetConfig",
    "SongUNet",
    "SongUNetConfig",
    "StateDictMismatchError",
    "TinyUNet",
    "build_backbone",
    "config_from_edm_kwargs",
    "edm_precond",
    "load_edm_state_dict",
]
