"""The analytic teacher: its denoiser is the exact posterior mean."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill import GaussianMixture, Teacher, edm_sample
from scoredistill.demo.analytic import energy_distance


def test_denoiser_matches_numerical_posterior_mean_in_1d():
    gm = GaussianMixture(torch.tensor([[-1.0], [2.0]]), torch.tensor([0.3, 0.5]), torch.tensor([0.3, 0.7]))
    x0 = torch.linspace(-6, 8, 20001)[:, None]
    prior = sum(w * torch.exp(-0.5 * ((x0 - m) / s) ** 2) / s for m, s, w in zip(gm.means, gm.stds, gm.weights))
    for x, sigma in [(0.4, 0.7), (-2.0, 3.0), (1.5, 0.05)]:
        like = torch.exp(-0.5 * ((x - x0) / sigma) ** 2)
        expected = (x0 * prior * like).sum() / (prior * like).sum()
        got = gm(torch.tensor([[x]]), torch.tensor([sigma]))
        assert got.item() == pytest.approx(expected.item(), abs=1e-3)


def test_labels_restrict_to_their_components_and_sampling():
    gm = GaussianMixture.ring(4, conditional=True)
    x = torch.zeros(2, 2)
    labels = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1]])
    out = gm(x, torch.full((2,), 100.0), labels)  # data-free limit: the prior mean of the labelled component
    torch.testing.assert_close(out, gm.means[[1, 3]], atol=1e-3, rtol=0)
    samples = gm.sample(500, torch.full((500,), 2), rng=torch.Generator().manual_seed(0))
    assert gm.mode_mass(samples)[2] == 1.0
    assert gm.near_mode(samples) > 0.97


def test_ode_sampling_from_the_exact_denoiser_recovers_the_mixture():
    gm = GaussianMixture.ring(8, weights=torch.tensor([3.0, 1, 1, 1, 3, 1, 1, 1]))
    rng = torch.Generator().manual_seed(0)
    x = edm_sample(Teacher(gm), torch.randn(3000, 2, generator=rng), steps=24)
    torch.testing.assert_close(gm.mode_mass(x), gm.weights, atol=0.03, rtol=0)
    assert energy_distance(x, gm.sample(3000, rng=rng)) < 0.01
    assert gm.near_mode(x) > 0.95


def test_validation():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 0.1, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="x must be"):
        GaussianMixture.ring(4)(torch.zeros(3, 3), 1.0)
    assert math.isclose(float(GaussianMixture.ring(4).weights.sum()), 1.0)
