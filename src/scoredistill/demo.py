"""The analytic demo: distil an 8-Gaussian ring into a one-step MLP generator on a CPU in about a minute."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .analytic import GaussianMixture, energy_distance
from .distill import DistillConfig, Distiller
from .fake_score import FakeScore
from .generator import OneStepGenerator
from .imageio import write_png
from .losses import AdversarialEncoderLoss, DSMLoss, SiDLoss
from .networks.toy import MLP
from .precond import Precond
from .sampling import edm_sample
from .teacher import Teacher

__all__ = ["DemoResult", "run_demo", "toy_roles"]


@dataclass
class DemoResult:
    """Figures of one demo run."""

    true_mass: list[float]
    teacher_mass: list[float]
    student_mass: list[float]
    teacher_energy: float  # energy distance of teacher (ODE) samples to true samples
    student_energy: float  # energy distance of one-step student samples to true samples
    teacher_near: float  # fraction of teacher samples within 3 component stds of a mode
    student_near: float  # fraction of student samples within 3 component stds of a mode
    seconds: float
    samples: torch.Tensor


def toy_roles(
    mixture: GaussianMixture, *, hidden: int = 128, seed: int = 0
) -> tuple[Teacher, OneStepGenerator, FakeScore]:
    """Teacher, generator and fake score for a 2-D mixture (fresh MLPs: an analytic teacher has no network)."""
    torch.manual_seed(seed)
    dim = mixture.sample_shape[0]
    G = OneStepGenerator(
        Precond(MLP(dim, hidden, label_dim=mixture.label_dim), label_dim=mixture.label_dim),
        sample_shape=mixture.sample_shape,
    )
    fake = FakeScore(Precond(MLP(dim, hidden, label_dim=mixture.label_dim), label_dim=mixture.label_dim))
    return Teacher(mixture), G, fake


def run_demo(
    *,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 3e-4,
    alpha: float = 1.2,
    seed: int = 0,
    teacher: GaussianMixture | None = None,
    data: GaussianMixture | None = None,
    adversarial_scale: float | None = None,
    start_nimg: int = 0,
    hidden: int = 128,
    device: torch.device | str = "cpu",
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    progress: bool = False,
) -> DemoResult:
    """Distil ``teacher`` (default: an 8-mode ring) with SiD, or SiDA when ``data`` is given.

    Args:
        steps: Iterations (each ``batch_size`` images).
        batch_size: Images per iteration.
        lr: Adam learning rate of both networks.
        alpha: SiD's alpha.
        seed: Seed of the networks and the loop.
        teacher: The analytic teacher; an 8-Gaussian ring by default.
        data: A mixture to draw real samples from: turns on SiDA's adversarial loss.
        adversarial_scale: SiDA's generator scale (the paper's 0.01 when ``None``).
        start_nimg: Images before the adversarial term joins the generator loss (the paper: 200k of its 300M).
        hidden: Width of the MLPs.
        device: Where the networks train (the figures are always computed on the CPU, in float32).
        precision: Network compute precision of the loop (see [`DistillConfig`][scoredistill.DistillConfig]).
        progress: Show a progress bar.
    """
    mixture = teacher if teacher is not None else GaussianMixture.ring(8)
    t_net, G, fake = (m.to(device) for m in toy_roles(mixture, hidden=hidden, seed=seed))
    losses: list = [SiDLoss(alpha=alpha), DSMLoss()]
    stream = None
    if data is not None:
        scale = 0.01 if adversarial_scale is None else adversarial_scale
        losses.append(AdversarialEncoderLoss(generator_scale=scale, generator_start_nimg=start_nimg))
        # A CPU copy: the teacher may be the same object and move to ``device`` below.
        stream = copy.deepcopy(data).cpu().batches(batch_size, rng=torch.Generator().manual_seed(seed + 2))
    cfg = DistillConfig(
        batch_size=batch_size,
        total_nimg=steps * batch_size,
        lr_generator=lr,
        lr_fake_score=lr,
        ema_halflife_nimg=steps * batch_size / 20,
        seed=seed,
        precision=precision,
    )
    distiller = Distiller(t_net, G, fake, losses, cfg, data=stream)
    t0 = time.perf_counter()
    distiller.run(log_every_nimg=cfg.total_nimg // 5, progress=progress)
    seconds = time.perf_counter() - t0
    rng = torch.Generator().manual_seed(seed + 1)
    n = 4000
    t_net, student_net = t_net.cpu(), distiller.ema.module.cpu()  # t_net holds the mixture: it moves too
    with torch.no_grad():
        truth = mixture.sample(n, rng=rng)
        student = student_net.sample(n, rng=rng)
        teacher_x = edm_sample(t_net, torch.randn(n, *mixture.sample_shape, generator=rng), steps=32)
    return DemoResult(
        true_mass=mixture.weights.tolist(),
        teacher_mass=mixture.mode_mass(teacher_x).tolist(),
        student_mass=mixture.mode_mass(student).tolist(),
        teacher_energy=float(energy_distance(teacher_x, truth)),
        student_energy=float(energy_distance(student, truth)),
        teacher_near=float(mixture.near_mode(teacher_x)),
        student_near=float(mixture.near_mode(student)),
        seconds=seconds,
        samples=student,
    )


def write_scatter_png(
    path: str | Path, points: list[tuple[torch.Tensor, tuple[int, int, int]]], *, size: int = 512, extent: float = 1.6
) -> Path:
    """Rasterise 2-D point sets (each with an RGB colour) into a PNG."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    for pts, colour in points:
        ij = ((pts.numpy() / extent + 1) / 2 * (size - 1)).round().astype(int)
        ok = (ij >= 1).all(1) & (ij < size - 1).all(1)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                img[size - 1 - (ij[ok, 1] + dj), ij[ok, 0] + di] = colour
    return write_png(path, img)
