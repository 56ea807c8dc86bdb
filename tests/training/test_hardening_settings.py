"""Settings and numerical faults: bad numbers refused at construction, non-finite training caught in the loop."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from helpers import tiny_image_roles, tiny_vector_roles
from scoredistill import (
    EMA,
    AdversarialEncoderLoss,
    DistillConfig,
    Distiller,
    DSMLoss,
    KarrasUniform,
    LogNormal,
    SiDLoss,
    Teacher,
)
from scoredistill.training.checkpoint import has_training_state
from scoredistill.training.distill import NonFiniteTrainingError, NonFiniteWarning
from scoredistill.training.recipes import RECIPES

NAN, INF = math.nan, math.inf

# -- every DistillConfig field -----------------------------------------------------------------------------

BAD_CONFIG = {
    "batch_size": [2.5, 4.0, True, 0, -4, NAN],
    "micro_batch": [2.5, True, 0, -1],
    "total_nimg": [NAN, INF, 1e6, 0, -1, True],
    "lr_generator": [NAN, INF, -INF, 0.0, -1e-5, True, "1e-5"],
    "lr_fake_score": [NAN, INF, 0.0, -1.0],
    "generator_beta1": [NAN, INF, -0.1, 1.0],
    "fake_score_beta1": [NAN, -0.1, 1.0],
    "beta2": [NAN, INF, 1.0, -0.5],
    "adam_eps": [NAN, INF, 0.0, -1e-8],
    "ema_halflife_nimg": [NAN, INF, 0, -1.0],
    "ema_rampup_ratio": [NAN, INF, 0.0, -0.05, False],
    "generator_start_nimg": [NAN, INF, 2.5, -1, True],
    "fake_score_grad_clip": [NAN, INF, 0.0, -1.0, True],
    "precision": ["fp8", None, 32],
    "seed": [NAN, 1.5, -1, 2**32, True],
    "use_kernels": [1, "yes"],
    "channels_last": [None, 1],
    "compile": ["on", None, True],
    "compile_mode": [3],
    "compile_cache_dir": [3, "/tmp/cache"],  # a path needs compile on
    "cuda_graphs": [None, 0],
    "overlap_teacher": [1, "yes"],
    "share_encoder_pass": [None, 1],
    "precast_weights": [1, "yes"],
}


def test_every_config_field_has_bad_values_listed():
    assert set(BAD_CONFIG) == {f.name for f in dataclasses.fields(DistillConfig)}


@pytest.mark.parametrize(("field", "value"), [(k, v) for k, vs in BAD_CONFIG.items() for v in vs])
def test_distill_config_refuses_bad_values_at_construction(field, value):
    # Old code: NaN and inf passed the `<= 0` checks, floats passed int fields and clips <= 0 were accepted.
    cfg = {"batch_size": 4, "micro_batch": None} if field == "micro_batch" else {}
    with pytest.raises((TypeError, ValueError), match=field):
        DistillConfig(**{**cfg, field: value})


@pytest.mark.parametrize(
    "good",
    [
        {"ema_rampup_ratio": None, "fake_score_grad_clip": None, "micro_batch": None, "use_kernels": None},
        {"lr_generator": 1, "ema_halflife_nimg": 500_000, "fake_score_grad_clip": 1},  # ints where floats are meant
        {"batch_size": 8, "micro_batch": 2, "generator_start_nimg": 0, "seed": 2**32 - 1, "compile_mode": "default"},
        {"lr_generator": 1e10},  # absurd but finite: the loop's non-finite monitor deals with it
    ],
)
def test_distill_config_accepts_good_values(good):
    DistillConfig(**good)


def test_recipes_still_build_every_config():
    for recipe in RECIPES.values():
        for method in ("sid", "sida", "sid2a"):
            recipe.config(method, world_size=1)
    with pytest.raises(ValueError, match="lr"):
        dataclasses.replace(RECIPES["cifar10-uncond"], lr=NAN)
    with pytest.raises(TypeError, match="total_nimg"):
        dataclasses.replace(RECIPES["cifar10-uncond"], total_nimg={"sid": 1.5e6})


# -- losses, EMA, samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SiDLoss(alpha=INF), "alpha"),
        (lambda: SiDLoss(alpha=NAN), "alpha"),
        (lambda: SiDLoss(scale=INF), "scale"),
        (lambda: SiDLoss(t_max=NAN), "t_max"),
        (lambda: DSMLoss(p_mean=NAN), "p_mean"),
        (lambda: DSMLoss(p_std=INF), "p_std"),
        (lambda: DSMLoss(scale=NAN), "scale"),
        (lambda: AdversarialEncoderLoss(generator_scale=NAN), "generator_scale"),
        (lambda: AdversarialEncoderLoss(discriminator_scale=INF), "discriminator_scale"),
        (lambda: AdversarialEncoderLoss(generator_weight=NAN), "generator_weight"),
        (lambda: AdversarialEncoderLoss(generator_start_nimg=2.5), "generator_start_nimg"),
        (lambda: AdversarialEncoderLoss(generator_start_nimg=NAN), "generator_start_nimg"),
        (lambda: KarrasUniform(sigma_max=INF), "sigma_max"),
        (lambda: KarrasUniform(rho=NAN), "rho"),
        (lambda: LogNormal(p_std=INF), "p_std"),
        (lambda: EMA(torch.nn.Linear(2, 2), halflife_nimg=NAN), "halflife_nimg"),
        (lambda: EMA(torch.nn.Linear(2, 2), rampup_ratio=0.0), "rampup_ratio"),
        (lambda: EMA(torch.nn.Linear(2, 2), rampup_ratio=-1.0), "rampup_ratio"),
        (lambda: EMA(torch.nn.Linear(2, 2), rampup_ratio=NAN), "rampup_ratio"),
    ],
)
def test_loss_ema_and_sampler_settings_are_refused(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_ema_ramp_up_off_is_none_and_a_tiny_ratio_still_averages():
    module = torch.nn.Linear(2, 2)
    ema = EMA(module, halflife_nimg=1000, rampup_ratio=None)
    assert ema.update(module, nimg=0, batch=10) == pytest.approx(0.5 ** (10 / 1000))  # no ramp-up: a real average


# -- non-finite training -----------------------------------------------------------------------------------


class _NaNOnFirstSample(torch.nn.Module):
    """A teacher whose first sample turns NaN inside the network (forward and backward), like an overflow."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, labels=None, **kw):
        scale = torch.ones(x.shape[0], *[1] * (x.ndim - 1))
        scale[0] = NAN
        return self.inner(x * scale, sigma, labels, **kw)


def _generator_grads(teacher: Teacher, drop_first: bool) -> list[torch.Tensor]:
    """G's gradients of one step; ``drop_first`` zeroes sample 0's gradient at G's output by hand."""
    _, G, fake = tiny_image_roles()
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=4, total_nimg=100))
    if drop_first:

        def zero_first(module, inputs, out):
            if out.requires_grad:
                out.register_hook(lambda g: torch.cat([torch.zeros_like(g[:1]), g[1:]]))

        G.register_forward_hook(zero_first)
    grads = {}
    step = d.opt_g.step

    def spy(*a, **k):
        grads["g"] = [p.grad.clone() for p in d.g_params]
        return step(*a, **k)

    d.opt_g.step = spy
    d.step()
    return grads["g"]


def test_one_nan_teacher_sample_drops_only_that_sample_from_the_generator_update():
    # Old code: the NaN reached every generator weight through the teacher's backward pass, sanitize_grads zeroed
    # it, and the whole batch's update was lost (G did not move).
    teacher, _, _ = tiny_image_roles()
    bad = Teacher(_NaNOnFirstSample(teacher.denoiser), sample_shape=teacher.sample_shape)
    got = _generator_grads(bad, drop_first=False)
    want = _generator_grads(teacher, drop_first=True)  # the clean teacher, sample 0 left out by hand
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0
    for g, w in zip(got, want):  # equal up to float32 summation order (measured: 3e-6 of the largest entry)
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4 * scale)


def test_a_high_non_finite_fraction_warns(tmp_path):
    teacher, G, fake = tiny_image_roles()
    bad = Teacher(_NaNOnFirstSample(teacher.denoiser), sample_shape=teacher.sample_shape)
    d = Distiller(bad, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=4, total_nimg=8))
    with pytest.warns(NonFiniteWarning, match="25%"):
        logs = d.run(log_every_nimg=8, progress=False)
    assert logs["sid/nonfinite_frac"] == pytest.approx(0.25)


def test_a_healthy_run_does_not_warn():
    teacher, G, fake = tiny_vector_roles()
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=16, total_nimg=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        d.run(log_every_nimg=16, progress=False)


def test_a_wholly_non_finite_interval_stops_with_a_checkpoint_beside_the_good_one(tmp_path):
    # Old code: with lr 1e10 every sample was masked, G never moved and the run went on silently to the end.
    def make(lr):
        teacher, G, fake = tiny_vector_roles()
        cfg = DistillConfig(batch_size=16, total_nimg=640, lr_generator=lr, lr_fake_score=lr)
        return Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], cfg)

    good = make(1e-4)
    good.step()
    good.save(tmp_path / "training_state")
    before = (tmp_path / "training_state" / "state.pt").read_bytes()
    d = make(1e10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        with pytest.raises(NonFiniteTrainingError, match=r"non-finite.*training_state_nonfinite"):
            d.run(run_dir=tmp_path, log_every_nimg=32, progress=False)
    assert d.nimg < 640  # stopped early
    assert (tmp_path / "training_state" / "state.pt").read_bytes() == before  # the good checkpoint is kept
    assert has_training_state(tmp_path / "training_state_nonfinite")
    state = torch.load(tmp_path / "training_state_nonfinite" / "state.pt", weights_only=True)
    assert state["nimg"] == d.nimg
