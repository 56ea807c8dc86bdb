"""Fit a trainable network to a teacher's denoiser, so that the generator and the fake score can start as copies.

SiD and SiDA initialise both trainable roles as copies of the teacher's network. A teacher without a network (an
analytic [`GaussianMixture`][scoredistill.demo.analytic.GaussianMixture], or any callable ``D(x, sigma, labels)``) has
nothing to copy; [`fit_denoiser`][scoredistill.training.fit.fit_denoiser] distils its denoiser into a network by
regression
across noise levels,

``min_theta E_{x0, sigma, n} lambda(sigma) ||D_theta(x0 + sigma n; sigma) - D_teacher(x0 + sigma n; sigma)||^2``,

with EDM's weight ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` and ``sigma`` log-uniform over
``[sigma_min, sigma_max]``. The target is the teacher's output, not the clean sample: the fitted network
approximates the teacher itself, at every noise level the distillation will query.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._types import as_sigma
from ..losses.functional import dsm_weight
from ..roles.sampling import edm_sample

__all__ = ["fit_denoiser", "teacher_samples"]


@torch.no_grad()
def teacher_samples(
    teacher: Callable[..., Tensor],
    n: int,
    sample_shape: tuple[int, ...],
    *,
    steps: int = 32,
    rng: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``n`` samples of a teacher: its exact sampler when it has one (``teacher.sample``), else EDM's Heun ODE."""
    for obj in (teacher, getattr(teacher, "denoiser", None)):
        if callable(getattr(obj, "sample", None)) and getattr(obj, "label_dim", 0) == 0:
            return obj.sample(n, rng=rng).to(device)
    return edm_sample(teacher, torch.randn(n, *sample_shape, generator=rng, device=device), steps=steps)


def fit_denoiser(
    teacher: Callable[..., Tensor],
    denoiser: nn.Module,
    *,
    samples: Tensor | None = None,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 1e-3,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sigma_data: float = 0.5,
    seed: int = 0,
) -> nn.Module:
    """Train ``denoiser`` in place to reproduce ``teacher``'s denoiser at every noise level; returns it.

    Use it to start SiD's roles as copies of a teacher that has no network of its own::

        net = fit_denoiser(Teacher(GaussianMixture.ring(8)), Precond(MLP(2)))
        G = OneStepGenerator.from_teacher(Teacher(net))
        fake = FakeScore.from_teacher(Teacher(net))

    Args:
        teacher: The teacher ``D(x, sigma, labels)`` (a [`Teacher`][scoredistill.roles.teacher.Teacher] or any
            callable); conditional teachers get uniformly drawn one-hot labels.
        denoiser: The network to train (usually a [`Precond`][scoredistill.roles.precond.Precond] around a backbone);
            its sample shape must be the teacher's.
        samples: ``[N, *sample_shape]`` clean samples to noise, on the denoiser's device. ``None`` draws 4096
            from the teacher (`teacher_samples`: its exact sampler, else a 32-step Heun ODE).
        steps: Adam steps.
        batch_size: Noisy inputs per step.
        lr: Adam learning rate, decayed to zero by a cosine over ``steps``.
        sigma_min: Smallest noise level of the fit.
        sigma_max: Largest noise level of the fit.
        sigma_data: ``sigma_d`` of the weight ``lambda(sigma)``.
        seed: Seed of the samples, noise levels and noise.

    Returns:
        ``denoiser``, trained, in train mode with gradients enabled.

    Raises:
        ValueError: If the settings are out of range, or ``samples`` has no rows.
    """
    if steps < 1 or batch_size < 1 or lr <= 0 or not 0 < sigma_min < sigma_max or sigma_data <= 0:
        raise ValueError(
            "fit_denoiser needs steps >= 1, batch_size >= 1, lr > 0, 0 < sigma_min < sigma_max and sigma_data > 0, "
            f"got steps={steps}, batch_size={batch_size}, lr={lr}, sigma_min={sigma_min}, sigma_max={sigma_max}, "
            f"sigma_data={sigma_data}"
        )
    params = [p for p in denoiser.parameters()]
    if not params:
        raise ValueError(f"the {type(denoiser).__name__} to fit has no parameters")
    device = params[0].device
    rng = torch.Generator(device).manual_seed(seed)
    label_dim = int(getattr(teacher, "label_dim", 0) or 0)
    if samples is None:
        shape = getattr(teacher, "sample_shape", None)
        if shape is None:
            raise ValueError("the teacher does not say its sample_shape: pass samples=[N, *sample_shape] to fit on")
        samples = teacher_samples(teacher, 4096, tuple(shape), rng=rng, device=device)
    if samples.shape[0] == 0:
        raise ValueError("samples is empty: pass [N, *sample_shape] clean samples with N >= 1")
    samples = samples.to(device).float()
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    log_lo, log_hi = math.log(sigma_min), math.log(sigma_max)
    denoiser.train().requires_grad_(True)
    for _ in range(steps):
        idx = torch.randint(samples.shape[0], (batch_size,), generator=rng, device=device)
        x0 = samples[idx]
        sigma = (log_lo + (log_hi - log_lo) * torch.rand(batch_size, generator=rng, device=device)).exp()
        x = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * torch.randn(x0.shape, generator=rng, device=device)
        labels = None
        if label_dim:
            k = torch.randint(label_dim, (batch_size,), generator=rng, device=device)
            labels = nn.functional.one_hot(k, label_dim).float()
        with torch.no_grad():
            target = teacher(x, as_sigma(sigma, batch_size, device), labels).float()
        err = (denoiser(x, sigma, labels).float() - target).square().flatten(1).sum(1)
        loss = (dsm_weight(sigma, sigma_data) * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return denoiser
