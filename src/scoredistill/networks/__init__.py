"""Backbones ``F(x, noise_labels, class_labels, augment_labels)`` for EDM preconditioning.

- `scoredistill.networks.toy`: tiny MLP and UNet for tests, docs and the analytic demo.
- `scoredistill.networks.song_unet`: DDPM++ / NCSN++ (``SongUNet``) with EDM's parameter names.
- `scoredistill.networks.dhariwal_unet`: ADM (``DhariwalUNet``) with EDM's parameter names.
- `scoredistill.networks.presets`: the published EDM teachers' configs and strict loading of EDM weights.
- `scoredistill.networks.registry`: `BACKBONES`, the one name-to-class map that ``config.json`` uses, and
  `register_backbone` for a network of your own.

``scoredistill.roles.precond.edm_precond`` wraps a preset into its [`Precond`][scoredistill.roles.precond.Precond].
"""

from .dhariwal_unet import DhariwalUNet as DhariwalUNet
from .dhariwal_unet import DhariwalUNetConfig as DhariwalUNetConfig
from .facts import BackboneFacts as BackboneFacts
from .presets import PRESETS as PRESETS
from .presets import EDMUNetConfig as EDMUNetConfig
from .presets import StateDictMismatchError as StateDictMismatchError
from .presets import config_from_edm_kwargs as config_from_edm_kwargs
from .presets import load_edm_state_dict as load_edm_state_dict
from .registry import BACKBONES as BACKBONES
from .registry import build_backbone as build_backbone
from .registry import register_backbone as register_backbone
from .song_unet import SongUNet as SongUNet
from .song_unet import SongUNetConfig as SongUNetConfig
from .toy import MLP as MLP
from .toy import TinyUNet as TinyUNet

__all__ = [
    "BACKBONES",
    "MLP",
    "PRESETS",
    "BackboneFacts",
    "DhariwalUNet",
    "DhariwalUNetConfig",
    "EDMUNetConfig",
    "SongUNet",
    "SongUNetConfig",
    "StateDictMismatchError",
    "TinyUNet",
    "build_backbone",
    "config_from_edm_kwargs",
    "load_edm_state_dict",
    "register_backbone",
]
