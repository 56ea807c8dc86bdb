"""Loss plug-ins: the protocol contract, Evaluation memoisation, and an outside method built on the public API."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_image_roles
from scoredistill import (
    AdversarialEncoderLoss,
    DistillConfig,
    Distiller,
    DistillLoss,
    DSMLoss,
    Evaluation,
    LossModule,
    LossOutput,
    Noised,
    SiDLoss,
)
from scoredistill.losses import functional as F


def _evaluation(phase: str, *, with_real: bool = True, seed: int = 0) -> Evaluation:
    teacher, G, fake = tiny_image_roles(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x_g = G.sample(4, rng=g)
    if phase == "fake_score":
        x_g = x_g.detach()
    fake_noised = Noised(x_g, torch.randn(x_g.shape, generator=g), torch.rand(4, generator=g) + 0.05)
    real = fake_noised.with_x0(torch.randn(x_g.shape, generator=g).clamp(-1, 1)) if with_real else None
    if phase == "generator":
        fake.eval().requires_grad_(False)
        return Evaluation(fake_noised, fake_score=fake, teacher=teacher)
    return Evaluation(fake_noised, fake_score=fake, real=real)


class DistillLossContract:
    """Checks every plug-in must pass (diffusers-style tester mixin)."""

    loss: DistillLoss
    phases: tuple[str, ...]

    def test_is_a_distill_loss(self):
        assert isinstance(self.loss, DistillLoss)
        assert isinstance(self.loss.name, str) and self.loss.name

    @pytest.mark.parametrize("phase", ["generator", "fake_score"])
    def test_output_contract(self, phase):
        ev = _evaluation(phase)
        out = getattr(self.loss, f"{phase}_loss")(ev)
        if phase not in self.phases:
            assert out is None
            return
        assert isinstance(out, LossOutput)
        assert out.loss.shape == (4,) and out.loss.dtype == torch.float32
        assert torch.isfinite(out.loss).all()
        for key, value in out.logs.items():
            assert value.ndim == 0 and not value.requires_grad, key
        assert out.loss.requires_grad


class TestSiDLoss(DistillLossContract):
    loss = SiDLoss()
    phases = ("generator",)

    def test_matches_functional_with_scale(self):
        ev = _evaluation("generator")
        out = SiDLoss(alpha=1.2, scale=100.0).generator_loss(ev)
        expected = 100 * F.sid_generator_loss(ev.fake.x0, ev.d_real, ev.d_fake, alpha=1.2)
        torch.testing.assert_close(out.loss, expected)
        assert set(out.logs) == {"weight_mean", "score_gap", "nonfinite_frac"}

    def test_declares_its_sigma_sampler(self):
        assert SiDLoss(t_max=0.5).generator_sigma.t_max == 0.5 and SiDLoss().fake_score_sigma is None

    def test_validates(self):
        with pytest.raises(ValueError):
            SiDLoss(alpha=0.0)
        with pytest.raises(ValueError):
            SiDLoss(t_max=2.0)


class TestDSMLoss(DistillLossContract):
    loss = DSMLoss()
    phases = ("fake_score",)

    def test_matches_functional(self):
        ev = _evaluation("fake_score")
        torch.testing.assert_close(DSMLoss().fake_score_loss(ev).loss, F.dsm_loss(ev.d_fake, ev.fake.x0, ev.fake.sigma))


class TestAdversarialEncoderLoss(DistillLossContract):
    loss = AdversarialEncoderLoss()
    phases = ("generator", "fake_score")

    def test_generator_term_by_hand(self):
        ev = _evaluation("generator")
        out = AdversarialEncoderLoss(generator_scale=0.01).generator_loss(ev)
        w = F.l1_weight(ev.fake.x0, ev.d_real)
        l_adv = torch.nn.functional.softplus(-ev.logits_fake.clamp(-10, 10)).mean()
        torch.testing.assert_close(out.loss, 0.01 * 64 * w * l_adv)

    def test_discriminator_term_by_hand(self):
        ev = _evaluation("fake_score")
        out = AdversarialEncoderLoss().fake_score_loss(ev)
        sp = torch.nn.functional.softplus
        l_d = 0.5 * (sp(-ev.logits_real).mean() + sp(ev.logits_fake).mean())
        torch.testing.assert_close(out.loss, F.dsm_weight(ev.fake.sigma) * l_d)
        assert {"d_acc_real", "d_acc_fake"} <= set(out.logs)

    def test_needs_real_data(self):
        with pytest.raises(ValueError, match="real images"):
            AdversarialEncoderLoss().fake_score_loss(_evaluation("fake_score", with_real=False))


def test_evaluation_runs_each_network_once():
    teacher, G, fake = tiny_image_roles()
    calls = {"teacher": 0, "fake": 0, "enc": 0}
    t_fwd, f_score, f_logits = teacher.forward, fake.score, fake.logits

    def count(key, fn):
        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)

        return wrapped

    teacher.forward, fake.score, fake.logits = count("teacher", t_fwd), count("fake", f_score), count("enc", f_logits)
    x_g = G.sample(4, rng=torch.Generator().manual_seed(0))
    noised = Noised(x_g, torch.randn_like(x_g), torch.ones(4))
    ev = Evaluation(noised, fake_score=fake, teacher=teacher)
    for loss in (SiDLoss(), AdversarialEncoderLoss()):
        loss.generator_loss(ev)
    assert calls == {"teacher": 1, "fake": 1, "enc": 0}
    ev = Evaluation(noised.with_x0(x_g.detach()), fake_score=fake, real=noised.with_x0(torch.zeros_like(x_g)))
    for loss in (DSMLoss(), AdversarialEncoderLoss()):
        loss.fake_score_loss(ev)
    assert calls == {"teacher": 1, "fake": 2, "enc": 1}


def test_evaluation_with_a_shared_encoder_pass_runs_the_fake_score_once():
    """``share_encoder``: the fake-score phase's two passes (the fakes in full, the real images' encoder) become one
    ``score_and_logits`` call whichever term asks first; real images noised otherwise than the fakes are refused."""
    _, G, fake = tiny_image_roles()
    calls = []
    shared = fake.score_and_logits
    fake.score = fake.logits = lambda *a, **k: pytest.fail("a separate pass ran")
    fake.score_and_logits = lambda *a, **k: calls.append(1) or shared(*a, **k)
    x_g = G.sample(4, rng=torch.Generator().manual_seed(0)).detach()
    noised = Noised(x_g, torch.randn_like(x_g), torch.ones(4))
    for first in ("logits_real", "fake_out"):
        calls.clear()
        ev = Evaluation(noised, fake_score=fake, real=noised.with_x0(torch.zeros_like(x_g)), share_encoder=True)
        getattr(ev, first)
        for loss in (DSMLoss(), AdversarialEncoderLoss()):
            assert torch.isfinite(loss.fake_score_loss(ev).loss).all()
        assert calls == [1]
    other = Noised(torch.zeros_like(x_g), noised.noise, torch.ones(4) * 2)
    with pytest.raises(ValueError, match="the fakes' sigma and labels"):
        Evaluation(noised, fake_score=fake, real=other, share_encoder=True)


# -- the protocol is open: Diff-Instruct / DMD's distribution-matching gradient with the public API ---------


class DMDLoss(LossModule):
    """DMD (Yin et al. 2024): grad_x_g = w (f_psi - f_phi), written as a surrogate with stop-gradient scores."""

    name = "dmd"

    def __init__(self, t_max: float = 0.8):
        super().__init__()
        from scoredistill import KarrasUniform

        self.generator_sigma = KarrasUniform(t_max=t_max)

    def generator_loss(self, ev: Evaluation) -> LossOutput:
        x_g = ev.fake.x0
        with torch.no_grad():
            w = F.l1_weight(x_g, ev.d_real)
            grad = (ev.d_fake - ev.d_real) * w.view(-1, *[1] * (x_g.ndim - 1))
        return LossOutput(0.5 * (x_g - (x_g - grad).detach()).square().flatten(1).sum(1))


def test_third_method_plugs_in():
    loss = DMDLoss()
    assert isinstance(loss, DistillLoss)
    ev = _evaluation("generator")
    x_g = ev.fake.x0
    out = loss.generator_loss(ev)
    (g,) = torch.autograd.grad(out.loss.sum(), x_g)
    # The surrogate's gradient w.r.t. the samples is exactly the DMD direction.
    w = F.l1_weight(x_g, ev.d_real)
    torch.testing.assert_close(g, (ev.d_fake - ev.d_real).detach() * w.view(-1, 1, 1, 1))
    teacher, G, fake = tiny_image_roles()
    before = [p.clone() for p in G.parameters()]
    d = Distiller(teacher, G, fake, [DMDLoss(), DSMLoss()], DistillConfig(batch_size=4, total_nimg=8))
    logs = d.step()
    assert "dmd/generator_loss" in logs and "dsm/fake_score_loss" in logs
    assert any(not torch.equal(p, q) for p, q in zip(G.parameters(), before))
