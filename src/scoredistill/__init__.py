"""scoredistill: one-step generators from pretrained diffusion models (SiD, SiDA, SiD²A).

The public API, re-exported here:

- roles speaking one denoiser contract ``D(x, sigma, labels)``: [`Teacher`][scoredistill.Teacher],
  [`OneStepGenerator`][scoredistill.OneStepGenerator], [`FakeScore`][scoredistill.FakeScore], around
  [`Precond`][scoredistill.Precond] (EDM preconditioning) and a backbone from `scoredistill.networks`;
- loss plug-ins: [`SiDLoss`][scoredistill.SiDLoss], [`DSMLoss`][scoredistill.DSMLoss],
  [`AdversarialEncoderLoss`][scoredistill.AdversarialEncoderLoss] (pure maths in
  [`scoredistill.losses.functional`][scoredistill.losses.functional]);
- the loop: [`Distiller`][scoredistill.Distiller] and [`DistillConfig`][scoredistill.DistillConfig];
- an analytic teacher: [`GaussianMixture`][scoredistill.GaussianMixture].
"""

from . import _moved
from ._types import Denoiser as Denoiser
from ._types import Noised as Noised
from ._types import ScoreOutput as ScoreOutput
from ._version import __version__ as __version__
from .demo.analytic import GaussianMixture as GaussianMixture
from .losses import AdversarialEncoderLoss as AdversarialEncoderLoss
from .losses import DistillLoss as DistillLoss
from .losses import DSMLoss as DSMLoss
from .losses import Evaluation as Evaluation
from .losses import LossModule as LossModule
from .losses import LossOutput as LossOutput
from .losses import SiDLoss as SiDLoss
from .roles.fake_score import FakeScore as FakeScore
from .roles.generator import OneStepGenerator as OneStepGenerator
from .roles.precond import Precond as Precond
from .roles.precond import edm_precond as edm_precond
from .roles.precond import edm_scalings as edm_scalings
from .roles.sampling import edm_sample as edm_sample
from .roles.teacher import Teacher as Teacher
from .schedules import KarrasUniform as KarrasUniform
from .schedules import LogNormal as LogNormal
from .training.distill import DistillConfig as DistillConfig
from .training.distill import Distiller as Distiller
from .training.ema import EMA as EMA

_moved.install()  # the pre-0.2 module paths (scoredistill.training.distill, scoredistill.io.hub, ...) keep working

__all__ = [
    "EMA",
    "AdversarialEncoderLoss",
    "DSMLoss",
    "Denoiser",
    "DistillConfig",
    "DistillLoss",
    "Distiller",
    "Evaluation",
    "FakeScore",
    "GaussianMixture",
    "KarrasUniform",
    "LogNormal",
    "LossModule",
    "LossOutput",
    "Noised",
    "OneStepGenerator",
    "Precond",
    "ScoreOutput",
    "SiDLoss",
    "Teacher",
    "edm_precond",
    "edm_sample",
    "edm_scalings",
]
