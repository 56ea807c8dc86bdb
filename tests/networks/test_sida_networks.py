"""SiDA end to end with the real EDM networks: a tiny DDPM++ teacher, real CIFAR-10 images, augmentation."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_ZIP
from scoredistill import (
    AdversarialEncoderLoss,
    DistillConfig,
    Distiller,
    DSMLoss,
    FakeScore,
    OneStepGenerator,
    SiDLoss,
    Teacher,
)
from scoredistill.data import ImageZipDataset, check_compatible, real_batches
from scoredistill.data.augment import AugmentPipe
from scoredistill.networks import DhariwalUNetConfig, SongUNetConfig
from scoredistill.roles.precond import edm_precond

FIXTURE = TINY_ZIP


def _tiny_ddpmpp(label_dim: int) -> SongUNetConfig:
    return SongUNetConfig(
        img_resolution=32,
        img_channels=3,
        label_dim=label_dim,
        augment_dim=9,
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(16,),
        dropout=0.1,
    )


@pytest.mark.parametrize("label_dim", [0, 10])
def test_sida_iterations_with_ddpmpp(label_dim, tmp_path):
    pytest.importorskip("PIL")
    torch.manual_seed(0)
    teacher = Teacher(edm_precond(_tiny_ddpmpp(label_dim)))
    dataset = ImageZipDataset(FIXTURE, use_labels=label_dim > 0)
    check_compatible(dataset, resolution=32, channels=3, label_dim=label_dim)
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    assert G.sample_shape == (3, 32, 32) and fake.has_encoder
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=4)]
    config = DistillConfig.sida(batch_size=4, micro_batch=2, total_nimg=12, generator_start_nimg=4, seed=1)
    data = real_batches(dataset, 2, seed=0, label_dim=label_dim or None)
    d = Distiller(teacher, G, fake, losses, config, data=data, augment=AugmentPipe(p=0.12))
    g_before = [p.clone() for p in G.parameters()]
    t_before = [p.clone() for p in teacher.parameters()]
    history = []
    d.run(run_dir=tmp_path, log_every_nimg=4, progress=False, on_log=history.append)
    assert [h["nimg"] for h in history] == [4, 8, 12]
    assert all(torch.isfinite(torch.tensor(v)) for h in history for v in h.values())
    assert "adv/generator_loss" in history[-1] and "adv/d_acc_real" in history[-1]
    assert any(not torch.equal(p, q) for p, q in zip(G.parameters(), g_before))
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), t_before))
    assert (tmp_path / "training_state" / "generator_ema.safetensors").is_file()
    x = d.ema.module.sample(2, rng=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_sid_iteration_with_adm():
    torch.manual_seed(0)
    cfg = DhariwalUNetConfig(
        img_resolution=16,
        img_channels=3,
        label_dim=10,
        model_channels=64,
        channel_mult=(1, 1),
        num_blocks=1,
        attn_resolutions=(8,),
        dropout=0.0,
    )
    teacher = Teacher(edm_precond(cfg))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=2, total_nimg=4))
    logs = d.step()
    assert torch.isfinite(logs["sid/generator_loss"]) and torch.isfinite(logs["dsm/fake_score_loss"])
