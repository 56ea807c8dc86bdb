"""The profile tables of benchmarks/bench_step.py, from stand-in profiler rows (the real ones need a GPU)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from helpers import REPO_ROOT


def _bench_step():
    spec = importlib.util.spec_from_file_location("bench_step", REPO_ROOT / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(key: str, total: float, own: float = 0.0, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(key=key, device_time_total=total, self_device_time_total=own, count=count)


class _Raw:
    """A stand-in for a raw profiler event (``_KinetoEvent``): the accessors ``phase_table`` reads, in ns."""

    def __init__(self, name, start, end, *, device=False, annotation=False, corr=0, linked=0):
        from torch.autograd import DeviceType

        self._values = dict(name=name, start_ns=start, end_ns=end, duration_ns=end - start, correlation_id=corr)
        self._values |= dict(linked_correlation_id=linked, is_user_annotation=annotation)
        self._values["device_type"] = DeviceType.CUDA if device else DeviceType.CPU

    def __getattr__(self, name):
        return lambda: self._values[name]


def test_phase_table_gives_each_kernel_to_the_phase_its_launching_operator_ran_in():
    bench = _bench_step()
    ms = 1_000_000  # ns
    events = [  # two steps of host ranges; kernels run later on the device, as they do when the GPU is behind
        _Raw("scoredistill/fake_score_step", 0, 10 * ms, annotation=True, corr=1),
        _Raw("scoredistill/generator_step", 10 * ms, 20 * ms, annotation=True, corr=2),
        _Raw("scoredistill/ema", 20 * ms, 21 * ms, annotation=True, corr=3),
        _Raw("scoredistill/fake_score_step", 30 * ms, 40 * ms, annotation=True, corr=4),
        # the device-side span of a range (idle gaps included): not a kernel, and not counted
        _Raw("scoredistill/fake_score_step", 5 * ms, 25 * ms, device=True, annotation=True, linked=1),
        _Raw("aten::convolution", 2 * ms, 3 * ms, corr=10),
        _Raw("aten::convolution_backward", 15 * ms, 16 * ms, corr=11),  # from the autograd engine's thread
        _Raw("aten::_foreach_lerp_", 20 * ms, 21 * ms, corr=12),
        _Raw("aten::convolution", 31 * ms, 32 * ms, corr=13),
        _Raw("aten::add", 50 * ms, 51 * ms, corr=14),  # outside every phase
        _Raw("sm90_xmma_fprop", 18 * ms, 24 * ms, device=True, linked=10),  # runs during the next phase's range
        _Raw("sm90_xmma_dgrad", 24 * ms, 27 * ms, device=True, linked=11),
        _Raw("multi_tensor_apply_kernel", 27 * ms, 28 * ms, device=True, linked=12),
        _Raw("sm90_xmma_fprop", 40 * ms, 46 * ms, device=True, linked=13),
        _Raw("elementwise_kernel", 51 * ms, 53 * ms, device=True, linked=14),
        _Raw("orphan_kernel", 60 * ms, 62 * ms, device=True, linked=99),  # no operator recorded: outside
    ]
    lines = bench.phase_table(events, steps=2).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["fake_score_step"] == ["6.00", "60.0%"] and rows["generator_step"] == ["1.50", "15.0%"]
    assert rows["ema"] == ["0.50", "5.0%"] and rows["data"] == ["0.00", "0.0%"]
    assert rows["outside"][-2:] == ["2.00", "20.0%"] and rows["total"] == ["10.00"]


def _event(name, start, end, parent=None, kernels=(), shapes=()):
    """A stand-in ``FunctionEvent``: what ``attribute_kernels`` reads (times in us)."""
    from torch.autograd.profiler_util import Kernel

    return SimpleNamespace(
        name=name,
        time_range=SimpleNamespace(start=start, end=end),
        cpu_parent=parent,
        kernels=[Kernel(k, 0, us) for k, us in kernels],
        input_shapes=list(shapes),
    )


def test_launch_table_gives_the_small_launches_by_operator_parent_and_phase():
    bench = _bench_step()
    fake = _event("scoredistill/fake_score_step", 0, 100)
    gen = _event("scoredistill/generator_step", 100, 200)
    add = _event("aten::add", 10, 11, fake, [("elementwise_kernel", 2.0)] * 3, [[32], [32]])
    conv = _event("aten::convolution", 20, 30, fake, [("sm90_xmma_fprop", 40.0)], [[32, 256, 32, 32]])
    # the backward, launched from the autograd engine's thread: no phase above it, its start inside the generator's
    node = _event("autograd::engine::evaluate_function: MulBackward0", 150, 152)
    mul = _event("aten::mul", 150, 151, node, [("elementwise_kernel", 3.0), ("elementwise_kernel", 1.0)], [[8]])
    outside = _event("aten::copy_", 300, 301, None, [("copy_kernel", 1.0)])
    rows = bench.attribute_kernels([fake, gen, add, conv, node, mul, outside])
    assert rows[("elementwise_kernel", "aten::add", "[[32], [32]]", "scoredistill/fake_score_step", "fake_score_step")]
    assert rows[("elementwise_kernel", "aten::mul", "[[8]]", "bwd MulBackward0", "generator_step")] == [4.0, 2]
    assert rows[("copy_kernel", "aten::copy_", "[]", "", "?")] == [1.0, 1]
    lines = bench.launch_table(rows, limit_us=6.0).splitlines()
    assert lines[0] == "all kernels: 7 launches, 0.05 ms; averaging under 6 us: 6 launches, 0.01 ms"
    table = [line.split(None, 2) for line in lines[2:]]
    assert table == [  # most launches first; the 40 us convolution left out
        ["3", "6", "aten::add | scoredistill/fake_score_step | fake_score_step"],
        ["2", "4", "aten::mul | bwd MulBackward0 | generator_step"],
        ["1", "1", "aten::copy_ |  | ?"],
    ]


def test_kernel_families_leave_out_operators_and_ranges():
    bench = _bench_step()
    events = [  # microseconds over 2 steps
        _row("scoredistill/fake_score_step", 6000.0),
        _row("aten::convolution", 7000.0, 0.0),  # an operator: its time is its kernels'
        _row("sm90_xmma_fprop_implicit_gemm_bf16", 7000.0, 7000.0, 40),
        _row("triton_group_norm_fwd", 2500.0, 2500.0, 40),
        _row("multi_tensor_apply_kernel", 500.0, 500.0, 2),
        _row("cudaLaunchKernel", 0.0, 0.0, 80),
    ]
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
    lines = bench.kernel_families(events, steps=2, rates=bench.Rates(flops_per_step=1.4e12, peak=800e12)).splitlines()
    assert (
        lines[-1]
        == "GEMMs + attention: 1.40 TFLOP per step in 3.50 ms = 400 TFLOP/s (50% of the measured bf16 matmul rate)"
    )
    assert "TFLOP" not in bench.kernel_families(events, steps=2)  # no FLOP count: no rate


def test_every_triton_kernel_of_the_library_has_a_family():
    # A kernel the table does not know lands in "other", which then hides it (the residual backward and the
    # concatenation's kernels did, until 2026-12-07); and each module launching through triton_utils.launch has its
    # launches' bytes counted.
    import re

    pytest.importorskip("triton")
    families = _families()
    kernel_dir = REPO_ROOT / "src" / "scoredistill" / "kernels"
    names, launching = [], []
    for path in sorted(kernel_dir.glob("*_triton.py")):
        text = path.read_text()
        names += re.findall(r"@triton\.jit\s*\ndef (_\w+_kernel)\(", text)
        module = importlib.import_module(f"scoredistill.kernels.{path.stem}")
        if hasattr(module, "launch") or hasattr(module, "_launch_any"):
            launching.append(path.stem)
    assert len(names) >= 18 and "_split_kernel" in names  # (resample_triton's two: _pool and _spread)
    assert [name for name in names if families.family(name) == "other"] == []
    assert families.family("_split_kernel") == families.CONCAT
    assert sorted(launching) == sorted(families.LAUNCHING_MODULES)


def _families():
    spec = importlib.util.spec_from_file_location("_families", REPO_ROOT / "benchmarks" / "_families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_traffic_counter_counts_the_bytes_each_family_touches():
    import torch

    fam = _families()
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    src, dst = torch.randn(64), torch.empty(64)
    with fam.TrafficCounter() as counter:
        y = conv(x)
        y.sum().backward()
        x.view(2, -1).t()  # views move nothing
        dst.copy_(src)  # reads 256 bytes, writes 256
    traffic = dict(counter.bytes)
    assert traffic[fam.GEMM] >= 2 * (x.numel() + y.numel()) * 4  # forward and backward each touch x and y at least
    assert traffic[fam.COPIES] == 512
    assert traffic[fam.REDUCTIONS] == y.numel() * 4 + 4  # y.sum(): reads y, writes one float
    launches = []
    count = counter._count_launch(lambda kernel, grid, dev, *args, **kw: launches.append(kernel))
    kernel = type("JIT", (), {"__name__": "_apply_kernel"})()
    a, b = torch.zeros(10), torch.zeros(5, dtype=torch.bfloat16)
    count(kernel, (1,), 0, a, a, b, 3, num_warps=4)  # a tensor given twice is touched once
    assert counter.bytes[fam.GROUP_NORM] == 40 + 10 and launches == [kernel]


def test_kernel_families_give_each_memory_bound_familys_bandwidth():
    bench = _bench_step()
    events = [  # microseconds over 2 steps
        _row("sm90_xmma_fprop_implicit_gemm_bf16", 6000.0, 6000.0, 40),
        _row("_apply_kernel", 3000.0, 3000.0, 40),
    ]
    traffic = {"fused group norm (Triton)": 3e9, "convolution / matmul GEMMs": 5e9}
    lines = bench.kernel_families(events, steps=2, rates=bench.Rates(traffic=traffic, copy_gbs=3000.0)).splitlines()
    assert lines[0].split()[-4:] == ["GB/s", "%", "of", "copy"]
    row = next(line for line in lines if line.startswith("fused group norm"))
    assert row.split()[-3:] == ["3.000", "2,000", "67%"]  # 3 GB in 1.5 ms: 2,000 GB/s of a 3,000 GB/s copy
    gemm = next(line for line in lines if line.startswith("convolution"))
    assert "GB" not in gemm and len(gemm.split()) == len(row.split()) - 3  # compute-bound: rated in FLOP/s


def test_every_setting_is_a_valid_config():
    """Each bench_step setting's overrides, less the bench's own switches, make a DistillConfig: a misspelt or
    contradictory field fails here on the CPU, not in a device call."""
    from scoredistill import DistillConfig

    bench = _bench_step()
    for name, (overrides, tf32) in bench.SETTINGS.items():
        fields = {k: v for k, v in overrides.items() if k not in bench.BENCH_SWITCHES}
        config = DistillConfig.sida(batch_size=32, generator_start_nimg=0, **fields)
        assert isinstance(tf32, bool) and config.batch_size == 32, name
    # The reference's setting and the "before" path run the teacher on the main stream; the default path leaves the
    # choice to DistillConfig (on, on one GPU without compile).
    assert bench.SETTINGS["baseline"][0]["overlap_teacher"] is False
    assert bench.SETTINGS["graphs-cl-noot"][0]["overlap_teacher"] is False
    assert "overlap_teacher" not in bench.SETTINGS["graphs-cl"][0]
    switches = {k for overrides, _ in bench.SETTINGS.values() for k in overrides if k in bench.BENCH_SWITCHES}
    assert switches == set(bench.BENCH_SWITCHES)  # each switch is used by some setting


def test_bench_switches_default_to_the_librarys_defaults():
    """bench_step sets the concatenation kernel's module switches for every setting: a setting that leaves them out
    must run what users run (the dense split on since 2026-12-07; graphs-cl-nodensecat is the path before it)."""
    concat_triton = pytest.importorskip("scoredistill.kernels.concat_triton")  # needs Triton, not a GPU
    bench = _bench_step()
    assert bench.BENCH_SWITCHES["fused_cat"] is concat_triton.FUSED_CAT is True
    assert bench.BENCH_SWITCHES["dense_split"] is concat_triton.DENSE_SPLIT is True
    assert bench.SETTINGS["graphs-cl-nodensecat"][0] == {**bench.GRAPHS_CL, "dense_split": False}
    # The networks' own launch choices are the default path's; graphs-cl-prev is the path before them.
    groupnorm_triton = pytest.importorskip("scoredistill.kernels.groupnorm_triton")
    assert bench.BENCH_SWITCHES["gn"] == groupnorm_triton._strategy == "auto"
    assert bench.BENCH_SWITCHES["split_qkv"] is None
    assert bench.SETTINGS["graphs-cl-prev"][0] == {**bench.GRAPHS_CL, "gn": "tiles", "split_qkv": False}
    # Frozen layers that save only their weights and precast_weights (None: on for one CUDA process) are the default
    # path's; graphs-cl-nofrozen is the path before both.
    from scoredistill.networks import layers

    assert bench.BENCH_SWITCHES["frozen_weight_only"] is layers.FROZEN_WEIGHT_ONLY is True
    assert "precast_weights" not in bench.GRAPHS_CL
    assert bench.SETTINGS["graphs-cl-nofrozen"][0] == {
        **bench.GRAPHS_CL,
        "frozen_weight_only": False,
        "precast_weights": False,
    }
    # The block input's two gradients summed in the norm's backward: the networks' default, off in one setting.
    assert bench.BENCH_SWITCHES["skip_grad_in_norm"] is None and layers.UNetBlock.skip_grad_in_norm is True
    assert bench.SETTINGS["graphs-cl-noskipgrad"][0] == {**bench.GRAPHS_CL, "skip_grad_in_norm": False}
    # The one-pass NaN/Inf rule: the library's default since the fourteenth round, off in graphs-cl-nosan1. The
    # batched block conditioning: the default since the fifteenth round, off in graphs-cl-nobcond.
    from scoredistill.training import distill

    assert bench.BENCH_SWITCHES["one_pass_sanitize"] is distill.ONE_PASS_SANITIZE is True
    assert bench.SETTINGS["graphs-cl-nosan1"][0] == {**bench.GRAPHS_CL, "one_pass_sanitize": False}
    assert bench.BENCH_SWITCHES["batch_conditioning"] is layers.EncoderDecoderUNet.batch_conditioning is True
    assert bench.SETTINGS["graphs-cl-nobcond"][0] == {**bench.GRAPHS_CL, "batch_conditioning": False}


def test_device_scripts_name_only_settings_that_bench_step_has():
    # A misspelt setting costs a device call: every setting a device script passes or defaults to must exist.
    import re

    settings = set(_bench_step().SETTINGS)
    passed = re.compile(r"--settings\s+([\w,-]+)")  # bench_step.py --settings a,b
    defaults = re.compile(r"\$\{(?:SETTINGS|C10\w*|IN64):-([\w,-]+)\}")  # SETTINGS=${SETTINGS:-a,b}
    named = []
    for script in sorted((REPO_ROOT / "benchmarks").glob("*.sh")):
        for line in script.read_text().splitlines():
            code = line.split("#", 1)[0]
            for value in passed.findall(code) + defaults.findall(code):
                named += [(script.name, name) for name in value.split(",")]
    assert {name for _, name in named} >= {"graphs-cl", "graphs-cl-noskipgrad", "baseline"}
    assert [(script, name) for script, name in named if name not in settings] == []
