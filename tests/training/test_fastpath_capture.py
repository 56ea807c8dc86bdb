"""Capture safety of the training iteration on CPU: no host synchronisation, no tensors built from host values.

A CUDA graph cannot capture a read of a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``) nor a
tensor made from Python values (``torch.tensor``, ``new_tensor``: a host-to-device copy). On CPU both show up in
the dispatcher: ``aten._local_scalar_dense`` and ``aten.lift_fresh``; ``FakeTensorMode`` also refuses any shape
that depends on values. The GPU twins that really capture are in ``test_gpu_fastpath.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, FakeScore, OneStepGenerator, SiDLoss
from scoredistill.data.augment import AUGMENT_DIM, AugmentPipe
from scoredistill.networks.toy import TinyUNet
from scoredistill.roles.precond import Precond
from scoredistill.roles.teacher import Teacher

_FORBIDDEN = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default}


class NoHostValues(TorchDispatchMode):
    """Fail on any op that reads a tensor on the host or makes one from host values (the optimiser is exempt:
    on CUDA it runs fused and capturable, on CPU its foreach path reads its step counter)."""

    def __init__(self):
        super().__init__()
        self.paused = 0

    def __enter__(self):
        self.hooks = [
            register_optimizer_step_pre_hook(lambda *a: setattr(self, "paused", 1)),
            register_optimizer_step_post_hook(lambda *a: setattr(self, "paused", 0)),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _FORBIDDEN and not self.paused:
            raise AssertionError(f"{func} inside the step: a CUDA graph cannot capture it")
        return func(*args, **(kwargs or {}))


def test_fixed_padding_gives_the_batch_sized_padding_result():
    # The capture-safe padding (always the cap) and the batch-sized one sample the same padded signal.
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    outs = []
    for fixed in (False, True):
        pipe = AugmentPipe(p=1.0, fixed_padding=fixed, translate_frac_std=0.5, scale_std=0.5)
        outs.append(pipe(x, rng=torch.Generator().manual_seed(3)))
    (a, la), (b, lb) = outs
    assert torch.equal(la, lb)
    assert (la[:, 2:] != 0).any(dim=1).sum() >= 12  # most images are warped, by large amounts
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # grid coordinates round differently


def test_fixed_padding_pipe_never_reads_values_on_the_host():
    pipe = AugmentPipe(p=0.5, fixed_padding=True)
    pipe(torch.zeros(2, 3, 8, 8))  # the first call creates the filter (outside any capture)
    with FakeTensorMode(allow_non_fake_inputs=True), NoHostValues():
        x, labels = pipe(torch.zeros(4, 3, 8, 8), rng=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 8, 8) and labels.shape == (4, AUGMENT_DIM)


def test_the_batch_sized_padding_does_read_the_host():
    # The check above can fail: the default (eager) padding sizes itself from the batch on the host.
    pipe = AugmentPipe(p=1.0)
    pipe(torch.zeros(2, 3, 8, 8))
    forbidden = pytest.raises(Exception, match=r"local_scalar_dense|DataDependent")
    with forbidden, FakeTensorMode(allow_non_fake_inputs=True), NoHostValues():
        pipe(torch.zeros(4, 3, 8, 8), rng=torch.Generator().manual_seed(0))


def _labelled_stream(batch: int, label_dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1
        y = torch.nn.functional.one_hot(torch.randint(label_dim, (batch,), generator=g), label_dim).float()
        yield x, y


def _conditional_sida(batch: int = 4, micro: int = 2) -> Distiller:
    torch.manual_seed(0)
    net = TinyUNet(img_channels=1, channels=8, label_dim=3, augment_dim=AUGMENT_DIM)
    teacher = Teacher(Precond(net, label_dim=3, augment_dim=AUGMENT_DIM), sample_shape=(1, 8, 8))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=2 * batch)]
    config = DistillConfig.sida(batch_size=batch, micro_batch=micro, generator_start_nimg=batch, total_nimg=10**6)
    augment = AugmentPipe(p=0.5, fixed_padding=True)
    return Distiller(teacher, G, fake, losses, config, data=_labelled_stream(micro, 3, 0), augment=augment)


def test_every_regime_of_a_conditional_augmented_sida_step_is_capture_safe():
    # Warm-up (fake score only), SiD, SiD + adversarial; with labels from the data, augmentation of the fake and the
    # real images, and two accumulation rounds: the iteration (what StepGraphs captures) reads nothing on the host.
    d = _conditional_sida()
    d.augment(torch.zeros(2, 1, 8, 8))  # its filter is made on the first call (StepGraphs' eager warm-up on CUDA)
    regimes = []
    for _ in range(3):
        gen_on = d.nimg >= d.config.generator_start_nimg
        active = tuple(loss for loss in d.losses if gen_on and d.nimg >= loss.generator_start_nimg)
        regimes.append((gen_on, tuple(loss.name for loss in active)))
        batches = d._fetch(gen_on)  # outside the graph: the host-side data loading
        with NoHostValues():
            logs = d._iteration(batches, gen_on, active)
        d.nimg += d.config.batch_size
        assert all(torch.isfinite(v) for v in logs.values())
    assert regimes == [(False, ()), (True, ("sid", "dsm")), (True, ("sid", "dsm", "adv"))]


def test_the_guard_catches_a_host_read_in_a_loss():
    # A plug-in that syncs (e.g. logging float(x)) is caught: the check is not vacuous.
    d = _conditional_sida()
    d.augment(torch.zeros(2, 1, 8, 8))
    sid = d.losses[0]
    original = sid.generator_loss

    def syncing(ev):
        out = original(ev)
        if float(out.loss.detach().mean()) > 1e30:  # a host read
            pass
        return out

    sid.generator_loss = syncing
    d.nimg = d.config.generator_start_nimg
    batches = d._fetch(True)
    with pytest.raises(AssertionError, match="local_scalar_dense"), NoHostValues():
        d._iteration(batches, True, (sid,))


def test_cuda_graphs_refused_at_construction_off_cuda():
    teacher = Teacher(Precond(TinyUNet(img_channels=1, channels=8)), sample_shape=(1, 8, 8))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    config = DistillConfig(batch_size=2, cuda_graphs=True, precision="bf16")
    with pytest.raises(ValueError, match="cuda_graphs needs the networks on a CUDA device"):
        Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)


def test_teacher_overlap_refused_off_cuda():
    """overlap_teacher runs the teacher on a second CUDA stream: refused where the networks are not on CUDA, by the
    distiller and by an Evaluation given a stream for CPU samples."""
    from scoredistill.losses.base import Evaluation

    teacher = Teacher(Precond(TinyUNet(img_channels=1, channels=8)), sample_shape=(1, 8, 8))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    config = DistillConfig(batch_size=2, overlap_teacher=True)
    with pytest.raises(ValueError, match="overlap_teacher needs the networks on a CUDA device, not cpu"):
        Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=2))
    assert d.side_stream is None
    fake_batch = d._noised(torch.zeros(2, 1, 8, 8), None, d.generator_sigma)
    with pytest.raises(ValueError, match="side_stream overlaps CUDA work"):
        Evaluation(fake_batch, fake_score=fake, teacher=teacher, side_stream=object())


def test_teacher_overlap_default_is_on_only_where_measured_and_tested():
    """``overlap_teacher=None`` (the default) resolves to on for a CUDA device in one process without torch.compile,
    and off elsewhere; an explicit True or False is kept."""
    from scoredistill.training.distill import _overlap_teacher

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert _overlap_teacher(DistillConfig(), cuda, world=1)
    assert not _overlap_teacher(DistillConfig(), cpu, world=1)
    assert not _overlap_teacher(DistillConfig(), cuda, world=2)
    assert not _overlap_teacher(DistillConfig(compile="blocks"), cuda, world=1)
    assert not _overlap_teacher(DistillConfig(overlap_teacher=False), cuda, world=1)
    assert _overlap_teacher(DistillConfig(overlap_teacher=True), cuda, world=2)


def test_precast_default_is_on_only_where_measured_and_tested():
    """``precast_weights=None`` (the default) resolves to on for bf16 on a CUDA device in one process without
    torch.compile, and off elsewhere (fp32, and fp16, where it is not tested); an explicit True or False is kept."""
    from scoredistill.training.distill import _precast_weights

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert _precast_weights(DistillConfig(precision="bf16"), cuda, world=1)
    assert not _precast_weights(DistillConfig(precision="fp16"), cuda, world=1)
    assert _precast_weights(DistillConfig(precision="fp16", precast_weights=True), cuda, world=1)
    assert not _precast_weights(DistillConfig(), cuda, world=1)  # fp32: nothing to cast
    assert not _precast_weights(DistillConfig(precision="bf16"), cpu, world=1)
    assert not _precast_weights(DistillConfig(precision="bf16"), cuda, world=2)
    assert not _precast_weights(DistillConfig(precision="bf16", compile="blocks"), cuda, world=1)
    assert not _precast_weights(DistillConfig(precision="bf16", precast_weights=False), cuda, world=1)
    assert _precast_weights(DistillConfig(precision="bf16", precast_weights=True), cpu, world=2)


def test_all_fixed_padding_draws_match_over_many_seeds():
    # Extreme draws (p = 1, wide distributions) hit the padding cap: both paths still agree there.
    x = torch.rand(8, 1, 8, 8)
    for seed in itertools.islice(itertools.count(), 4):
        a = AugmentPipe(p=1.0, scale_std=1.5, translate_frac_std=1.0)(x, rng=torch.Generator().manual_seed(seed))
        b = AugmentPipe(p=1.0, scale_std=1.5, translate_frac_std=1.0, fixed_padding=True)(
            x, rng=torch.Generator().manual_seed(seed)
        )
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)  # grid coordinates round differently


def test_compile_cache_folder_is_set_for_this_process_and_checked(tmp_path, monkeypatch):
    from scoredistill.training.fast import use_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # restored after the test
    monkeypatch.setenv("TRITON_CACHE_DIR", "unset")
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    folder = use_compile_cache(tmp_path / "cache")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert folder.is_dir() and cache_dir() == str(folder)  # where Inductor now writes
    assert torch._inductor.config.fx_graph_cache and torch._functorch.config.enable_autograd_cache
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        use_compile_cache(tmp_path / "file")
    with pytest.raises(ValueError, match=r"compile_cache_dir keeps torch\.compile"):
        DistillConfig(compile_cache_dir=str(tmp_path / "cache"))  # compile is off
