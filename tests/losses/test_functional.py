"""The pure maths: docs/maths.md hand checks and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scoredistill.losses import functional as F
from scoredistill.roles.precond import edm_scalings
from scoredistill.schedules import KarrasUniform, LogNormal, karras_sigmas, sid_sigma

LN2 = math.log(2.0)


# -- hand checks (docs/maths.md) ---------------------------------------------------------------------------


def test_sid_sigma_hand_values():
    u = torch.tensor([0.0, 0.5, 0.625, 1.0])  # t = u * 0.8 = 0, 0.4, 0.5, 0.8
    torch.testing.assert_close(sid_sigma(u), torch.tensor([0.002, 0.96542, 2.51522, 24.40834]), rtol=1e-4, atol=1e-6)
    assert sid_sigma(torch.tensor([1.0]), t_max=1.0).item() == pytest.approx(80.0, rel=1e-5)


def test_edm_scalings_at_sigma_init():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor(2.5))
    assert c_skip.item() == pytest.approx(0.03846154, rel=1e-6)
    assert c_out.item() == pytest.approx(0.49029034, rel=1e-6)
    assert c_in.item() == pytest.approx(0.39223227, rel=1e-6)
    assert c_noise.item() == pytest.approx(0.22907268, rel=1e-6)


def test_dsm_weight_hand_values():
    torch.testing.assert_close(F.dsm_weight(torch.tensor([1.0, 0.5])), torch.tensor([5.0, 8.0]))


def test_sid_loss_hand_values():
    x_g, d_real, d_fake = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, -0.5]]), torch.tensor([[0.7, -0.2]])
    assert F.l1_weight(x_g, d_real).item() == pytest.approx(2.0)
    assert F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2).item() == pytest.approx(-0.412, abs=1e-6)
    assert F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.0).item() == pytest.approx(-0.36, abs=1e-6)


def test_dsm_loss_hand_value():
    loss = F.dsm_loss(torch.tensor([[0.8, -0.9]]), torch.tensor([[1.0, -1.0]]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.25, abs=1e-6)


def test_adversarial_hand_values():
    zeros = torch.zeros(3, 1, 2, 2)
    d = F.adversarial_discriminator_loss(zeros, zeros, torch.ones(3))
    torch.testing.assert_close(d, torch.full((3,), 5 * LN2))
    assert pytest.approx(3.465736, abs=1e-6) == 5 * LN2
    g = F.adversarial_generator_loss(zeros, torch.full((3,), 2.0), numel=2)
    torch.testing.assert_close(g, torch.full((3,), 2.772589), rtol=1e-6, atol=1e-6)


def test_generator_logits_are_clamped():
    big = torch.full((2, 1, 2, 2), -50.0, requires_grad=True)
    loss = F.adversarial_generator_loss(big, torch.ones(2), numel=1)
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(10.0)), rel=1e-6)
    loss.sum().backward()
    assert torch.all(big.grad == 0)  # clamp cuts the gradient, as in the reference


def test_samplers_ranges_and_determinism():
    s = KarrasUniform().sample(10_000, rng=torch.Generator().manual_seed(0))
    assert s.min() >= 0.002 - 1e-6 and s.max() <= 24.40834 + 1e-3
    assert s.median().item() == pytest.approx(0.965, rel=0.05)
    a = LogNormal().sample(10_000, rng=torch.Generator().manual_seed(0))
    b = LogNormal().sample(10_000, rng=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert karras_sigmas(18)[0].item() == pytest.approx(80.0) and karras_sigmas(18)[-1].item() == pytest.approx(0.002)


@pytest.mark.parametrize("bad", [dict(t_max=0.0), dict(t_max=1.5), dict(sigma_min=0.0), dict(rho=-1.0)])
def test_karras_uniform_validates(bad):
    with pytest.raises(ValueError):
        KarrasUniform(**bad)


# -- properties ---------------------------------------------------------------------------------------------


def _triple(seed: int, shape=(4, 3, 5, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.5, 1.5))
def test_equal_scores_give_zero_loss_and_gradient(seed, alpha):
    x_g, d, _ = _triple(seed)
    x_g.requires_grad_(True)
    d_real = d.clone().requires_grad_(True)
    d_fake = d.clone().requires_grad_(True)
    loss = F.sid_generator_loss(x_g, d_real, d_fake, alpha=alpha)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(x_g.grad == 0)
    # d/d d_real and d/d d_fake cancel in the sum: the generator feels no force through x_t either.
    torch.testing.assert_close(d_real.grad + d_fake.grad, torch.zeros_like(d))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.floats(0.1, 10.0))
def test_sid_loss_scales_linearly(seed, c):
    x_g, d_real, d_fake = _triple(seed)
    base = F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2)
    scaled = F.sid_generator_loss(c * x_g, c * d_real, c * d_fake, alpha=1.2)
    torch.testing.assert_close(scaled, c * base, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_batch_permutation_permutes_losses(seed):
    x_g, d_real, d_fake = _triple(seed)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        F.sid_generator_loss(x_g[perm], d_real[perm], d_fake[perm], alpha=1.0),
        F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.0)[perm],
    )
    sigma = torch.rand(4) + 0.1
    torch.testing.assert_close(F.dsm_loss(d_fake[perm], x_g[perm], sigma[perm]), F.dsm_loss(d_fake, x_g, sigma)[perm])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_dsm_is_non_negative(seed):
    x0, d, _ = _triple(seed)
    assert torch.all(F.dsm_loss(d, x0, torch.rand(4) * 10 + 1e-3) >= 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_outputs_are_float32(dtype):
    x_g, d_real, d_fake = _triple(0, dtype=dtype)
    assert F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2).dtype == torch.float32
    assert F.dsm_loss(d_fake, x_g, torch.ones(4)).dtype == torch.float32
    logits = torch.zeros(4, 1, 2, 2, dtype=dtype)
    assert F.adversarial_discriminator_loss(logits, logits, torch.ones(4)).dtype == torch.float32
    assert F.adversarial_generator_loss(logits, torch.ones(4), numel=75).dtype == torch.float32
    ref = F.sid_generator_loss(*(t.float() for t in (x_g, d_real, d_fake)), alpha=1.2)
    torch.testing.assert_close(F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2), ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_sample_is_masked_and_others_unchanged(bad):
    x_g, d_real, d_fake = (t.requires_grad_(True) for t in _triple(3))
    clean = F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2).detach()
    d_fake_bad = d_fake.detach().clone()
    d_fake_bad[2, 0, 1, 1] = bad
    d_fake_bad.requires_grad_(True)
    loss = F.sid_generator_loss(x_g, d_real, d_fake_bad, alpha=1.2)
    assert torch.isfinite(loss).all()
    assert loss[2].item() == 0
    torch.testing.assert_close(loss[[0, 1, 3]], clean[[0, 1, 3]])
    loss.sum().backward()
    for t in (x_g, d_real, d_fake_bad):
        assert torch.isfinite(t.grad).all()
        assert torch.all(t.grad[2] == 0)
    assert F.finite_samples(x_g, d_fake_bad).tolist() == [True, True, False, True]


def test_nonfinite_masking_in_dsm_and_adversarial():
    x0, d, _ = _triple(5)
    d[1, 0, 0, 0] = float("nan")
    sigma = torch.ones(4)
    dsm = F.dsm_loss(d, x0, sigma)
    assert torch.isfinite(dsm).all() and dsm[1] == 0
    logits_r, logits_f = torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, 2, 2)
    logits_f[0, 0, 0, 0] = float("inf")
    disc = F.adversarial_discriminator_loss(logits_r, logits_f, sigma)
    assert disc[0] == 0 and torch.allclose(disc[1:], torch.full((3,), 5 * LN2))
    gen = F.adversarial_generator_loss(logits_f, torch.ones(4), numel=1)
    assert gen[0] == 0 and torch.allclose(gen[1:], torch.full((3,), LN2))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        F.sid_generator_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), alpha=1.0)
    with pytest.raises(ValueError, match="sigma"):
        F.dsm_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="weight"):
        F.adversarial_generator_loss(torch.zeros(2, 1, 2, 2), torch.zeros(3), numel=4)


def test_composite_terms_match_parts():
    x_g, d_real, d_fake = _triple(7)
    logits = torch.randn(4, 1, 2, 2)
    sid, w, adv = F.sid_generator_terms(x_g, d_real, d_fake, alpha=1.2, logits_fake=logits)
    torch.testing.assert_close(sid, F.sid_generator_loss(x_g, d_real, d_fake, alpha=1.2))
    torch.testing.assert_close(w, F.l1_weight(x_g, d_real))
    torch.testing.assert_close(adv, F.adversarial_generator_loss(logits, w, numel=75))
    sigma = torch.rand(4) + 0.1
    dsm, disc = F.fake_score_terms(d_fake, x_g, sigma, logits_real=logits, logits_fake=-logits)
    torch.testing.assert_close(dsm, F.dsm_loss(d_fake, x_g, sigma))
    torch.testing.assert_close(disc, F.adversarial_discriminator_loss(logits, -logits, sigma))
    with pytest.raises(ValueError, match="both"):
        F.fake_score_terms(d_fake, x_g, sigma, logits_real=logits)
