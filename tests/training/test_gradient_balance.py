"""The logged balance of the generator losses: ``Distiller.generator_gradient_norms`` and its records in ``run``."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import ResumableStream, tiny_image_roles
from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, SiDLoss


def _sida(*, scale: float = 0.01, weight: float = 1.0, adv_start: int = 0, batch: int = 4, **cfg) -> Distiller:
    teacher, G, fake = tiny_image_roles(seed=0)
    adversarial = AdversarialEncoderLoss(generator_scale=scale, generator_weight=weight, generator_start_nimg=adv_start)
    config = DistillConfig(batch_size=batch, **{"total_nimg": 10_000, **cfg})
    return Distiller(
        teacher, G, fake, [SiDLoss(alpha=1.0), DSMLoss(), adversarial], config, data=ResumableStream(batch, (1, 8, 8))
    )


def test_the_ratio_follows_the_adversarial_scale_and_weight():
    base = _sida().generator_gradient_norms()
    assert set(base) == {"sid/generator_grad_norm", "adv/generator_grad_norm", "adv/generator_grad_ratio"}
    assert base["sid/generator_grad_norm"] > 0 and base["adv/generator_grad_norm"] > 0
    assert base["adv/generator_grad_ratio"] == pytest.approx(
        base["adv/generator_grad_norm"] / base["sid/generator_grad_norm"], rel=1e-12
    )
    # The adversarial term is linear in its scale s: the same probe with 10 s has 10 times the adversarial norm.
    scaled = _sida(scale=0.1).generator_gradient_norms()
    assert scaled["sid/generator_grad_norm"] == pytest.approx(base["sid/generator_grad_norm"], rel=1e-6)
    assert scaled["adv/generator_grad_ratio"] == pytest.approx(10 * base["adv/generator_grad_ratio"], rel=1e-4)
    # Weights 1 and 3 (1/4 and 3/4 of the objective instead of 1/2 and 1/2) triple the ratio.
    weighted = _sida(weight=3.0).generator_gradient_norms()
    assert weighted["sid/generator_grad_norm"] == pytest.approx(base["sid/generator_grad_norm"] / 2, rel=1e-6)
    assert weighted["adv/generator_grad_ratio"] == pytest.approx(3 * base["adv/generator_grad_ratio"], rel=1e-4)


def test_the_probe_leaves_training_unchanged():
    probed, plain = _sida(), _sida()
    probed.step()
    plain.step()
    modes = (probed.generator.training, probed.fake_score.training)
    first = probed.generator_gradient_norms()
    assert first == probed.generator_gradient_norms()  # seeded by (seed, step): the same probe twice
    assert all(p.grad is None for p in probed.g_params + probed.f_params)
    assert (probed.generator.training, probed.fake_score.training) == modes
    assert all(p.requires_grad for p in probed.fake_score.parameters())
    probed.step()
    plain.step()
    for a, b in zip(probed.generator.parameters(), plain.generator.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(probed.fake_score.parameters(), plain.fake_score.parameters()):
        assert torch.equal(a, b)
    assert probed.generator_gradient_norms() != first  # a new step, new networks and a new probe


def test_run_logs_the_ratio_once_two_generator_losses_are_active():
    d = _sida(adv_start=16, total_nimg=32)
    records: list[dict[str, float]] = []
    d.run(log_every_nimg=8, progress=False, on_log=records.append)
    assert [r["nimg"] for r in records] == [8, 16, 24, 32]
    # The probe measures the regime of the steps that follow the record: from 16 images on, SiD + adversarial.
    assert "adv/generator_grad_ratio" not in records[0]
    assert all(math.isfinite(r["adv/generator_grad_ratio"]) and r["adv/generator_grad_ratio"] > 0 for r in records[1:])


def test_sid_alone_logs_no_ratio_and_spends_nothing(monkeypatch):
    teacher, G, fake = tiny_image_roles(seed=0)
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=4, total_nimg=8))
    monkeypatch.setattr(d, "_noised", lambda *a, **k: pytest.fail("the probe ran for SiD alone"))
    assert d.generator_gradient_norms() == {}
