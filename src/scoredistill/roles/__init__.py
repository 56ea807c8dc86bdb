"""The three roles of score distillation and the network wrapper they share.

Every role speaks one denoiser contract ``D(x, sigma, labels) -> x0_hat``: the frozen
[`Teacher`][scoredistill.roles.teacher.Teacher], the one-step
[`OneStepGenerator`][scoredistill.roles.generator.OneStepGenerator] and the
[`FakeScore`][scoredistill.roles.fake_score.FakeScore] (whose encoder is SiDA's discriminator), each around a
[`Precond`][scoredistill.roles.precond.Precond] (EDM preconditioning) that wraps a backbone from
`scoredistill.networks`. [`edm_sample`][scoredistill.roles.sampling.edm_sample] samples a teacher.
"""

from .fake_score import FakeScore as FakeScore
from .generator import OneStepGenerator as OneStepGenerator
from .precond import Precond as Precond
from .precond import edm_precond as edm_precond
from .precond import edm_scalings as edm_scalings
from .sampling import edm_sample as edm_sample
from .teacher import Teacher as Teacher

__all__ = ["FakeScore", "OneStepGenerator", "Precond", "Teacher", "edm_precond", "edm_sample", "edm_scalings"]
