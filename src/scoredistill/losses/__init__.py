"""Distillation losses: pure maths in [`functional`][scoredistill.losses.functional], plug-ins around it."""

from . import functional as functional
from .adversarial import AdversarialEncoderLoss as AdversarialEncoderLoss
from .base import DistillLoss as DistillLoss
from .base import Evaluation as Evaluation
from .base import LossModule as LossModule
from .base import LossOutput as LossOutput
from .sid import DSMLoss as DSMLoss
from .sid import SiDLoss as SiDLoss

__all__ = [
    "AdversarialEncoderLoss",
    "DSMLoss",
    "DistillLoss",
    "Evaluation",
    "LossModule",
    "LossOutput",
    "SiDLoss",
    "functional",
]
