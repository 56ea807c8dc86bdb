"""Shared fixtures: seeded generators and tiny roles on the CPU."""

from __future__ import annotations

import pytest
import torch

from scoredistill import FakeScore, GaussianMixture, OneStepGenerator, Precond, Teacher
from scoredistill.networks import MLP, TinyUNet


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def ring() -> GaussianMixture:
    return GaussianMixture.ring(8)


def tiny_image_roles(label_dim: int = 0, seed: int = 0) -> tuple[Teacher, OneStepGenerator, FakeScore]:
    """An 8x8 TinyUNet teacher and copies of it as generator and fake score (the SiD initialisation)."""
    torch.manual_seed(seed)
    net = Precond(TinyUNet(img_channels=1, channels=8, label_dim=label_dim), label_dim=label_dim)
    teacher = Teacher(net, sample_shape=(1, 8, 8))
    return teacher, OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)


def tiny_vector_roles(dim: int = 2, seed: int = 0) -> tuple[Teacher, OneStepGenerator, FakeScore]:
    torch.manual_seed(seed)
    teacher = Teacher(GaussianMixture.ring(8))
    G = OneStepGenerator(Precond(MLP(dim, 32, depth=2)), sample_shape=(dim,))
    return teacher, G, FakeScore(Precond(MLP(dim, 32, depth=2)))
