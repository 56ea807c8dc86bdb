"""One full SiDA iteration (fake score + discriminator, generator, EMA) with random weights: images/s per GPU.

Builds the published teacher architecture from a preset, copies it into the generator and the fake score,
feeds random "real" images already on the GPU (no augmentation, as in PERF.md's reference measurement), and
times ``Distiller.step()`` after warm-up. Each setting gets fresh networks. The first steps (compilation,
autotuning) are timed separately as warm-up.

    python benchmarks/bench_step.py --preset cifar10-32x32-uncond --batch 32 --settings baseline,bf16,fast

The path users run: ``--data`` reads real images (and class labels for conditional presets) from a dataset zip
through the library's loader (pinned memory, ``--workers`` prefetching processes), ``--augment`` turns on the
recipe's augmentation of the fake-score and discriminator inputs. Under ``torchrun --nproc_per_node=N`` each
process runs the per-GPU ``--batch`` and the table reports images/s of all GPUs together and per GPU.

    torchrun --nproc_per_node=2 benchmarks/bench_step.py --batch 32 --settings graphs-cl --data cifar10.zip \
        --augment 0.12
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _families import TENSOR_CORE_FAMILIES, family, traffic_per_step
from _results import write_table

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
from scoredistill.data import ImageZipDataset, real_batches
from scoredistill.data.augment import AugmentPipe
from scoredistill.networks import PRESETS, layers
from scoredistill.networks.layers import EncoderDecoderUNet, UNetBlock
from scoredistill.roles.precond import edm_precond
from scoredistill.training import distill
from scoredistill.training.fast import use_fused_norms

# The bench's own switches among a setting's overrides, with their values when a setting leaves them out (the rest
# of the overrides are DistillConfig fields).
BENCH_SWITCHES = {
    "fused_norms": True,  # False: native group norms, fused loss kernels
    "fold_biases": True,  # False: convolution biases added by the convolutions
    "gn": "auto",  # the fused group norms' launch strategy (set_strategy; "auto": each network's preference)
    "gn_one_pass_max_hw": 256,  # under "hybrid": the largest map (pixels) that takes the one-pass kernels
    "augment_conv": False,  # True: AugmentPipe pads and upsamples op by op
    "fused_bias_grad": True,  # fewer bias-gradient reductions (residual and group-norm backward)
    "fused_cat": True,  # the skip concatenation's Triton copy
    "dense_split": True,  # its backward writes two dense gradients (concat_triton.DENSE_SPLIT); False: two slices
    # the channels_last attention's q, k and v by three GEMMs (UNetBlock.split_qkv; None: each network's own, on in
    # DhariwalUNet)
    "split_qkv": None,
    "frozen_weight_only": True,  # False: frozen layers save their inputs as well (layers.FROZEN_WEIGHT_ONLY)
    # the block input's two gradients summed in the fused norm's backward (UNetBlock.skip_grad_in_norm; None: the
    # library's default)
    "skip_grad_in_norm": None,
    # the small gradients sanitised by one nan_to_num over their concatenation (training.distill.SMALL_GRAD; False:
    # one launch per gradient, as before)
    "batched_sanitize": True,
    # the NaN/Inf rule and the fake score's clipping in one Triton pass per gradient
    # (training.distill.ONE_PASS_SANITIZE, on by default since the fourteenth round; False: nan_to_num_, then a
    # multi-tensor clamp_min and clamp_max)
    "one_pass_sanitize": True,
    # the residual blocks' conditioning by one GEMM per encoder and decoder pass (EncoderDecoderUNet
    # .batch_conditioning, on by default since the fifteenth round; False: one affine layer per block)
    "batch_conditioning": True,
    # how many convolution algorithms cuDNN's benchmark mode times per shape (torch's default 10; 0: all). cuDNN's
    # choices are cached per process and shape, so a setting that changes it must run in a process of its own.
    "cudnn_benchmark_limit": 10,
}

# The fast path users run: bf16, the fused kernels, channels_last, whole-iteration CUDA graphs.
GRAPHS_CL = {"precision": "bf16", "use_kernels": True, "channels_last": True, "cuda_graphs": True}

# name -> (DistillConfig overrides and bench switches, allow TF32)
SETTINGS: dict[str, tuple[dict, bool]] = {
    # the reference's published setting (fp32, eager, one stream)
    "baseline": ({"precision": "fp32", "use_kernels": False, "overlap_teacher": False}, False),
    "tf32": ({"precision": "fp32", "use_kernels": False}, True),
    "bf16": ({"precision": "bf16", "use_kernels": True}, True),
    "bf16-cl": ({"precision": "bf16", "use_kernels": True, "channels_last": True}, True),
    "fast": ({"precision": "bf16", "use_kernels": True, "channels_last": True, "compile": "blocks"}, True),
    "fast-net": ({"precision": "bf16", "use_kernels": True, "channels_last": True, "compile": "network"}, True),
    "fast-net-nocl": ({"precision": "bf16", "use_kernels": True, "compile": "network"}, True),
    "graphs-tf32": ({"precision": "fp32", "use_kernels": True, "cuda_graphs": True}, True),
    "graphs-native-norms": (
        {"precision": "bf16", "use_kernels": True, "cuda_graphs": True, "fused_norms": False},
        True,
    ),
    "graphs": ({"precision": "bf16", "use_kernels": True, "cuda_graphs": True}, True),
    "graphs-cl": (GRAPHS_CL, True),
    # before each network chose its own: the tiled group norms and one qkv GEMM everywhere
    "graphs-cl-prev": ({**GRAPHS_CL, "gn": "tiles", "split_qkv": False}, True),
    # The graphs-cl variants: one switch each, against the default path.
    "graphs-cl-gn1": ({**GRAPHS_CL, "gn": "one_pass"}, True),  # the group norms' one-pass kernels (set_strategy)
    # the one-pass kernels on maps of at most 16x16 (or 8x8) pixels, the tiles on larger ones, in every network
    # (DDPM++ prefers it; graphs-cl-gntiles: the tiles everywhere)
    "graphs-cl-gnhyb": ({**GRAPHS_CL, "gn": "hybrid"}, True),
    "graphs-cl-gntiles": ({**GRAPHS_CL, "gn": "tiles"}, True),
    "graphs-cl-gnhyb64": ({**GRAPHS_CL, "gn": "hybrid", "gn_one_pass_max_hw": 64}, True),
    # before: the teacher after the fake score on one stream (DistillConfig.overlap_teacher off)
    "graphs-cl-noot": ({**GRAPHS_CL, "overlap_teacher": False}, True),
    # before: the residual backward's scale and bias sum, the norms' two affine sums apart
    "graphs-cl-nobgrad": ({**GRAPHS_CL, "fused_bias_grad": False}, True),
    # before: the decoders' skip concatenation by torch.cat (concat_triton.FUSED_CAT off)
    "graphs-cl-nocat": ({**GRAPHS_CL, "fused_cat": False}, True),
    # before: the concatenation's backward hands back two channel slices of dy (concat_triton.DENSE_SPLIT off)
    "graphs-cl-nodensecat": ({**GRAPHS_CL, "dense_split": False}, True),
    # q, k and v by three GEMMs, so that SDPA's backward needs no stack or layout copy, in every network (ADM's own
    # choice; graphs-cl-nosplitqkv: one GEMM everywhere)
    "graphs-cl-splitqkv": ({**GRAPHS_CL, "split_qkv": True}, True),
    "graphs-cl-nosplitqkv": ({**GRAPHS_CL, "split_qkv": False}, True),
    # candidate: SiDA's fake-score phase, one encoder pass over generator and real images
    "graphs-cl-shareenc": ({**GRAPHS_CL, "share_encoder_pass": True}, True),
    # the layers read bf16 copies of their weights cast once per update (DistillConfig.precast_weights: on by default
    # on one GPU since the tenth round; graphs-cl-noprecast: a cast per weight and use)
    "graphs-cl-precast": ({**GRAPHS_CL, "precast_weights": True}, True),
    "graphs-cl-noprecast": ({**GRAPHS_CL, "precast_weights": False}, True),
    # the augmentation's padding and upsampling as separate ops over the padded image
    "graphs-cl-convaug": ({**GRAPHS_CL, "augment_conv": True}, True),
    "graphs-cl-nofold": ({**GRAPHS_CL, "fold_biases": False}, True),
    # the default before the tenth round: the frozen networks' layers saved their inputs as well (the teacher and, in
    # the generator step, the fake score), and the layers cast their weights at every use
    "graphs-cl-nofrozen": ({**GRAPHS_CL, "frozen_weight_only": False, "precast_weights": False}, True),
    # the block input's two gradients summed by autograd, not in the norm's backward kernel
    "graphs-cl-noskipgrad": ({**GRAPHS_CL, "skip_grad_in_norm": False}, True),
    # before: the NaN / Inf rule applied to each small gradient (the norms' parameters) by a launch of its own
    "graphs-cl-nobatchsan": ({**GRAPHS_CL, "batched_sanitize": False}, True),
    # before the fourteenth round: the rule by nan_to_num_ and the clipping by two multi-tensor clamps, three passes
    # over the fake score's gradients under SiDA, where the default takes one Triton pass per gradient
    "graphs-cl-nosan1": ({**GRAPHS_CL, "one_pass_sanitize": False}, True),
    # before the fifteenth round: an affine layer per residual block for its conditioning (about 560 small launches
    # of a CIFAR-10 batch-32 iteration), where the default takes one GEMM per encoder and decoder pass
    "graphs-cl-nobcond": ({**GRAPHS_CL, "batch_conditioning": False}, True),
    # measured on an H100 in the tenth round and not adopted: cuDNN timing every algorithm (alone in its process)
    "graphs-cl-cudnnall": ({**GRAPHS_CL, "cudnn_benchmark_limit": 0}, True),
    "graphs-blocks": (
        {"precision": "bf16", "use_kernels": True, "channels_last": True, "compile": "blocks", "cuda_graphs": True},
        True,
    ),
    "graphs-blocks-nocl": ({"precision": "bf16", "use_kernels": True, "compile": "blocks", "cuda_graphs": True}, True),
    "graphs-net": ({"precision": "bf16", "use_kernels": True, "compile": "network", "cuda_graphs": True}, True),
    "fast-graphs": (
        {"precision": "bf16", "use_kernels": True, "compile": "network", "compile_mode": "reduce-overhead"},
        True,
    ),
}


def _real_stream(batch: int, shape: tuple[int, ...], label_dim: int, device: torch.device):
    g = torch.Generator(device).manual_seed(0)
    x = torch.rand(batch, *shape, generator=g, device=device) * 2 - 1
    labels = None
    if label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(batch, device=device) % label_dim, label_dim).float()
    while True:
        yield x, labels


def _teacher_net(preset: str) -> torch.nn.Module:
    """The preset's random network, or a saved teacher when ``--teacher`` names one (see main)."""
    if TEACHER_DIR is not None:
        from scoredistill import Precond
        from scoredistill.io.hub import from_pretrained

        return from_pretrained(TEACHER_DIR, expected_class=Precond)
    return edm_precond(preset)


TEACHER_DIR: str | None = None
_SMALL_GRAD = distill.SMALL_GRAD  # the library's threshold, restored by each setting that keeps the batched rule
DATA: str | None = None  # dataset zip: real images through the library's loader instead of a fixed GPU batch
WORKERS = 2  # loader processes with DATA
AUGMENT_P = 0.0  # AugmentPipe probability on the fake-score / discriminator inputs (the recipes' 0.12 for CIFAR-10)


def _data(batch: int, shape: tuple[int, ...], label_dim: int, device: torch.device):
    if DATA is None:
        return _real_stream(batch, shape, label_dim, device)
    dataset = ImageZipDataset(DATA, use_labels=label_dim > 0)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return real_batches(dataset, batch, seed=rank, device=device, label_dim=label_dim, num_workers=WORKERS)


def build(preset: str, batch: int, setting: str, device: torch.device) -> Distiller:
    overrides, tf32 = SETTINGS[setting]
    switch = {name: overrides.get(name, default) for name, default in BENCH_SWITCHES.items()}
    overrides = {k: v for k, v in overrides.items() if k not in BENCH_SWITCHES}
    if torch.cuda.is_available():  # for this setting's calls and captures
        from scoredistill.kernels import concat_triton, groupnorm_triton, residual_triton

        groupnorm_triton.set_strategy(switch["gn"])
        groupnorm_triton.ONE_PASS_MAX_HW = switch["gn_one_pass_max_hw"]
        concat_triton.FUSED_CAT, concat_triton.DENSE_SPLIT = switch["fused_cat"], switch["dense_split"]
        residual_triton.FUSED_BIAS_GRAD = groupnorm_triton.FUSED_AFFINE_GRAD_SUMS = switch["fused_bias_grad"]
    layers.FROZEN_WEIGHT_ONLY = switch["frozen_weight_only"]
    distill.SMALL_GRAD = _SMALL_GRAD if switch["batched_sanitize"] else 0
    distill.ONE_PASS_SANITIZE = switch["one_pass_sanitize"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True  # as in the reference implementation
    torch.backends.cudnn.benchmark_limit = switch["cudnn_benchmark_limit"]
    torch.manual_seed(0)
    teacher = Teacher(_teacher_net(preset).to(device))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=0)]
    config = DistillConfig.sida(batch_size=batch, generator_start_nimg=0, **overrides)
    data = _data(batch, G.sample_shape, G.label_dim, device)
    augment = AugmentPipe(p=AUGMENT_P) if AUGMENT_P > 0 else None
    if augment is not None:
        augment._upsample_by_matmul = not switch["augment_conv"]
    d = Distiller(teacher, G, fake, losses, config, data=data, augment=augment)
    if not switch["fused_norms"]:
        for role in (teacher, G, fake):
            use_fused_norms(role, False)
    for role in (teacher, G, fake):
        for m in role.modules():
            if isinstance(m, EncoderDecoderUNet):
                m.batch_conditioning = switch["batch_conditioning"]
            if isinstance(m, UNetBlock):
                m.fold_biases = switch["fold_biases"]
                if switch["split_qkv"] is not None:
                    m.split_qkv = switch["split_qkv"]
                if switch["skip_grad_in_norm"] is not None:
                    m.skip_grad_in_norm = switch["skip_grad_in_norm"]
    return d


def flops_per_image(preset: str, batch: int, device: torch.device) -> float:
    d = build(preset, batch, "baseline", device)
    d.step()
    with FlopCounterMode(display=False) as counter:
        d.step()
    return counter.get_total_flops() / batch


def matmul_peak(device: torch.device) -> float:
    """Dense bf16 matmul rate (FLOP/s) on 8192^3 products, this card, this run."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0)


def _kernels(events) -> list:
    """The profiler's kernel rows: device time of their own, not an operator, annotation or runtime call."""
    skip = ("aten::", "autograd::", "Optimizer.", "cuda", "Memcpy", "Memset", "scoredistill/")
    return [e for e in events if e.self_device_time_total > 0 and not e.key.startswith(skip)]


class Rates(NamedTuple):
    """What rates a profile's kernel families against the card: the step's FLOPs and the bytes each family touches
    per step (`_families.traffic_per_step`), the measured bf16 matmul rate (FLOP/s) and copy bandwidth (GB/s)."""

    flops_per_step: float = float("nan")
    peak: float = float("nan")
    traffic: dict[str, float] | None = None
    copy_gbs: float = float("nan")


NO_RATES = Rates()  # device time and launches only


def kernel_families(events, steps: int, rates: Rates = NO_RATES) -> str:
    """Device time per kernel family (`_families.FAMILIES`), per step and as a share of the total; with ``rates``,
    the rate the GEMM and attention kernels achieve on the step's FLOPs and each other family's bandwidth."""
    flops_per_step, peak, traffic, copy_gbs = rates
    totals: dict[str, list[float]] = {}
    grand = 0.0
    for e in _kernels(events):
        t = e.self_device_time_total
        acc = totals.setdefault(family(e.key), [0.0, 0])
        acc[0] += t
        acc[1] += e.count
        grand += t
    lines = [f"{'kernel family':<40} {'ms / step':>10} {'share':>7} {'launches / step':>16}"]
    if traffic is not None:
        lines[0] += f" {'GB / step':>10} {'GB/s':>8} {'% of copy':>10}"
    for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{name:<40} {t / 1e3 / steps:>10.2f} {100 * t / grand:>6.1f}% {n // steps:>16}")
        if traffic is not None and name not in TENSOR_CORE_FAMILIES and traffic.get(name, 0) > 0:
            gb, seconds = traffic[name] / 1e9, t / 1e6 / steps
            lines[-1] += f" {gb:>10.3f} {gb / seconds:>8,.0f} {100 * gb / seconds / copy_gbs:>9.0f}%"
    lines.append(f"{'total':<40} {grand / 1e3 / steps:>10.2f}")
    tensor_core_s = sum(totals.get(f, [0.0])[0] for f in TENSOR_CORE_FAMILIES) / 1e6 / steps
    if tensor_core_s > 0 and flops_per_step == flops_per_step:  # FlopCounterMode counts these kernels' FLOPs only
        rate = flops_per_step / tensor_core_s
        lines.append(
            f"GEMMs + attention: {flops_per_step / 1e12:.2f} TFLOP per step in {tensor_core_s * 1e3:.2f} ms = "
            f"{rate / 1e12:,.0f} TFLOP/s ({100 * rate / peak:.0f}% of the measured bf16 matmul rate)"
        )
    return "\n".join(lines)


def profile(d: Distiller, steps: int = 3, top: int = 15, rates: Rates = NO_RATES) -> str:
    """The top CUDA kernels of a few steps, by total device time (torch.profiler), and their families."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            d.step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=90)
    kernels += "\n" + kernel_families(events, steps, rates)
    # Operator view (device time of each aten op, children included): empty under CUDA-graph replay, where the
    # kernels run without their launching operators.
    ops = [e for e in events if e.key.startswith("aten::") and e.device_time_total > 0]
    ops.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) or 1.0
    lines = [f"{'aten op':<40} {'device ms/step':>15} {'share':>7} {'calls/step':>11}"]
    for e in ops[:top]:
        share = 100 * e.device_time_total / total
        lines.append(f"{e.key:<40} {e.device_time_total / 1e3 / steps:>15.2f} {share:>6.1f}% {e.count // steps:>11}")
    return kernels + "\n" + "\n".join(lines)


def _eager_fused(preset: str, batch: int, device: torch.device, gn: str = "auto") -> Distiller:
    """An eager bf16 channels_last distiller with the fused network kernels forced on (as CUDA graphs run them) and
    the group norms' strategy ``gn``, after two warm-up steps."""
    from scoredistill.kernels import groupnorm_triton

    d = build(preset, batch, "bf16-cl", device)
    groupnorm_triton.set_strategy(gn)
    for role in (d.teacher, d.generator, d.fake_score):
        use_fused_norms(role, True)
    for _ in range(2):
        d.step()
    torch.cuda.synchronize()
    return d


def _profiled_eager_step(preset: str, batch: int, device: torch.device):
    """The profiler's events of one eager bf16 channels_last step with the fused network kernels forced on."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    d = _eager_fused(preset, batch, device)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        d.step()
        torch.cuda.synchronize()
    return prof.events()


def attribute_kernels(events) -> dict[tuple[str, str, str, str, str], list[float]]:
    """Every kernel under the operator that launched it: ``(kernel, op, input shapes, parent, phase) -> [us,
    launches]``, from the profiler's ``FunctionEvent`` list.

    The parent is the nearest autograd node (a backward) or non-aten range above the op. The phase is the
    ``Distiller.step`` range (`PHASES`, without its prefix) that holds the op, or whose time span holds the op's start
    (the autograd engine's thread launches the backward while the main thread waits inside the phase); ``"?"``
    outside them."""
    spans = [(e.name.removeprefix("scoredistill/"), e.time_range.start, e.time_range.end) for e in events
             if e.name in PHASES]  # fmt: skip
    rows: dict[tuple[str, str, str, str, str], list[float]] = {}
    for e in events:
        for k in getattr(e, "kernels", []):
            parent, phase, up = "", None, e.cpu_parent
            while up is not None:
                if not parent and (up.name.startswith("autograd::engine") or not up.name.startswith("aten::")):
                    parent = up.name.replace("autograd::engine::evaluate_function: ", "bwd ")
                if phase is None and up.name in PHASES:
                    phase = up.name.removeprefix("scoredistill/")
                up = up.cpu_parent
            if phase is None:
                start = e.time_range.start
                phase = next((name for name, lo, hi in spans if lo <= start < hi), "?")
            key = (k.name[:48], e.name, str(e.input_shapes)[:72], parent[:40], phase)
            acc = rows.setdefault(key, [0.0, 0])
            acc[0] += k.duration
            acc[1] += 1
    return rows


def profile_ops(preset: str, batch: int, device: torch.device, top: int = 60) -> str:
    """Device time of one eager bf16 channels_last step by aten op and input shapes, fused norms forced on.

    Eager, so that every kernel is attributed to the operator that launched it (a graph replay hides them); the
    fused norms and folded biases are on as under CUDA graphs.
    """
    attributed = attribute_kernels(_profiled_eager_step(preset, batch, device))
    rows = _regroup(attributed, lambda kname, op, shapes, parent, phase: (kname, op, shapes, parent))
    total = sum(v[0] for v in rows.values()) or 1.0
    lines = [f"{'us':>9} {'share':>6} {'calls':>6}  kernel | op | input shapes | parent"]
    for (kname, op, shapes, parent), (us, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{us:9.0f} {100 * us / total:5.1f}% {n:6d}  {kname} | {op} | {shapes} | {parent}")
    return "\n".join(lines)


def _regroup(rows: dict[tuple, list[float]], key) -> dict[tuple, list[float]]:
    """`attribute_kernels`' ``[us, launches]`` rows summed under ``key(*row_key)``."""
    groups: dict[tuple, list[float]] = {}
    for k, (us, n) in rows.items():
        acc = groups.setdefault(key(*k), [0.0, 0])
        acc[0] += us
        acc[1] += n
    return groups


def launch_table(rows: dict[tuple[str, str, str, str, str], list[float]], limit_us: float, top: int = 45) -> str:
    """The small launches of `attribute_kernels`' rows (kernels averaging under ``limit_us`` each), by operator,
    parent and phase, most launches first: where a launch-bound step's kernels come from."""
    small = {key: v for key, v in rows.items() if v[0] < limit_us * v[1]}
    groups = _regroup(small, lambda kname, op, shapes, parent, phase: (op, parent, phase))
    launches, us = sum(v[1] for v in rows.values()), sum(v[0] for v in rows.values())
    n_small, us_small = sum(v[1] for v in small.values()), sum(v[0] for v in small.values())
    lines = [
        f"all kernels: {launches} launches, {us / 1e3:.2f} ms; averaging under {limit_us:g} us: {n_small} launches, "
        f"{us_small / 1e3:.2f} ms",
        f"{'launches':>8} {'us':>9}  op | parent | phase",
    ]
    for (op, parent, phase), (t, n) in sorted(groups.items(), key=lambda kv: (-kv[1][1], -kv[1][0]))[:top]:
        lines.append(f"{n:8d} {t:9.0f}  {op} | {parent} | {phase}")
    return "\n".join(lines)


def profile_launches(preset: str, batch: int, device: torch.device, limit_us: float = 6.0) -> str:
    """One eager step's small launches (`launch_table`), the fused network kernels forced on as under CUDA graphs."""
    return launch_table(attribute_kernels(_profiled_eager_step(preset, batch, device)), limit_us)


PHASES = ("scoredistill/data", "scoredistill/fake_score_step", "scoredistill/generator_step", "scoredistill/ema")


def phase_table(events, steps: int) -> str:
    """Device time per phase of ``Distiller.step`` (its ``record_function`` ranges), per step and as a share.

    ``events``: the profiler's raw events (``prof.profiler.kineto_results.events()``). A kernel belongs to the phase
    whose host range holds the start of the operator that launched it (its linked correlation id), whichever thread
    launched it: the autograd engine's thread launches the backward while the main thread waits inside the phase.
    Exact in an eager step; a CUDA-graph replay shows no phases. (``key_averages`` cannot give this: it merges a
    range's host row with its device-side annotation span, idle gaps included.)
    """
    cpu = [e for e in events if e.device_type() == DeviceType.CPU]
    ranges = [(e.name(), e.start_ns(), e.end_ns()) for e in cpu if e.is_user_annotation() and e.name() in PHASES]
    launched_at = {e.correlation_id(): e.start_ns() for e in cpu if e.linked_correlation_id() == 0}
    kernels = [e for e in events if e.device_type() != DeviceType.CPU and not e.is_user_annotation()]
    times = dict.fromkeys(PHASES, 0.0)
    total = 0.0
    for k in kernels:
        us = k.duration_ns() / 1e3
        total += us
        host = launched_at.get(k.linked_correlation_id())
        phase = next((name for name, lo, hi in ranges if host is not None and lo <= host < hi), None)
        if phase is not None:
            times[phase] += us
    total = total or 1.0
    lines = [f"{'phase':<32} {'device ms / step':>17} {'share':>7}"]
    for name in PHASES:
        t = times[name]
        lines.append(f"{name.removeprefix('scoredistill/'):<32} {t / 1e3 / steps:>17.2f} {100 * t / total:>6.1f}%")
    rest = total - sum(times.values())
    lines.append(f"{'outside the phases':<32} {rest / 1e3 / steps:>17.2f} {100 * rest / total:>6.1f}%")
    lines.append(f"{'total':<32} {total / 1e3 / steps:>17.2f}")
    return "\n".join(lines)


def profile_phases(preset: str, batch: int, device: torch.device, steps: int = 1) -> str:
    """Device time by phase, and by kernel family, of eager bf16 channels_last steps with the fused network kernels
    forced on (as under CUDA graphs, whose replays hide the phases).

    One step by default: the profiler's processing of an eager step's tens of thousands of events takes longer than
    the step itself (three steps overran 50 s per workload on an H100)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    d = _eager_fused(preset, batch, device)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            d.step()
        torch.cuda.synchronize()
    raw = prof.profiler.kineto_results.events()
    return phase_table(raw, steps) + "\n\n" + kernel_families(prof.key_averages(), steps)


def eager_traffic(preset: str, batch: int, device: torch.device, setting: str) -> dict[str, float]:
    """Bytes per step by kernel family, counted over one eager step of ``setting``'s kernels (`_families`)."""
    d = _eager_fused(preset, batch, device, gn=SETTINGS[setting][0].get("gn", BENCH_SWITCHES["gn"]))
    traffic = traffic_per_step(d.step)
    del d
    torch.cuda.empty_cache()
    return traffic


def _release_cuda_memory() -> None:
    """Free what the previous setting left in this process, so that the next peak is measured from a clean slate."""
    gc.collect()  # a Distiller in a reference cycle keeps its parameters and graph pools until the collector runs
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def measure(
    preset: str,
    batch: int,
    setting: str,
    warmup: int,
    steps: int,
    device: torch.device,
    *,
    rates: Rates | None = None,
) -> dict:
    """Time ``setting``'s steps; with ``rates``, profile the last ones too (`profile`).

    Before it, what earlier settings left behind is released, so that the peak is this setting's: on an H100 a
    process's peak grew by 0.13 GiB with every setting it built (2026-12-06 calls, `graphs-cl` first and last: 5.91
    and 6.29 GiB). The likely holder is cuBLAS's per-stream workspaces, which PyTorch allocates through its caching
    allocator and keeps for the process's life (each setting's captures and side streams add streams); they are
    cleared too. Checked on an H100 (2026-12-06 14:25): the same setting's peak agreed to 0.001 GiB whether it ran
    first or last in a process."""
    _release_cuda_memory()
    d = build(preset, batch, setting, device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(warmup):
        d.step()
        torch.cuda.synchronize()
        print(f"  {setting}: warm-up step {i + 1} done at {time.perf_counter() - t0:.1f} s", flush=True)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        logs = d.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    finite = all(bool(torch.isfinite(v)) for v in logs.values())
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30
    table = profile(d, rates=rates) if rates is not None else None
    del d
    return {
        "ms": ms,
        "img_s": batch / ms * 1e3,
        "peak_gib": peak,
        "warmup_s": warm_s,
        "finite": finite,
        "profile": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10-32x32-uncond", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=32, help="per-GPU batch")
    parser.add_argument("--settings", default="baseline,bf16,bf16-cl,fast", help=f"of {sorted(SETTINGS)}")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps (graph modes capture on the 3rd)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of the last setting")
    parser.add_argument("--out", default=None, help="markdown file to append to (default benchmarks/RESULTS.md)")
    parser.add_argument("--profile-ops", action="store_true", help="print one eager step's device time by op and shape")
    parser.add_argument("--profile-phases", action="store_true", help="print eager steps' device time by phase")
    parser.add_argument(
        "--profile-launches", action="store_true", help="print one eager step's small launches by op, parent and phase"
    )
    parser.add_argument("--teacher", default=None, help="a saved teacher (artefact directory) instead of the preset's")
    parser.add_argument("--data", default=None, help="dataset zip: real images (and labels) through the loader")
    parser.add_argument("--workers", type=int, default=2, help="loader processes with --data")
    parser.add_argument("--augment", type=float, default=0.0, help="AugmentPipe p (the CIFAR-10 recipes: 0.12)")
    parser.add_argument("--no-mfu", action="store_true", help="skip the FLOP count and the matmul peak")
    args = parser.parse_args()
    global TEACHER_DIR, DATA, WORKERS, AUGMENT_P
    TEACHER_DIR, DATA, WORKERS, AUGMENT_P = args.teacher, args.data, args.workers, args.augment
    label = args.preset if args.teacher is None else Path(args.teacher).name
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl", device_id=device)
    rank = dist.get_rank() if world > 1 else 0
    if args.profile_ops:
        print(profile_ops(args.preset, args.batch, device), flush=True)
        return
    if args.profile_phases:
        print(profile_phases(args.preset, args.batch, device), flush=True)
        return
    if args.profile_launches:
        print(profile_launches(args.preset, args.batch, device), flush=True)
        return
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {sorted(SETTINGS)}")
    peak = float("nan") if args.no_mfu else matmul_peak(device)
    flops = float("nan") if args.no_mfu else flops_per_image(args.preset, args.batch, device)
    source = (f"{Path(DATA).name} x{WORKERS} workers" if DATA else "fixed GPU batch") + (
        f", augment p={AUGMENT_P:g}" if AUGMENT_P > 0 else ""
    )
    rates = None
    if args.profile:  # the bytes each family touches, for the profile's bandwidths (an eager step, before the rows)
        from bench_losses import copy_bandwidth

        traffic = eager_traffic(args.preset, args.batch, device, settings[-1])
        rates = Rates(flops * args.batch, peak, traffic, copy_bandwidth())
    rows = []
    for setting in settings:
        r = measure(
            args.preset,
            args.batch,
            setting,
            args.warmup,
            args.steps,
            device,
            rates=rates if setting == settings[-1] else None,  # the profile: the last setting's
        )
        if r["profile"]:
            print(f"Top kernels, {setting}:\n{r['profile']}", flush=True)
        mfu = flops * r["img_s"] / peak
        rows.append(
            [
                label,
                args.batch,
                setting,
                world,
                source,
                r["ms"],
                r["img_s"] * world,
                r["img_s"],
                r["peak_gib"],
                100 * mfu,
                r["warmup_s"],
                "yes" if r["finite"] else "NO",
            ]
        )
        print(rows[-1], flush=True)
    columns = ["preset", "batch / GPU", "setting", "GPUs", "input", "ms / iter", "images / s", "images / s / GPU"]
    columns += ["peak GiB", "MFU %", "warm-up s", "finite"]
    notes = [
        f"One SiDA iteration = {flops / 1e9:,.0f} GFLOP per image (FlopCounterMode, backward included); "
        f"bf16 matmul peak measured in this run: {peak / 1e12:,.0f} TFLOP/s (8192^3). MFU = achieved / that peak.",
        "Settings: " + "; ".join(f"{s}: {SETTINGS[s][0]}, tf32={SETTINGS[s][1]}" for s in settings),
    ]
    if world > 1:
        dist.destroy_process_group()
    if not args.no_write and rank == 0:
        kwargs = {"md_path": args.out} if args.out else {}
        write_table(
            f"bench_step: one SiDA iteration, {label}, batch {args.batch} per GPU", columns, rows, notes=notes, **kwargs
        )


if __name__ == "__main__":
    main()
