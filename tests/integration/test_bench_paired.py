"""benchmarks/bench_paired.py compares equal work: its paired layers compute the two networks' layers exactly."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_paired", REPO_ROOT / "benchmarks" / "bench_paired.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["conv", "norm"])
def test_paired_layer_is_the_two_layers(bench, kind):
    # 64 channels so that the norm's 32 groups per network hold two channels each
    assert bench.check(kind, (2, 64, 6, 5), "cpu", torch.float32, tol=1e-5) <= 1e-5
    steps = bench.make(kind, (2, 64, 6, 5), "cpu", torch.float32)
    assert set(steps) == {"single", "paired"}  # the side-stream setting needs CUDA


def test_the_paired_norm_needs_twice_the_groups(bench):
    # With one network's group count over both networks' channels, the statistics would mix channels of both.
    x = torch.randn(2, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    weight, bias = torch.ones(128), torch.zeros(128)
    two = torch.cat([F.group_norm(x[:, :64], 32), F.group_norm(x[:, 64:], 32)], dim=1)
    assert torch.allclose(F.silu(two), bench._norm(x, 64, weight, bias), atol=1e-6)
    x[:, 64:] *= 10  # the second network's channels at another scale
    two = torch.cat([F.group_norm(x[:, :64], 32), F.group_norm(x[:, 64:], 32)], dim=1)
    assert not torch.allclose(F.silu(two), bench._norm(x, 16, weight, bias), atol=1e-3)


def test_check_rejects_a_paired_layer_that_differs(bench, monkeypatch):
    monkeypatch.setattr(bench, "GROUPS", 1)  # the two-network layers then use 1 group, the paired one 2: still equal
    bench.check("norm", (2, 8, 3, 3), "cpu", torch.float32, tol=1e-5)
    real = bench._norm
    monkeypatch.setattr(bench, "_norm", lambda x, groups, w, b: real(x, max(groups // 2, 1), w, b))  # paired: 1 group
    with pytest.raises(AssertionError, match="differs"):
        bench.check("norm", (2, 8, 3, 3), "cpu", torch.float32, tol=1e-5)
