"""The analytic demo: distil an 8-Gaussian ring into a one-step MLP generator on a CPU in one to two minutes.

The recipe (measured on the 8-mode ring, see docs/quickstart.md):

1. fit an MLP to the analytic teacher's exact denoiser ([`fit_denoiser`][scoredistill.training.fit.fit_denoiser]), since
   SiD starts the generator and the fake score as copies of the teacher;
2. SiD with ``alpha`` 0.6, ``t_max`` 0.5, Adam at 1e-4, 3000 steps of 256 points, EMA half-life 5% of the run.

The figures that can fail are the fraction of samples within 3 std of a mode, the MMD² and energy distance to a
fresh draw of the true mixture, and the mode masses; [`demo_failures`][scoredistill.demo.run.demo_failures] holds
the bar (0.80 and 0.01).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..data.imageio import write_png
from ..losses import AdversarialEncoderLoss, DSMLoss, SiDLoss
from ..networks.toy import MLP
from ..roles.fake_score import FakeScore
from ..roles.generator import OneStepGenerator
from ..roles.precond import Precond
from ..roles.sampling import edm_sample
from ..roles.teacher import Teacher
from ..schedules import SIGMA_INIT
from ..training.distill import DistillConfig, Distiller
from ..training.fit import fit_denoiser
from .analytic import GaussianMixture, energy_distance, mmd2

__all__ = [
    "BIASED_TEACHER_ADVERSARIAL_SCALE",
    "BIASED_TEACHER_WEIGHTS",
    "DemoReport",
    "DemoResult",
    "SampleFigures",
    "demo_failures",
    "fit_toy_network",
    "run_demo",
    "run_demo_report",
    "sample_figures",
    "write_panels_png",
    "write_scatter_png",
]

# The demo's bar: fraction of samples within 3 std of a mode. The SiD student reaches 0.849 to 0.878 (seeds 0 to 2
# on two CPUs, whose float rounding takes a run down different paths), a uniform disc over the ring 0.11.
NEAR_MODE_MIN = 0.80
MMD2_MAX = 0.01  # the demo's bar: MMD² to a fresh true draw (bandwidths analytic.MMD_BANDWIDTHS)
N_EVAL = 4000  # samples per row of the table
BIASED_TEACHER_WEIGHTS = (3.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0)  # two modes 3x as heavy: L1 0.5 from uniform
# SiDA's generator scale when the teacher is far from the data (docs/methods.md, "The adversarial weight"): 300x
# the paper's 0.01. Measured on the biased ring: 0.01 leaves the student on the teacher, 1 halves the gap, 3 closes
# most of it, 10 and 30 close it but cost sharpness on some seeds.
BIASED_TEACHER_ADVERSARIAL_SCALE = 3.0


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread, then restore the setting (a context manager and a decorator).

    The demo's networks are tiny: splitting each op over threads costs more than it saves, and on a shared machine
    spinning threads multiply the CPU time (measured: 8x for the fit on 2 busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class SampleFigures:
    """Figures of one set of 2-D samples against a true mixture.

    Attributes:
        near_mode: Fraction within 3 component stds of the nearest mode.
        mmd2: Unbiased MMD² to a fresh true draw ([`mmd2`][scoredistill.demo.analytic.mmd2], RBF bandwidths
            0.05, 0.2, 1.0).
        energy: Energy distance to the same true draw.
        mode_mass: Fraction of samples nearest to each mode.
    """

    near_mode: float
    mmd2: float
    energy: float
    mode_mass: list[float]

    def mass_l1(self, weights: Tensor | list[float]) -> float:
        """L1 distance between the mode masses and ``weights`` (0: the same masses, 2: disjoint)."""
        return float(np.abs(np.asarray(self.mode_mass) - np.asarray(torch.as_tensor(weights).tolist())).sum())


def sample_figures(x: Tensor, mixture: GaussianMixture, reference: Tensor) -> SampleFigures:
    """[`SampleFigures`][scoredistill.demo.run.SampleFigures] of samples ``x`` against ``mixture`` and a true draw."""
    x = x.detach().float().cpu()
    return SampleFigures(
        near_mode=float(mixture.near_mode(x)),
        mmd2=float(mmd2(x, reference)),
        energy=float(energy_distance(x, reference)),
        mode_mass=mixture.mode_mass(x).tolist(),
    )


def demo_failures(figures: SampleFigures, *, near_min: float = NEAR_MODE_MIN, mmd2_max: float = MMD2_MAX) -> list[str]:
    """What keeps samples from passing the demo's bar (empty when they pass): sharp and the right law."""
    failures = []
    if not figures.near_mode >= near_min:
        failures.append(f"only {figures.near_mode:.3f} of samples within 3 std of a mode (need >= {near_min:.2f})")
    if not figures.mmd2 < mmd2_max:
        failures.append(f"MMD² {figures.mmd2:.4f} to the true mixture (need < {mmd2_max})")
    return failures


def fit_toy_network(
    mixture: GaussianMixture, *, hidden: int = 128, steps: int = 3000, seed: int = 0, device: torch.device | str = "cpu"
) -> Precond:
    """An MLP denoiser fitted to ``mixture``'s exact denoiser, for the roles to start as copies of."""
    torch.manual_seed(seed)
    net = Precond(MLP(mixture.sample_shape[0], hidden, label_dim=mixture.label_dim), label_dim=mixture.label_dim)
    teacher = Teacher(mixture.to(device))
    return fit_denoiser(teacher, net.to(device), steps=steps, batch_size=512, lr=2e-3, seed=seed)


@dataclass
class DemoResult:
    """Figures of one demo student, beside its teacher's and a second true draw's."""

    truth: SampleFigures  # a second draw of the true mixture
    teacher: SampleFigures  # the teacher's 32-step Heun ODE samples (63 NFE)
    student: SampleFigures  # the one-step student (EMA)
    seconds: float  # wall-clock seconds of the fit and the distillation
    cpu_seconds: float  # process CPU seconds of the same (time.process_time, all threads)
    samples: Tensor  # the student's samples
    teacher_samples: Tensor
    truth_samples: Tensor


@one_cpu_thread()
def run_demo(
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-4,
    alpha: float = 0.6,
    t_max: float = 0.5,
    sigma_init: float = SIGMA_INIT,
    ema_fraction: float = 0.05,
    fit_steps: int = 3000,
    hidden: int = 128,
    seed: int = 0,
    teacher: GaussianMixture | None = None,
    data: GaussianMixture | None = None,
    truth: GaussianMixture | None = None,
    adversarial_scale: float | None = None,
    start_nimg: int = 0,
    init: nn.Module | None = None,
    device: torch.device | str = "cpu",
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    progress: bool = False,
) -> DemoResult:
    """Distil ``teacher`` (default: an 8-mode ring) with SiD, or SiDA when ``data`` is given.

    Both trainable roles start as copies of ``init``, a network fitted to the analytic teacher
    (`fit_toy_network`), as SiD assumes.

    Args:
        steps: Iterations (each ``batch_size`` points).
        batch_size: Points per iteration.
        lr: Adam learning rate of both networks.
        alpha: SiD's alpha (0.6 measured best here; the paper's 1.2 and 1.0 leave more mass between modes).
        t_max: Largest SiD noise index as a fraction (0.5 keeps the generator's noise levels below about 2.5).
        sigma_init: The generator's input noise level.
        ema_fraction: EMA half-life as a fraction of the run.
        fit_steps: Steps of the fit that makes ``init`` (ignored when ``init`` is given).
        hidden: Width of the MLPs.
        seed: Seed of the fit, the loop and the figures.
        teacher: The analytic teacher; an 8-Gaussian ring by default.
        data: A mixture to draw real samples from: turns on SiDA's adversarial loss.
        truth: The mixture the figures compare with (default: ``data``, else ``teacher``).
        adversarial_scale: SiDA's generator scale (the paper's 0.01 when ``None``; see
            ``BIASED_TEACHER_ADVERSARIAL_SCALE`` for a teacher far from the data).
        start_nimg: Images before the adversarial term joins the generator loss.
        init: A network to start both roles from (fitted here when ``None``).
        device: Where the networks train (the figures are always computed on the CPU, in float32).
        precision: Network compute precision of the loop (see [`DistillConfig`][scoredistill.DistillConfig]).
        progress: Show a progress bar.
    """
    mixture = teacher if teacher is not None else GaussianMixture.ring(8)
    truth = truth if truth is not None else (data if data is not None else mixture)
    t0, c0 = time.perf_counter(), time.process_time()
    if init is None:
        init = fit_toy_network(mixture, hidden=hidden, steps=fit_steps, seed=seed, device=device)
    start = Teacher(init.to(device))
    t_net = Teacher(mixture.to(device))
    G = OneStepGenerator.from_teacher(start, sigma_init=sigma_init)
    fake = FakeScore.from_teacher(start)
    losses: list = [SiDLoss(alpha=alpha, t_max=t_max), DSMLoss()]
    stream = None
    if data is not None:
        scale = 0.01 if adversarial_scale is None else adversarial_scale
        losses.append(AdversarialEncoderLoss(generator_scale=scale, generator_start_nimg=start_nimg))
        source = copy.deepcopy(data).cpu()  # a CPU copy: the teacher may be the same object, moved to ``device``
        stream = source.batches(batch_size, rng=torch.Generator().manual_seed(seed + 2))
    cfg = DistillConfig(
        batch_size=batch_size,
        total_nimg=steps * batch_size,
        lr_generator=lr,
        lr_fake_score=lr,
        ema_halflife_nimg=steps * batch_size * ema_fraction,
        seed=seed,
        precision=precision,
    )
    distiller = Distiller(t_net, G, fake, losses, cfg, data=stream)
    distiller.run(log_every_nimg=cfg.total_nimg, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    rng = torch.Generator().manual_seed(seed + 1)
    t_net, student_net, truth = t_net.cpu(), distiller.ema.module.cpu(), truth.cpu()
    mixture.cpu()
    with torch.no_grad():
        reference = truth.sample(N_EVAL, rng=rng)
        truth_x = truth.sample(N_EVAL, rng=rng)
        student = student_net.sample(N_EVAL, rng=rng)
        teacher_x = edm_sample(t_net, torch.randn(N_EVAL, *mixture.sample_shape, generator=rng), steps=32)
    return DemoResult(
        truth=sample_figures(truth_x, truth, reference),
        teacher=sample_figures(teacher_x, truth, reference),
        student=sample_figures(student, truth, reference),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        samples=student,
        teacher_samples=teacher_x,
        truth_samples=truth_x,
    )


@dataclass
class DemoReport:
    """The demo's table: a true draw, the teacher and the students (each a
    [`SampleFigures`][scoredistill.demo.run.SampleFigures])."""

    rows: dict[str, SampleFigures]
    samples: dict[str, Tensor]  # "truth", and the panels of the picture: "teacher", "SiD", "SiDA"
    truth_weights: list[float]  # the true mixture's mode masses
    teacher_weights: list[float]  # the teacher's mode masses
    seconds: float
    cpu_seconds: float
    students: list[str] = field(default_factory=list)  # names of the student rows

    def table(self) -> str:
        """A Markdown table of every row's figures."""
        lines = [
            "| samples | within 3 std of a mode | MMD² | energy distance | L1 of mode masses to the truth |",
            "|---|---|---|---|---|",
        ]
        for name, f in self.rows.items():
            lines.append(
                f"| {name} | {f.near_mode:.3f} | {f.mmd2:.4f} | {f.energy:.4f} | {f.mass_l1(self.truth_weights):.3f} |"
            )
        return "\n".join(lines)

    def failures(self) -> dict[str, list[str]]:
        """[`demo_failures`][scoredistill.demo.run.demo_failures] of each student row that fails."""
        return {name: out for name in self.students if (out := demo_failures(self.rows[name]))}


@one_cpu_thread()
def run_demo_report(
    *, sida: bool = False, biased_teacher: bool = False, seed: int = 0, progress: bool = False, **kwargs: object
) -> DemoReport:
    """The `scoredistill demo` run: a SiD student and, with ``sida`` (or ``biased_teacher``), a SiDA student.

    With ``biased_teacher`` the teacher's modes are weighted ``BIASED_TEACHER_WEIGHTS`` (two modes 3x as heavy)
    while the real data SiDA sees come from the true, uniform ring; SiDA runs at
    ``BIASED_TEACHER_ADVERSARIAL_SCALE``. Both students start from one fitted network.

    Args:
        sida: Also train a SiDA student on real data from the true mixture.
        biased_teacher: Bias the teacher's mode masses (implies ``sida``).
        seed: Seed of everything.
        progress: Show progress bars.
        **kwargs: Passed to [`run_demo`][scoredistill.demo.run.run_demo] (``steps``, ``lr``, ``alpha``, ...).
    """
    truth = GaussianMixture.ring(8)
    teacher = GaussianMixture.ring(8, weights=torch.tensor(BIASED_TEACHER_WEIGHTS)) if biased_teacher else truth
    sida = sida or biased_teacher
    scale = kwargs.pop("adversarial_scale", None)
    t0, c0 = time.perf_counter(), time.process_time()
    device = kwargs.get("device", "cpu")
    init = fit_toy_network(
        teacher,
        hidden=int(kwargs.pop("hidden", 128)),  # type: ignore[call-overload]
        steps=int(kwargs.pop("fit_steps", 3000)),  # type: ignore[call-overload]
        seed=seed,
        device=device,  # type: ignore[arg-type]
    )
    common = {"teacher": teacher, "truth": truth, "init": init, "seed": seed, "progress": progress, **kwargs}
    sid = run_demo(**common)  # type: ignore[arg-type]
    rows = {
        "a second draw of the true mixture": sid.truth,
        "teacher, 32-step Heun (63 NFE)" + (", biased" if biased_teacher else ""): sid.teacher,
        "SiD student, 1 step (EMA)": sid.student,
    }
    samples = {"truth": sid.truth_samples, "teacher": sid.teacher_samples, "SiD": sid.samples}
    students = ["SiD student, 1 step (EMA)"]
    if sida:
        if scale is None:
            scale = BIASED_TEACHER_ADVERSARIAL_SCALE if biased_teacher else 0.01
        sida_run = run_demo(**common, data=truth, adversarial_scale=scale)  # type: ignore[arg-type]
        name = f"SiDA student, 1 step (EMA), adversarial scale {scale:g}"
        rows[name], samples["SiDA"] = sida_run.student, sida_run.samples
        students.append(name)
    return DemoReport(
        rows=rows,
        samples=samples,
        truth_weights=truth.weights.tolist(),
        teacher_weights=teacher.weights.tolist(),
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        students=students,
    )


def _scatter(points: list[tuple[Tensor, tuple[int, int, int]]], size: int, extent: float) -> np.ndarray:
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    for pts, colour in points:
        ij = ((pts.detach().cpu().numpy() / extent + 1) / 2 * (size - 1)).round().astype(int)
        ok = (ij >= 1).all(1) & (ij < size - 1).all(1)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                img[size - 1 - (ij[ok, 1] + dj), ij[ok, 0] + di] = colour
    return img


def write_scatter_png(
    path: str | Path, points: list[tuple[Tensor, tuple[int, int, int]]], *, size: int = 512, extent: float = 1.6
) -> Path:
    """Rasterise 2-D point sets (each with an RGB colour) into a PNG."""
    return write_png(path, _scatter(points, size, extent))


def write_panels_png(
    path: str | Path, panels: list[list[tuple[Tensor, tuple[int, int, int]]]], *, size: int = 256, extent: float = 1.6
) -> Path:
    """Several scatter panels side by side, left to right, separated by a grey bar, in one PNG."""
    bar = np.full((size, 4, 3), 120, dtype=np.uint8)
    tiles = []
    for i, points in enumerate(panels):
        tiles += ([bar] if i else []) + [_scatter(points, size, extent)]
    return write_png(path, np.concatenate(tiles, axis=1))
