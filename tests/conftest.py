"""Fixtures pytest injects by name; plain helpers live in ``tests/helpers``."""

from __future__ import annotations

import pytest
import torch

from scoredistill import GaussianMixture


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def ring() -> GaussianMixture:
    return GaussianMixture.ring(8)
