"""Captured against eager training on CUDA, for every configuration users run.

Each row builds the same distiller twice from one seed, through the path users take (``make_distiller`` with a
recipe, real images from a dataset zip through ``real_batches`` with loader processes and pinned memory), runs
`STEPS` iterations eagerly and `STEPS` captured in CUDA graphs, and compares the log of every iteration and the
parameters at the end. The iterations cross every regime of the schedule: the fake-score warm-up, the generator
on, and (SiDA, SiD²A) the adversarial term on, each warmed up, captured and replayed.

The matrix: method (SiD, SiDA, SiD²A) x teacher (unconditional or conditional, with augmentation conditioning or
``augment_dim = 0``) x precision (fp32, bf16) x gradient accumulation (1, 2 rounds), on a small DDPM++; two rows on
the full CIFAR-10 network; a resume in the middle of a captured run; and a capture while another thread pins host
memory (what a DataLoader's pin-memory thread does), the cause of the first augmentation-free SiDA failure.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from helpers import FIXTURES
from scoredistill.data import ImageZipDataset, real_batches
from scoredistill.roles.precond import edm_precond
from scoredistill.training.distill import Distiller
from scoredistill.training.fast import StepGraphs, use_fused_norms
from scoredistill.training.recipes import RECIPES, make_distiller

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BATCH = 8
STEPS = 10  # regimes at batch 8: warm-up (steps 0-2), generator on (3-5), adversarial on (6-9); capture on the 3rd
GENERATOR_START, ADVERSARIAL_START = 3 * BATCH, 6 * BATCH
SMALL = {"model_channels": 16, "channel_mult": (1, 2), "num_blocks": 1, "attn_resolutions": (16,), "dropout": 0.1}
TEACHERS = {  # name: (label_dim, augment_dim)
    "uncond-aug": (0, 9),
    "uncond-noaug": (0, 0),  # the study's teacher: no augmentation conditioning, so no AugmentPipe
    "cond-aug": (10, 9),
    "cond-noaug": (10, 0),
}
TOLERANCES = {  # relative and absolute tolerance of a loss; absolute tolerance of a fraction (of 8 or 16 samples)
    "fp32": (2e-3, 1e-5, 5e-3),
    "bf16": (3e-2, 2e-3, 0.13),
}
# |eager - captured| over |eager - initial| of all a network's parameters together: the two runs' difference against
# how far training moved the weights (Adam steps of about lr each, so per-tensor ratios of tiny biases are noise).
PARAM_RTOL = {"fp32": 0.02, "bf16": 0.2}


@pytest.fixture(autouse=True)
def _exact_matmuls():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def build(
    method: str,
    teacher_kind: str,
    *,
    precision: str,
    rounds: int,
    graphs: bool,
    network: dict | None = None,
    workers: int = 2,
    **config,
) -> Distiller:
    """The distiller a user's example run builds, at test size, from seed 0 (``config``: more DistillConfig fields)."""
    label_dim, augment_dim = TEACHERS[teacher_kind]
    recipe = RECIPES["cifar10-cond" if label_dim else "cifar10-uncond"]
    recipe = dataclasses.replace(recipe, batch_size=BATCH, lr=1e-4, augment_p=0.5)
    torch.manual_seed(0)
    net = edm_precond(recipe.preset, augment_dim=augment_dim, **(SMALL if network is None else network))
    init = None
    if method == "sid2a":  # SiD²A fine-tunes a SiD generator: a perturbed copy of the teacher stands in for one
        from scoredistill.roles.generator import OneStepGenerator
        from scoredistill.roles.teacher import Teacher

        init = OneStepGenerator.from_teacher(Teacher(net.cuda()))
        with torch.no_grad():
            for p in init.parameters():
                p.add_(torch.randn_like(p), alpha=1e-3)
    data = None
    if method != "sid":
        dataset = ImageZipDataset(FIXTURES / "cifar10-tiny.zip", use_labels=label_dim > 0)
        data = real_batches(dataset, BATCH // rounds, seed=0, device="cuda", label_dim=label_dim, num_workers=workers)
    d = make_distiller(
        recipe,
        net,
        method,
        data=data,
        generator_init=init,
        device="cuda",
        adversarial_start_nimg=ADVERSARIAL_START,
        precision=precision,
        micro_batch=BATCH // rounds,
        generator_start_nimg=GENERATOR_START,
        total_nimg=STEPS * BATCH,
        cuda_graphs=graphs,
        **config,
    )
    assert (d.augment is not None) == (augment_dim > 0)
    if not graphs:  # the same fused kernels as under graphs, so that only the launch differs
        for role in (d.teacher, d.generator, d.fake_score):
            use_fused_norms(role, None)
    return d


def trace(d: Distiller, steps: int) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in d.step().items()} for _ in range(steps)]


def assert_same_trace(eager: list[dict], graphed: list[dict], precision: str) -> None:
    rtol, atol, frac_atol = TOLERANCES[precision]
    for step, (a, b) in enumerate(zip(eager, graphed, strict=True)):
        assert a.keys() == b.keys(), step
        for k in a:
            tol = {"abs": frac_atol} if "acc" in k or "frac" in k else {"rel": rtol, "abs": atol}
            assert b[k] == pytest.approx(a[k], **tol), (step, k, a[k], b[k])


def assert_close_parameters(a: Distiller, b: Distiller, initial: dict[str, list[torch.Tensor]], precision: str) -> None:
    for name, start in initial.items():
        pa, pb = (torch.cat([p.detach().flatten() for p in getattr(d, name).parameters()]) for d in (a, b))
        moved = (pa - torch.cat([p.flatten() for p in start])).norm()
        assert moved > 0, name
        assert float((pa - pb).norm() / moved) < PARAM_RTOL[precision], name


def initial(d: Distiller) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in getattr(d, name).parameters()] for name in ("generator", "fake_score")}


def compare_runs(switch: str, values: tuple, *, precision: str, **kwargs) -> dict[object, Distiller]:
    """Two runs from one seed that differ only in ``build``'s ``switch``: the same trace and parameters."""
    runs, start = {}, None
    for value in values:
        d = build(precision=precision, **kwargs, **{switch: value})
        start = start or initial(d)
        runs[value] = d, trace(d, STEPS)
    (a, trace_a), (b, trace_b) = runs.values()
    assert_same_trace(trace_a, trace_b, precision)
    assert_close_parameters(a, b, start, precision)
    return {value: d for value, (d, _) in runs.items()}


@pytest.mark.parametrize("rounds", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("teacher_kind", list(TEACHERS))
@pytest.mark.parametrize("method", ["sid", "sida", "sid2a"])
def test_captured_training_repeats_the_eager_run(method, teacher_kind, precision, rounds):
    runs, start = {}, None
    for graphs in (False, True):
        d = build(method, teacher_kind, precision=precision, rounds=rounds, graphs=graphs)
        start = start or initial(d)
        runs[graphs] = d, trace(d, STEPS)
    captured = runs[True][0]
    regimes = {key for key in captured.graphs.entries}
    # Every regime of the schedule was captured: warm-up, generator on, and the adversarial term on (SiDA, SiD²A).
    assert len(regimes) == (2 if method == "sid" else 3), regimes
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in runs[True][1])
    assert_same_trace(runs[False][1], runs[True][1], precision)
    assert_close_parameters(runs[False][0], captured, start, precision)


@pytest.mark.parametrize("teacher_kind", ["uncond-noaug", "cond-aug"])
def test_full_size_network_captured_repeats_the_eager_run(teacher_kind):
    """The CIFAR-10 DDPM++ at full size (56M parameters), SiDA in bf16 as the examples run it."""
    full = {"dropout": 0.13}
    runs = [
        trace(build("sida", teacher_kind, precision="bf16", rounds=1, graphs=g, network=full), STEPS)
        for g in (False, True)
    ]
    assert_same_trace(*runs, "bf16")


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("method", ["sid", "sida"])
def test_teacher_on_a_side_stream_repeats_the_serial_run(method, graphs):
    """DistillConfig.overlap_teacher: the teacher on a second CUDA stream beside the fake score (their forward and
    backward passes overlapping) gives the serial run's trace and parameters, eager and captured."""
    runs = compare_runs(
        "overlap_teacher",
        (False, True),
        method=method,
        teacher_kind="cond-aug",
        precision="fp32",
        rounds=2,
        graphs=graphs,
    )
    assert runs[True].side_stream is not None and runs[False].side_stream is None


@pytest.mark.parametrize("teacher_kind", ["uncond-noaug", "cond-aug"])
@pytest.mark.parametrize("method", ["sida", "sid2a"])
def test_shared_encoder_pass_captured_repeats_the_eager_run(method, teacher_kind):
    """DistillConfig.share_encoder_pass (one encoder pass over the generator samples and the real images in the
    fake-score phase) captures, and the captured run repeats its eager run."""
    compare_runs(
        "graphs", (False, True), method=method, teacher_kind=teacher_kind, precision="fp32", rounds=2,
        share_encoder_pass=True,
    )  # fmt: skip


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("method", ["sid", "sida"])
def test_precast_weights_repeat_the_run_that_casts(method, graphs):
    """DistillConfig.precast_weights (the layers read bf16 copies of their weights, refreshed once per update) gives
    the trace and parameters of the run that casts at every use, eager and captured."""
    runs = compare_runs(
        "precast_weights", (False, True), method=method, teacher_kind="cond-aug", precision="bf16", rounds=2,
        graphs=graphs,
    )  # fmt: skip
    assert runs[True].precast is not None and runs[False].precast is None


@pytest.mark.parametrize("switch", ["overlap_teacher", "precast_weights"], ids=["side_stream", "precast"])
def test_full_size_network_with_and_without_a_speed_switch(switch):
    """The CIFAR-10 DDPM++ at full size, SiDA in bf16 captured as bench_step's graphs-cl setting runs it, with the
    switch off and on: the teacher on a second stream (now the default on one GPU; graphs-cl-noot against
    graphs-cl) or the layers reading weights cast once per update (graphs-cl against graphs-cl-precast)."""
    full = {"dropout": 0.13}
    runs = [
        trace(
            build("sida", "uncond-noaug", precision="bf16", rounds=1, graphs=True, network=full, **{switch: on}),
            STEPS,
        )
        for on in (False, True)
    ]
    assert_same_trace(*runs, "bf16")


def test_resume_in_the_middle_of_a_captured_run(tmp_path):
    whole = build("sida", "uncond-noaug", precision="fp32", rounds=2, graphs=True)
    start = initial(whole)
    expected = trace(whole, STEPS)
    first = build("sida", "uncond-noaug", precision="fp32", rounds=2, graphs=True)
    trace(first, 5)  # stops inside the generator-on regime, its graph captured
    first.save(tmp_path / "state")
    second = build("sida", "uncond-noaug", precision="fp32", rounds=2, graphs=True)
    second.load(tmp_path / "state")
    assert second.nimg == 5 * BATCH and not second.graphs.entries
    assert_same_trace(expected[5:], trace(second, STEPS - 5), "fp32")
    assert_close_parameters(whole, second, start, "fp32")


def test_capture_while_another_thread_pins_host_memory():
    """A DataLoader's pin-memory thread allocates pinned memory and queries events while the loop captures; in
    CUDA's default global capture mode that invalidated the capture ("operation failed due to a previous error
    during capture"), depending on timing. The library captures in thread-local mode."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def pin_forever() -> None:
        try:
            while not stop.is_set():
                torch.empty(1 << 16, pin_memory=True).to("cuda", non_blocking=True)
        except BaseException as e:  # reported below
            errors.append(e)

    rng = torch.Generator("cuda").manual_seed(0)
    graphs = StepGraphs([rng], warmup=1)
    w = torch.randn(256, 256, device="cuda")

    def iteration(inputs):
        x = torch.randn(64, 256, device="cuda", generator=rng)
        return {"y": (x @ w).relu().sum()}

    thread = threading.Thread(target=pin_forever, daemon=True)
    thread.start()
    try:
        for key in range(20):  # twenty captures, each racing the pinning thread
            graphs.run(key, iteration, [], lambda: rng.manual_seed(0))
            graphs.run(key, iteration, [], lambda: rng.manual_seed(0))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(graphs.entries) == 20


def test_example_path_without_augmentation_is_captured():
    """The failing case of the first report: SiDA, an unconditional teacher with augment_dim = 0, real images through
    loader processes with pinned memory, bf16, through its three regimes."""
    d = build("sida", "uncond-noaug", precision="bf16", rounds=1, graphs=True, workers=4)
    logs = trace(d, STEPS)  # each regime is captured on its third step: the adversarial one on step 8
    assert len(d.graphs.entries) == 3
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in logs)
