"""The profile tables of benchmarks/bench_step.py, from stand-in profiler rows (the real ones need a GPU)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

from helpers import REPO_ROOT


def _bench_step():
    spec = importlib.util.spec_from_file_location("bench_step", REPO_ROOT / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(key: str, total: float, own: float = 0.0, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(key=key, device_time_total=total, self_device_time_total=own, count=count)


def test_phase_table_shares_the_kernels_device_time_among_the_phases():
    bench = _bench_step()
    events = [  # microseconds over 2 steps: phases hold the kernels launched inside them
        _row("scoredistill/data", 0.0),
        _row("scoredistill/fake_score_step", 6000.0),
        _row("scoredistill/generator_step", 3000.0),
        _row("scoredistill/ema", 500.0),
        _row("aten::convolution", 7000.0, 0.0),  # an operator: its time is its kernels'
        _row("sm90_xmma_fprop_implicit_gemm_bf16", 7000.0, 7000.0, 40),
        _row("triton_group_norm_fwd", 2500.0, 2500.0, 40),
        _row("multi_tensor_apply_kernel", 500.0, 500.0, 2),
        _row("cudaLaunchKernel", 0.0, 0.0, 80),
    ]
    lines = bench.phase_table(events, steps=2).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["fake_score_step"] == ["3.00", "60.0%"] and rows["generator_step"] == ["1.50", "30.0%"]
    assert rows["ema"] == ["0.25", "5.0%"] and rows["data"] == ["0.00", "0.0%"]
    assert rows["outside"][-2:] == ["0.25", "5.0%"] and rows["total"] == ["5.00"]
    families = bench.kernel_families(events, steps=2)
    assert "scoredistill/" not in families and "aten::" not in families
    assert families.splitlines()[-1].split()[-1] == "5.00"  # the same 10 ms of kernels over 2 steps


def test_kernel_families_give_the_rate_the_tensor_core_kernels_reach():
    bench = _bench_step()
    events = [  # microseconds over 2 steps
        _row("sm90_xmma_fprop_implicit_gemm_bf16", 6000.0, 6000.0, 40),
        _row("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 1000.0, 1000.0, 4),
        _row("_apply_kernel", 3000.0, 3000.0, 40),
    ]
    lines = bench.kernel_families(events, steps=2, flops_per_step=1.4e12, peak=800e12).splitlines()
    assert (
        lines[-1]
        == "GEMMs + attention: 1.40 TFLOP per step in 3.50 ms = 400 TFLOP/s (50% of the measured bf16 matmul rate)"
    )
    assert "TFLOP" not in bench.kernel_families(events, steps=2)  # no FLOP count: no rate
