"""The Distiller: loop invariants, schedules, determinism and exact resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers import ResumableStream, tiny_image_roles, tiny_vector_roles
from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, SiDLoss
from scoredistill.io.artefact import CheckpointError
from scoredistill.training.distill import sanitize_grads
from scoredistill.training.ema import ema_beta


def _real_stream(batch: int, shape=(1, 8, 8), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(batch, *shape, generator=g) * 2 - 1, None


def _sida(batch=4, **cfg):
    teacher, G, fake = tiny_image_roles()
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=cfg.pop("adv_start", 0))]
    config = DistillConfig(batch_size=batch, total_nimg=10_000, **cfg)
    return Distiller(teacher, G, fake, losses, config, data=_real_stream(cfg.get("micro_batch") or batch))


def test_teacher_untouched_and_phase_gradients():
    d = _sida()
    teacher_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    seen = {}

    # Record which parameters got gradients right before each optimiser step.
    def spy(name, opt):
        step = opt.step

        def wrapped(*a, **k):
            seen[name] = {
                "g": [p.grad is not None and p.grad.abs().sum() > 0 for p in d.g_params],
                "f": [p.grad is not None for p in d.f_params],
                "f_frozen": all(not p.requires_grad for p in d.fake_score.parameters()),
            }
            return step(*a, **k)

        opt.step = wrapped

    spy("f", d.opt_f)
    spy("g", d.opt_g)
    d.step()
    assert not any(seen["f"]["g"]), "the generator got gradients in the fake-score phase"
    assert all(seen["f"]["f"]), "every fake-score parameter gets a gradient in its phase"
    assert all(seen["g"]["g"]), "every generator parameter gets a gradient in its phase"
    assert not any(seen["g"]["f"]) and seen["g"]["f_frozen"], "fake score must be frozen in the generator phase"
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.requires_grad for p in d.fake_score.parameters())  # unfrozen again after the phase


def test_ema_moves_and_follows_edm_rule():
    d = _sida()
    assert ema_beta(0, 4, halflife_nimg=500_000) == 0.0
    assert ema_beta(10**9, 256, halflife_nimg=500_000) == pytest.approx(0.5 ** (256 / 500_000))
    before = [p.clone() for p in d.ema.module.parameters()]
    d.step()
    d.step()
    assert any(not torch.equal(p, q) for p, q in zip(d.ema.module.parameters(), before))
    # At nimg = 0 beta = 0: after the first step the EMA equals the generator of that step.


def test_generator_warmup_and_sida_schedule():
    d = _sida(generator_start_nimg=8, adv_start=12)
    g_before = [p.clone() for p in d.generator.parameters()]
    logs = d.step()  # nimg 0: no generator step
    assert "sid/generator_loss" not in logs and "dsm/fake_score_loss" in logs and "adv/fake_score_loss" in logs
    assert all(torch.equal(p, q) for p, q in zip(d.generator.parameters(), g_before))
    d.step()  # nimg 4 < 8
    logs = d.step()  # nimg 8: SiD only
    assert "sid/generator_loss" in logs and "adv/generator_loss" not in logs
    logs = d.step()  # nimg 12: 0.5 SiD + 0.5 adversarial
    assert "adv/generator_loss" in logs and d.nimg == 16


def test_generator_objective_is_weighted_average():
    d = _sida(adv_start=0)
    captured = {}
    orig = d._backward

    def capture(loss, phase, **kwargs):
        captured[phase] = loss.detach().clone()
        return orig(loss, phase, **kwargs)

    d._backward = capture
    logs = d.step()
    expected = 0.5 * logs["sid/generator_loss"] + 0.5 * logs["adv/generator_loss"]
    torch.testing.assert_close(captured["g"].mean(), expected)


def test_same_seed_same_trace_and_different_seed_differs():
    def trace(seed):
        d = _sida(seed=seed, adv_start=0)
        return [float(d.step()["sid/generator_loss"]) for _ in range(3)]

    assert trace(0) == trace(0)
    assert trace(0) != trace(1)


def test_resume_continues_the_same_trace(tmp_path):
    def fresh():
        d = _sida(adv_start=0, seed=3)
        d.data = ResumableStream(4, (1, 8, 8))
        return d

    straight = fresh()
    full = [{k: float(v) for k, v in straight.step().items()} for _ in range(4)]
    first = fresh()
    part = [{k: float(v) for k, v in first.step().items()} for _ in range(2)]
    first.save(tmp_path / "ckpt")
    second = fresh()
    second.load(tmp_path / "ckpt")
    part += [{k: float(v) for k, v in second.step().items()} for _ in range(2)]
    assert part == full
    for p, q in zip(straight.ema.module.parameters(), second.ema.module.parameters()):
        assert torch.equal(p, q)


def test_resume_rejects_other_config_and_missing_files(tmp_path):
    d = _sida()
    d.step()
    d.save(tmp_path / "ckpt")
    other = _sida(lr_generator=1e-3)
    with pytest.raises(ValueError, match="differs"):
        other.load(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError):
        d.load(tmp_path / "nowhere")
    (tmp_path / "ckpt" / "fake_score.safetensors").unlink()
    with pytest.raises(CheckpointError, match="fake_score"):  # incomplete: refused, not "start afresh"
        d.load(tmp_path / "ckpt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    d = _sida()
    d.step()
    d.save(tmp_path / "ckpt")
    good = (tmp_path / "ckpt" / "state.pt").read_bytes()
    import scoredistill.training.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", boom)
    d.step()
    with pytest.raises(OSError):
        d.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "state.pt").read_bytes() == good  # the previous checkpoint survives intact


def test_run_checkpoints_on_interrupt(tmp_path):
    d = _sida()
    calls = itertools.count()
    step = d.step

    def interrupted():
        if next(calls) == 2:
            raise KeyboardInterrupt
        return step()

    d.step = interrupted
    with pytest.raises(KeyboardInterrupt):
        d.run(run_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "training_state" / "state.pt", weights_only=True)
    assert state["nimg"] == 8


def test_gradient_accumulation_rounds_and_reduction():
    # Each micro-batch's summed loss is divided by the per-process batch (the reference's sum / B_gpu).
    teacher, G, fake = tiny_vector_roles()
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=8, micro_batch=4, total_nimg=100))
    calls = []
    orig = d._backward

    def spy(loss, phase, **kwargs):
        calls.append((phase, loss.shape[0]))
        return orig(loss, phase, **kwargs)

    d._backward = spy
    d.step()
    assert calls == [("f", 4), ("f", 4), ("g", 4), ("g", 4)]
    assert d.nimg == 8
    assert all(p.grad is None for p in d.g_params)  # zeroed after the step


def test_sanitize_and_clip():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])
    sanitize_grads([p])
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 3.0]
    sanitize_grads([p], clip_value=1.0)
    assert p.grad.tolist() == [0.0, 1.0, -1.0, 1.0]


def test_sanitize_batches_the_small_gradients():
    """Many small gradients (the norms' parameters) are sanitised by one nan_to_num over their concatenation, with
    the same values as one each; a large one, channels_last included, keeps its own; mixed dtypes fall back."""
    from helpers import OpCounter
    from scoredistill.training import distill

    g = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 2e5, -3.0])

    def grad(*shape, dtype=torch.float32):
        t = torch.randn(*shape, generator=g) * 1e5
        flat = t.view(-1)
        flat[torch.randint(0, flat.numel(), (5,), generator=g)] = special
        return t.to(dtype)

    small = [grad(7), grad(3, 5), grad(4, 2, 3, 3).contiguous(memory_format=torch.channels_last), grad(1)]
    large = grad(distill.SMALL_GRAD + 3)
    grads = [*small, large]
    expected = [t.nan_to_num(nan=0.0, posinf=1e5, neginf=-1e5) for t in grads]
    ptrs = [t.data_ptr() for t in grads]
    with OpCounter(lambda func, args: func.__name__.startswith("nan_to_num")) as counter:
        distill._sanitize(grads, None)
    assert counter.count == 2  # one for the four small gradients, one for the large one
    for t, e, ptr in zip(grads, expected, ptrs, strict=True):
        assert torch.equal(t, e) and t.data_ptr() == ptr  # in place
    assert grads[2].is_contiguous(memory_format=torch.channels_last)

    clipped = [grad(7), grad(3, 5), grad(distill.SMALL_GRAD + 3)]  # the batched path with clipping
    expected = [t.nan_to_num(nan=0.0, posinf=1e5, neginf=-1e5).clamp(-0.5, 0.5) for t in clipped]
    distill._sanitize(clipped, 0.5)
    for t, e in zip(clipped, expected, strict=True):
        assert torch.equal(t, e)

    mixed = [grad(3), grad(3, dtype=torch.float64)]
    expected = [t.nan_to_num(nan=0.0, posinf=1e5, neginf=-1e5) for t in mixed]
    distill._sanitize(mixed, 1.0)
    for t, e in zip(mixed, expected, strict=True):
        assert torch.equal(t, e.clamp(-1.0, 1.0))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(precision):
    d = _sida(precision=precision, adv_start=0)
    for _ in range(2):
        logs = d.step()
    assert all(torch.isfinite(v) for v in logs.values())


def test_config_validation_and_wiring_errors():
    with pytest.raises(ValueError, match="multiple"):
        DistillConfig(batch_size=6, micro_batch=4)
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(precision="fp8")  # type: ignore[arg-type]
    assert DistillConfig.sida().generator_start_nimg == 100_000
    teacher, G, fake = tiny_image_roles()
    with pytest.raises(ValueError, match="real images"):
        Distiller(teacher, G, fake, [SiDLoss(), DSMLoss(), AdversarialEncoderLoss()], DistillConfig())
    with pytest.raises(ValueError, match="fake_score_sigma"):
        Distiller(teacher, G, fake, [SiDLoss()], DistillConfig())
    with pytest.raises(TypeError, match="protocol"):
        Distiller(teacher, G, fake, [object()], DistillConfig())  # type: ignore[list-item]
    _, G2, _ = tiny_image_roles(label_dim=3)
    with pytest.raises(ValueError, match="classes"):
        Distiller(teacher, G2, fake, [SiDLoss(), DSMLoss()], DistillConfig())
    d = Distiller(
        teacher,
        G,
        fake,
        [SiDLoss(), DSMLoss(), AdversarialEncoderLoss()],
        DistillConfig(batch_size=4),
        data=_real_stream(4, shape=(1, 16, 16)),
    )
    with pytest.raises(ValueError, match="data batch"):
        d.step()


def test_fused_norms_follow_the_cuda_graph_switch():
    # Eager loops keep the native group norms (host-bound at small batches); use_fused_norms switches them by hand.
    from scoredistill import FakeScore, OneStepGenerator, Teacher
    from scoredistill.networks import SongUNetConfig
    from scoredistill.networks.layers import GroupNorm
    from scoredistill.roles.precond import edm_precond
    from scoredistill.training.fast import use_fused_norms

    cfg = SongUNetConfig(img_resolution=8, model_channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    teacher = Teacher(edm_precond(cfg))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(batch_size=2))
    norms = [m for role in (teacher, G, fake) for m in role.modules() if isinstance(m, GroupNorm)]
    assert norms and all(m.use_kernels is False for m in norms)
    use_fused_norms(G, True)
    assert all(m.use_kernels is None for m in G.modules() if isinstance(m, GroupNorm))


def test_step_names_its_phases_for_the_profiler():
    """torch.profiler sees each iteration's phases by name, so a profile can be read phase by phase."""
    from torch.profiler import profile

    teacher, G, fake = tiny_vector_roles()
    config = DistillConfig(batch_size=8, total_nimg=100, generator_start_nimg=8)
    d = Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)
    phases = ["scoredistill/data", "scoredistill/fake_score_step", "scoredistill/generator_step", "scoredistill/ema"]
    with profile() as prof:
        d.step()  # the warm-up regime: no generator step
        d.step()
    counts = {e.key: e.count for e in prof.key_averages() if e.key.startswith("scoredistill/")}
    assert counts == dict(zip(phases, [2, 2, 1, 2], strict=True))


def test_shared_encoder_pass_repeats_the_two_pass_run():
    """``share_encoder_pass``: SiDA's fake-score phase with one encoder pass over generator samples and real images
    trains as the full pass plus the encoder-only pass does (no dropout here: the same values to rounding)."""
    runs = []
    for shared in (False, True):
        d = _sida(share_encoder_pass=shared)
        if shared:  # the real images' logits come from the shared pass, never from an encoder-only one
            d.fake_score.logits = lambda *args, **kwargs: pytest.fail("an encoder-only pass ran")
        logs = [d.step() for _ in range(3)]
        runs.append((d, logs))
    (a, logs_a), (b, logs_b) = runs
    for la, lb in zip(logs_a, logs_b, strict=True):
        assert la.keys() == lb.keys() and any(k.endswith("fake_score_loss") for k in la)
        for k in la:
            assert math.isclose(float(la[k]), float(lb[k]), rel_tol=1e-4, abs_tol=1e-6), k
    for pa, pb in zip([*a.g_params, *a.f_params], [*b.g_params, *b.f_params], strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6)


def test_shared_encoder_pass_is_refused_for_a_backbone_that_cannot_share():
    teacher, G, fake = tiny_vector_roles()
    with pytest.raises(ValueError, match="share_encoder_pass needs a fake-score backbone"):
        Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], DistillConfig(share_encoder_pass=True))


def _edm_distiller(method: str, **cfg) -> Distiller:
    """A small DDPM++ teacher (perturbed, so that no layer is zero), SiD or SiDA in bf16 on the CPU."""
    from scoredistill import FakeScore, OneStepGenerator, Teacher
    from scoredistill.networks import SongUNetConfig
    from scoredistill.roles.precond import edm_precond

    torch.manual_seed(0)
    net = SongUNetConfig(img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
    teacher = Teacher(edm_precond(net))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    config = DistillConfig(batch_size=4, total_nimg=1000, precision="bf16", **cfg)
    if method == "sid":
        return Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=0)]
    return Distiller(teacher, G, fake, losses, config, data=_real_stream(config.batch_size // config.rounds, (3, 8, 8)))


@pytest.mark.parametrize("cfg", [{}, {"micro_batch": 2}, {"channels_last": True}], ids=["one-round", "two", "nhwc"])
@pytest.mark.parametrize("method", ["sid", "sida"])
def test_precast_weights_repeat_the_run_that_casts_at_every_use(method, cfg):
    """``precast_weights``: three bf16 iterations reading the copies (refreshed at each iteration's start and after
    the fake score's update) train as the casts at every use do. SiD: bit for bit. SiDA: to float32 rounding, since
    its fake score's input layer runs twice in one autocast region, where autocast's cached cast summed the two
    weight gradients in bfloat16 and the copies sum them in float32."""
    runs = []
    for precast in (False, True):
        d = _edm_distiller(method, precast_weights=precast, **cfg)
        assert (d.precast is not None) == precast and (not precast or len(d.precast) > 0)
        runs.append((d, [d.step() for _ in range(3)]))
    (a, logs_a), (b, logs_b) = runs
    params_a, params_b = [*a.g_params, *a.f_params], [*b.g_params, *b.f_params]
    untrained = _edm_distiller(method, **cfg).g_params
    assert any(not torch.equal(p, q) for p, q in zip(a.g_params, untrained, strict=True))  # the generator trained
    if method == "sid":
        assert all(torch.equal(p, q) for p, q in zip(params_a, params_b, strict=True))
        assert all(torch.equal(logs_a[i][k], logs_b[i][k]) for i in range(3) for k in logs_a[i])
    else:
        for p, q in zip(params_a, params_b, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_precast_weights_follow_a_load(tmp_path):
    """The copies are refreshed at the start of each iteration, so a checkpoint loaded between steps is what the
    next iteration computes with: the resumed run repeats the uninterrupted one bit for bit (SiD, bf16)."""
    whole = _edm_distiller("sid", precast_weights=True)
    for _ in range(3):
        whole.step()
    first = _edm_distiller("sid", precast_weights=True)
    first.step()
    first.save(tmp_path / "state")
    resumed = _edm_distiller("sid", precast_weights=True, seed=0)
    resumed.step()  # the copies now hold this run's own weights, which the load replaces
    resumed.load(tmp_path / "state")
    for _ in range(2):
        resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(whole.g_params + whole.f_params, resumed.g_params + resumed.f_params))


def test_precast_weights_refusals():
    with pytest.raises(ValueError, match="precast_weights keeps bf16 or fp16 copies"):
        DistillConfig(precast_weights=True)
    with pytest.raises(ValueError, match=r"not been tested under torch\.compile"):
        DistillConfig(precast_weights=True, precision="bf16", compile="blocks")


def test_precast_weights_released_gradients_are_sanitized():
    """The weight gradients released in one flat buffer go through the reference's NaN/Inf rule like the others: a
    NaN and an Inf planted in that buffer after each backward pass leave every parameter finite."""
    d = _edm_distiller("sid", precast_weights=True)
    assert d._hold_gradients  # one process: the gradients are held and released in one batch
    release, planted = d.precast.release_gradients, []

    def poisoned():
        flat, viewed = release()
        if flat is not None and viewed:
            flat[0], flat[-1] = float("nan"), float("inf")
            planted.append(len(viewed))
        return flat, viewed

    d.precast.release_gradients = poisoned
    for _ in range(2):
        d.step()
    assert planted and all(torch.isfinite(p).all() for p in [*d.g_params, *d.f_params])
