"""End to end on the analytic teacher: mode coverage (SiD) and data correction (SiDA).

The student is a one-step MLP distilled from the exact denoiser of a ring of 8 Gaussians. About 110 s on
2 CPU cores (2026-12-07; the biased-teacher runs share one fitted starting network).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoredistill import GaussianMixture
from scoredistill.demo.run import fit_toy_network, one_cpu_thread, run_demo

STEPS, HIDDEN, LR = 800, 64, 5e-4


def test_sid_student_covers_every_mode():
    result = run_demo(steps=STEPS, hidden=HIDDEN, lr=LR)
    mass = np.array(result.student.mode_mass)
    assert np.abs(mass - 0.125).max() <= 0.05, mass  # the bound of tests/roles/test_demo_quality.py
    assert result.student.energy < 0.1


@pytest.fixture(scope="module")
def biased_runs():
    weights = torch.tensor([3.0, 1, 1, 1, 3, 1, 1, 1])
    teacher, truth = GaussianMixture.ring(8, weights=weights), GaussianMixture.ring(8)
    with one_cpu_thread():  # the network both runs would fit for themselves (seed 0), fitted once
        init = fit_toy_network(teacher, hidden=HIDDEN)
    sid = run_demo(steps=STEPS, hidden=HIDDEN, lr=LR, teacher=teacher, init=init)
    # The paper's generator scale (0.01) multiplies C*H*W * w * l_adv: C*H*W is 3072 on CIFAR-10 but 2 here,
    # which leaves the adversarial term ~1500x weaker relative to SiD than in the paper. Scale 1.0 restores a
    # comparable balance (measured: 0.01 leaves the student on the teacher's weights).
    sida = run_demo(steps=STEPS, hidden=HIDDEN, lr=LR, teacher=teacher, data=truth, adversarial_scale=1.0, init=init)
    return (weights / weights.sum()).numpy(), truth.weights.numpy(), sid, sida


def test_sid_student_follows_a_biased_teacher(biased_runs):
    teacher_w, data_w, sid, _ = biased_runs
    mass = np.array(sid.student.mode_mass)
    assert np.abs(mass - teacher_w).sum() < np.abs(mass - data_w).sum(), mass


def test_sida_student_moves_towards_the_data(biased_runs):
    teacher_w, data_w, sid, sida = biased_runs
    mass = np.array(sida.student.mode_mass)
    teacher_error = np.abs(teacher_w - data_w).sum()  # 0.5
    sida_error = np.abs(mass - data_w).sum()
    assert sida_error < 0.6 * teacher_error, mass
    assert sida_error < np.abs(np.array(sid.student.mode_mass) - data_w).sum()
