"""Backbones ``F(x, noise_labels, class_labels, augment_labels)`` for EDM preconditioning.

- :mod:`scoredistill.networks.toy`: tiny MLP and UNet for tests, docs and the analytic demo.
"""

from .toy import MLP as MLP
from .toy import TinyUNet as TinyUNet

__all__ = ["MLP", "TinyUNet"]
