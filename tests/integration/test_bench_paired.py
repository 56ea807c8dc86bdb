"""benchmarks/bench_paired.py compares equal work: its paired layers compute the two networks' layers exactly."""

from __future__ import annotations

import importlib.util
import sys

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


def test_rows_keep_each_settings_best_and_mark_a_failed_capture(bench, monkeypatch, tmp_path):
    # main() on stand-ins for the GPU parts: the rounds' times of each setting in turn, one capture failing (None)
    times = iter([3e-4, 2e-4, 2.5e-4, 1e-4, None, 1e-4, 1.2e-4, 0.9e-4, 1.1e-4])  # single, streams, paired
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "CASES", {"a case": ("conv", (1, 2, 3, 3))})
    monkeypatch.setattr(bench, "check", lambda *args, **kwargs: 0.001)
    monkeypatch.setattr(bench, "make", lambda *args: {"single": None, "streams": None, "paired": None})
    monkeypatch.setattr(bench, "time_graph", lambda step, iters: next(times))
    tag = {"gpu": "a stand-in", "torch": "", "triton": "", "cuda": "", "date": ""}
    monkeypatch.setattr(sys.modules[bench.write_table.__module__], "env_tag", lambda: tag)  # no GPU to name
    out = tmp_path / "results.md"
    assert bench.main(["--rounds", "3", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| a case ")]
    assert rows == ["| a case | 1x2x3x3 | 200 | failed | 90 | 0.45 | failed | 0.001 |"]
