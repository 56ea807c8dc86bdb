"""benchmarks/bench_conv_fusion.py compares equal work: its convolution and its normalising prologue compute the
composition they are timed against.

The kernels run on the CPU through Triton's interpreter in a subprocess (running this file as a script executes those
cases), in float32: the interpreter's ``tl.dot`` multiplies bfloat16 operands as raw bits, so the bf16 parity is the
benchmark's own check on the GPU, before it times a case.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO_ROOT
from helpers.triton_interpreter import run_under_interpreter

SCRIPT = REPO_ROOT / "benchmarks" / "bench_conv_fusion.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_conv_fusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("triton")
    return load()


def run_interpreter_cases() -> None:
    bench = load()
    # (shape, (BLOCK_M, BLOCK_N, BLOCK_K)): row tiles across the map's borders and across samples (30 pixels a
    # sample, 16 rows a tile: the per-element scales and per-element atomics), tiles of one sample each (16 pixels,
    # 16 rows: the per-sample vectors and per-channel atomics), two K blocks per tap, a partial column block (96
    # channels, 64 a block), and 3 channels a group (the scale kernel's masked group lanes).
    cases = [
        ((2, 64, 5, 6), (16, 32, 32)),
        ((3, 64, 4, 4), (16, 64, 64)),
        ((1, 96, 7, 3), (16, 64, 32)),
        ((2, 64, 4, 4), (32, 64, 32)),
    ]
    for shape, config in cases:
        steps, _ = bench.make(shape, "cpu", torch.float32, config)
        # the settings through cuDNN, the library's CUDA norm kernel or the hardware tanh need CUDA
        assert set(steps) == {
            "conv3x3",
            "conv3x3, no bias",
            "norm + conv3x3",
            "stats + fused",
            "conv3x3 + norm",
            "conv3x3 with sums + apply",
            "dgrad conv3x3",
        }
        assert bench.check(shape, "cpu", torch.float32, tol=1e-5, config=config) <= 1e-5


@pytest.mark.timeout(300)
def test_convolution_and_prologue_match_the_composition_cpu():
    run_under_interpreter(__file__)


def test_tables_option_picks_what_is_measured(bench, monkeypatch):
    # Without CUDA main stops before measuring; the option is parsed (and checked) first.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--tables", "gemm", "--no-write"]) == 2
    with pytest.raises(SystemExit):
        bench.main(["--tables", "fusion"])
    assert set(bench.GEMM_KEYS) <= set(bench.REFERENCE) and bench.REFERENCE["dgrad conv3x3"] == "input gradient"


def test_packed_weight_rows_are_tap_major(bench):
    w = torch.randn(5, 4, 3, 3)
    packed = bench.pack_weight(w)
    assert packed.shape == (36, 5)
    for kh, kw, ci in [(0, 0, 0), (1, 2, 3), (2, 1, 1)]:  # row (kh * 3 + kw) * CI + ci holds w[:, ci, kh, kw]
        assert torch.equal(packed[(kh * 3 + kw) * 4 + ci], w[:, ci, kh, kw])


def test_check_rejects_a_step_that_differs(bench):
    steps, references = bench.make((1, 32, 3, 3), "cpu", torch.float32)
    x = torch.randn(1, 32, 3, 3)
    steps = {"conv3x3": lambda: references["bare"], "stats + fused": lambda: references["norm first"]}
    assert bench.check((1, 32, 3, 3), "cpu", torch.float32, 1e-6, made=(steps, references)) == 0.0
    # the fused step without the activation's zero padding: silu(shift) instead of 0 outside the map
    steps["stats + fused"] = lambda: references["norm first"] + F.pad(x[..., 1:2, 1:2], (1, 1, 1, 1))
    with pytest.raises(AssertionError, match="stats \\+ fused differs"):
        bench.check((1, 32, 3, 3), "cpu", torch.float32, 1e-6, made=(steps, references))
    # each step is held to its own composition: the norm after the convolution is not the norm before it
    steps = {"conv3x3 + norm": lambda: references["norm first"]}
    with pytest.raises(AssertionError, match="conv3x3 \\+ norm differs"):
        bench.check((1, 32, 3, 3), "cpu", torch.float32, 1e-2, made=(steps, references))


def test_rows_keep_each_settings_best_and_mark_a_failed_capture(bench, monkeypatch, tmp_path):
    # main() on stand-ins for the GPU parts: each setting's three rounds (seconds), one capture of conv3x3 failing
    rounds = {
        "cuDNN": [2e-4, 1e-4, 3e-4],
        "conv3x3": [1e-4, None, 2e-4],
        "norm + cuDNN": [4e-4, 3e-4, 5e-4],
        "norm + conv3x3": [5e-4, 6e-4, 4.5e-4],
        "stats + fused": [3.5e-4, 4e-4, 3.6e-4],
        "stats + fused, tanh": [2.4e-4, 2.7e-4, 2.5e-4],
        "cuDNN + norm": [2e-4, 2e-4, 2e-4],
        "conv3x3 + norm": [2.5e-4, 2.6e-4, 2.5e-4],
        "conv3x3 with sums + apply": [1.6e-4, 1.5e-4, 1.8e-4],
        "cuDNN, no bias": [1.2e-4, 1e-4, 1.1e-4],
        "conv3x3, no bias": [1.3e-4, 1.2e-4, 1.25e-4],
        "dgrad cuDNN": [3e-4, 2e-4, 2.5e-4],
        "dgrad conv3x3": [1.5e-4, 1.6e-4, 1.8e-4],
        "wgrad cuDNN": [2e-4, 2e-4, 2e-4],
    }
    assert set(rounds) == set(bench.REFERENCE)
    calls = {key: iter(ts) for key, ts in rounds.items()}
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "CASES", {"a case": (1, 64, 4, 4)})
    monkeypatch.setattr(bench, "check", lambda *args, **kwargs: 0.001)
    monkeypatch.setattr(bench, "make", lambda *args: ({key: key for key in rounds}, {}))  # a step is its key here
    monkeypatch.setattr(bench, "time_graph", lambda step, iters: next(calls[step]))
    tag = {"gpu": "a stand-in", "torch": "", "triton": "", "cuda": "", "date": ""}
    monkeypatch.setattr(sys.modules[bench.write_table.__module__], "env_tag", lambda: tag)  # no GPU to name
    out = tmp_path / "results.md"
    assert bench.main(["--rounds", "3", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| a case ")]
    # 1x64x4x4: 2 * 9 * 64 * 64 * 16 FLOP in 100 us is 0.0118 TFLOP/s; fused 350 / 300 and 350 / 450; tanh 240 / 300;
    # sums 150 / 200 and 150 / 250; conv3x3's forward failed once, 120 / 100 without a bias; dgrad 150 / 200; wgrad
    # 200 of 100 + 200 + 200 (each setting timed once, whichever tables it serves)
    assert rows == [
        "| a case | 1x64x4x4 | 100 | failed | 300 | 450 | 350 | 240 | 0.0118 | failed | 1.17 | 0.778 | 0.8 | 0.001 |",
        "| a case | 1x64x4x4 | 200 | 250 | 150 | 0.75 | 0.6 | 0.001 |",
        "| a case | 1x64x4x4 | 100 | failed | 100 | 120 | 200 | 150 | 200 | failed | 1.2 | 0.75 | 0.4 | 0.001 |",
    ]
    # one table alone: only its settings are timed
    calls.update({key: iter(ts) for key, ts in rounds.items() if key in bench.GEMM_KEYS})
    out.unlink()
    assert bench.main(["--rounds", "3", "--out", str(out), "--tables", "gemm"]) == 0
    assert [line for line in out.read_text().splitlines() if line.startswith("| a case ")] == rows[2:]


def test_the_autotuner_zeroes_the_sums_its_trials_add_into(bench, monkeypatch):
    # The autotuner times every configuration on the caller's tensors, so without a reset the epilogue's sums would
    # also hold its trial runs' atomics (on an H100 the epilogue variant then read 8e4 times off its reference). The
    # CPU interpreter cannot autotune, so the reset is checked here, and what it zeroes is never the input.
    sums = torch.ones(2, 1, 4)
    bench._conv3x3_tuned.pre_hook({"sums_ptr": sums}, reset_only=True)
    assert bench._conv3x3_tuned.reset_to_zero == ["sums_ptr"] and not sums.any()
    launched = []

    class Tuned:  # the tuned kernel's launch, recorded instead of run
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append(args)

    monkeypatch.setattr(bench, "_conv3x3_tuned", Tuned())
    x = torch.randn(1, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    y = bench.conv3x3(x, bench.pack_weight(torch.randn(64, 64, 3, 3)))
    names = ["x", "w", "bias", "scale", "shift", "y", "sums"]
    args = dict(zip(names, launched[0], strict=False))
    assert args["y"] is y and args["sums"] is y  # without sums, the output stands in: the kernel writes it whole
    sums = torch.zeros(2, 1, 64)
    bench.conv3x3(x, bench.pack_weight(torch.randn(64, 64, 3, 3)), sums=sums)
    assert dict(zip(names, launched[1], strict=False))["sums"] is sums


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"
    run_interpreter_cases()
    print("conv3x3 interpreter parity: ok")
