"""Roles and preconditioning: the one denoiser contract, freezing, shapes and labels."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_image_roles
from scoredistill import FakeScore, GaussianMixture, OneStepGenerator, Precond, Teacher
from scoredistill.networks import MLP, TinyUNet
from scoredistill.schedules import SIGMA_INIT


def test_precond_tends_to_identity_as_sigma_vanishes():
    D = Precond(TinyUNet(img_channels=1, channels=8))
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(D(x, torch.full((3,), 1e-6)), x, atol=1e-5, rtol=1e-5)


def test_precond_returns_float32_under_bf16_autocast():
    D = Precond(TinyUNet(img_channels=1, channels=8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D.score(torch.randn(2, 1, 8, 8), torch.ones(2))
    assert out.denoised.dtype == torch.float32 and out.logits.dtype == torch.float32


def test_precond_label_validation():
    D = Precond(TinyUNet(img_channels=1, channels=8, label_dim=3), label_dim=3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="class-conditional"):
        D(x, 1.0)
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        D(x, 1.0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="indices"):
        D(x, 1.0, torch.tensor([0, 3]))
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    torch.testing.assert_close(D(x, 1.0, torch.tensor([0, 2])), D(x, 1.0, one_hot))
    with pytest.raises(ValueError, match="unconditional"):
        Precond(MLP(2))(torch.zeros(2, 2), 1.0, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sigma"):
        D(x, torch.ones(3), one_hot)


def test_teacher_is_frozen_and_stays_in_eval():
    teacher, _, _ = tiny_image_roles()
    teacher.train()
    assert not teacher.training and not teacher.denoiser.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    teacher(x, torch.ones(2)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients still flow through the input


def test_teacher_accepts_callables_and_infers_shape():
    mixture = GaussianMixture.ring(4)
    t = Teacher(mixture)
    assert t.sample_shape == (2,) and t.label_dim == 0
    with pytest.raises(TypeError):
        Teacher(3)  # type: ignore[arg-type]


def test_generator_maps_noise_at_sigma_init(rng):
    _, G, _ = tiny_image_roles()
    z = torch.randn(3, 1, 8, 8, generator=rng)
    expected = G.denoiser(2.5 * z, torch.full((3,), 2.5))
    torch.testing.assert_close(G(z), expected)
    assert G.sample(5, rng=torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)
    torch.testing.assert_close(
        G.sample(2, rng=torch.Generator().manual_seed(1)), G.sample(2, rng=torch.Generator().manual_seed(1))
    )
    with pytest.raises(ValueError, match="z must be"):
        G(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="sample_shape"):
        OneStepGenerator(Precond(TinyUNet()))  # a convolutional backbone does not say its resolution
    for bad in (0.0, -1.0, float("nan"), float("inf")):  # NaN once passed (`nan <= 0` is False)
        with pytest.raises(ValueError, match="sigma_init"):
            OneStepGenerator(Precond(MLP(2)), sample_shape=(2,), sigma_init=bad)
    assert OneStepGenerator(Precond(MLP(2)), sample_shape=(2,)).sigma_init == SIGMA_INIT == 2.5


def test_conditional_generator_draws_labels():
    _, G, _ = tiny_image_roles(label_dim=3)
    assert G.label_dim == 3
    assert G.sample(4, rng=torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)


def test_from_teacher_copies_weights_and_unfreezes():
    teacher, _, _ = tiny_image_roles()
    G = OneStepGenerator.from_teacher(teacher)
    f = FakeScore.from_teacher(teacher)
    for role in (G, f):
        assert all(p.requires_grad for p in role.parameters())
        for p, q in zip(role.denoiser.parameters(), teacher.denoiser.parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert G.sample_shape == (1, 8, 8)
    with pytest.raises(TypeError):
        OneStepGenerator.from_teacher(Teacher(lambda x, s, labels=None: x, sample_shape=(2,)))


def test_fake_score_one_pass_and_encoder_only():
    _, _, f = tiny_image_roles()
    x, sigma = torch.randn(3, 1, 8, 8), torch.rand(3) + 0.1
    out = f.score(x, sigma)
    assert out.logits.shape == (3, 1, 4, 4)
    torch.testing.assert_close(out.denoised, f(x, sigma))
    torch.testing.assert_close(f.logits(x, sigma), out.logits)
    plain = FakeScore(lambda_module := torch.nn.Identity())  # no encoder: no logits
    assert lambda_module is plain.denoiser and not plain.has_encoder
