"""The demo's student is sharp and right (figures that can fail), and SiDA corrects a biased teacher.

One seed runs in the default suite and in CI (about 100-120 s on one thread of a 2-core machine, 2026-12-07). The
three seeds and the biased-teacher comparison (about 5 minutes together) are marked slow and run only with
SCOREDISTILL_SLOW=1 (CI runs the README's command, without it).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from scoredistill import GaussianMixture
from scoredistill.demo.run import demo_failures, run_demo, run_demo_report, sample_figures

slow = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("SCOREDISTILL_SLOW"), reason="set SCOREDISTILL_SLOW=1 to run"),
]


def _check(result) -> None:
    assert not demo_failures(result.truth), result.truth
    assert not demo_failures(result.teacher), result.teacher
    assert not demo_failures(result.student), result.student
    # measured: at most 0.032 (seed 0), under 0.05 (seed 1) and 0.053 (seed 2) from 1/8
    assert max(abs(m - 0.125) for m in result.student.mode_mass) < 0.07, result.student.mode_mass


def test_demo_student_is_sharp_seed_0():
    _check(run_demo(seed=0))  # measured: 0.869 near a mode, MMD² 0.0031; on an AMD EPYC (AVX2) 0.849, 0.0034


@pytest.mark.parametrize("seed", [pytest.param(s, marks=slow) for s in (0, 1, 2)])
def test_demo_student_is_sharp_on_three_seeds(seed):
    # measured: 0.869, 0.867, 0.878 near a mode, MMD² 0.0031, 0.0041, 0.0056; on an AMD EPYC (AVX2) 0.849, 0.855,
    # 0.870 and 0.0034, 0.0055, 0.0051 (a CPU's float rounding takes the run down its own path)
    _check(run_demo(seed=seed))


def test_a_uniform_disc_fails_the_demos_checks():
    # Nearest-mode assignment splits a disc into eight equal wedges: mode masses alone cannot see diffuseness.
    mixture, rng = GaussianMixture.ring(8), torch.Generator().manual_seed(0)
    n = 4000
    radius = 1.05 * torch.rand(n, generator=rng).sqrt()
    angle = 2 * math.pi * torch.rand(n, generator=rng)
    disc = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    figures = sample_figures(disc, mixture, mixture.sample(n, rng=rng))
    assert figures.mass_l1(mixture.weights) < 0.1  # the masses look right...
    failures = demo_failures(figures)
    assert len(failures) == 2, failures  # ...but it is neither near the modes nor close in MMD²
    assert not demo_failures(sample_figures(mixture.sample(n, rng=rng), mixture, mixture.sample(n, rng=rng)))


@slow[0]
@slow[1]
def test_sida_corrects_a_biased_teacher_towards_the_data():
    report = run_demo_report(biased_teacher=True, seed=0)
    (sid_name, sida_name), truth = report.students, report.truth_weights
    teacher_l1 = sum(abs(a - b) for a, b in zip(report.teacher_weights, truth))  # 0.5
    sid, sida = report.rows[sid_name].mass_l1(truth), report.rows[sida_name].mass_l1(truth)
    # measured: SiD 0.362 (follows the teacher), SiDA 0.041 (follows the data); on an AMD EPYC (AVX2) 0.329, 0.097
    assert sid > 0.5 * teacher_l1, sid
    assert sida < 0.4 * sid and sida < 0.15, (sid, sida)
    assert report.rows[sida_name].near_mode > 0.8


def test_demo_command_prints_the_table_writes_panels_and_fails_below_the_bar(tmp_path, capsys):
    from scoredistill.cli import main

    # 20 steps cannot sharpen the student: the command must say so and exit with status 1.
    code = main(["demo", "--steps", "20", "--fit-steps", "20", "--sida", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED SiD student" in out and "| SiDA student" in out and "MMD²" in out
    header = (tmp_path / "demo_samples.png").read_bytes()[:24]  # PNG signature, then IHDR: width, height
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (height, width) == (256, 3 * 256 + 2 * 4)  # teacher, SiD, SiDA side by side
