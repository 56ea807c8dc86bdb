"""Parity of the fused Triton loss kernels with the functional reference, forward and backward.

GPU tests are marked ``kernels`` and skip without CUDA + Triton. One CPU test runs a few small cases through
Triton's interpreter (``TRITON_INTERPRET=1``) in a subprocess, when Triton is importable and its interpreter
works with the installed numpy. Running this file as a script executes those small interpreter cases.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.losses import dispatch
from scoredistill.losses import functional as ref

SHAPES = [(3, 3, 7, 5), (32, 3, 32, 32), (8, 4, 64, 64), (5, 17)]
SMALL_SHAPES = [(3, 3, 7, 5), (5, 17), (4, 2, 40, 40)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


# ------------------------------------------------------------------------------------------------------ helpers


def _close(actual: torch.Tensor | None, expected: torch.Tensor | None, rtol: float, what: str, like=None) -> None:
    """Relative closeness, with the absolute floor scaled by the reference's magnitude (sums cancel).

    With ``like`` (a tensor), a missing gradient (``None``) on either side stands for zeros shaped like it.
    """
    if like is not None:
        actual = torch.zeros_like(like) if actual is None else actual
        expected = torch.zeros_like(like) if expected is None else expected
    assert (actual is None) == (expected is None), what
    if expected is None:
        return
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double().cpu(), expected.double().cpu()
    assert torch.equal(torch.isfinite(a), torch.isfinite(e)), f"{what}: non-finite pattern differs"
    fin = torch.isfinite(e)
    scale = e[fin].abs().max().item() if fin.any() else 1.0
    torch.testing.assert_close(a[fin], e[fin], rtol=rtol, atol=rtol * max(scale, 1e-12), msg=what)


def _poison(ts: list[torch.Tensor], batch: int) -> None:
    """Sample 1: a NaN in the first tensor; the last sample: an inf in the last tensor (when B allows)."""
    with torch.no_grad():
        if batch > 2:
            ts[0].view(batch, -1)[1, 3] = float("nan")
            ts[-1].view(batch, -1)[batch - 1, 0] = float("inf")


def _make(shape, dtype, device, n, *, poison: bool, channels_last: bool = False, seed: int = 0, layout: str = ""):
    """``n`` random ``[B, ...]`` leaves. ``layout``: "" (contiguous; channels_last when ``channels_last``), "mixed"
    (the first tensor channels_last, the others contiguous) or "strided" (every tensor a non-contiguous view)."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=g).to(dtype) for _ in range(n)]
    if poison:
        _poison(out, shape[0])
    out = [t.to(device) for t in out]
    if channels_last and len(shape) == 4:
        out = [t.contiguous(memory_format=torch.channels_last) for t in out]
    if layout == "mixed" and len(shape) == 4:
        out[0] = out[0].contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # same values, every second element of a buffer twice as long along the last dim
        out = [torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)[..., 0] for t in out]
        assert not out[0].is_contiguous()
        return [t.detach().requires_grad_() for t in out]
    return [t.requires_grad_() for t in out]


def _grads(outputs, inputs, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for o in outputs:
        if o is not None:
            c = torch.rand(o.shape, generator=g).to(o.device) + 0.5
            total = total + (o * c).sum()
    return torch.autograd.grad(total, inputs, allow_unused=True)


def check_sid(
    shape,
    dtype,
    device,
    *,
    alpha: float,
    with_logits: bool,
    poison: bool,
    channels_last: bool = False,
    layout: str = "",
    use: tuple[int, ...] = (0, 2),
):
    """Run the fused and the reference generator terms on the same inputs and compare values and gradients.

    ``use``: which outputs (0: sid, 2: adv) enter the loss that is differentiated.
    """
    from scoredistill.kernels import sid_triton

    rtol = TOL[dtype]
    x_g, d_real, d_fake = _make(shape, dtype, device, 3, poison=poison, channels_last=channels_last, layout=layout)
    inputs = [x_g, d_real, d_fake]
    logits = None
    if with_logits:
        g = torch.Generator().manual_seed(7)
        logits = (3 * torch.randn((shape[0], 1, 4, 4), generator=g)).to(dtype)
        with torch.no_grad():
            logits[0, 0, 0, 0] = 20.0  # outside the clamp: zero gradient there
            if poison and shape[0] > 3:
                logits[2, 0, 1, 1] = float("nan")
        logits = logits.to(device).requires_grad_()
        inputs.append(logits)
    out_ref = ref.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha, logits_fake=logits)
    out_ker = sid_triton.sid_generator_terms(x_g, d_real, d_fake, alpha=alpha, logits_fake=logits)
    assert out_ker[0].grad_fn is not None and "SiDFunction" in type(out_ker[0].grad_fn).__name__
    assert not out_ker[1].requires_grad
    for name, a, e in zip(("sid", "weight", "adv"), out_ker, out_ref, strict=True):
        _close(a, e, rtol, f"{name} {shape} {dtype} alpha={alpha}")
        if a is not None:
            assert torch.isfinite(a).all(), name
    if not any(out_ref[i] is not None for i in use):
        return
    g_ref = _grads([out_ref[i] for i in use], inputs)
    g_ker = _grads([out_ker[i] for i in use], inputs)
    for name, a, e, t in zip(("x_g", "d_real", "d_fake", "logits"), g_ker, g_ref, inputs, strict=False):
        _close(a, e, rtol, f"grad {name} {shape} {dtype} alpha={alpha}", like=t)
        if a is not None:
            assert torch.isfinite(a).all(), f"grad {name} not finite"
    if poison and shape[0] > 2 and 0 in use:
        assert out_ker[0][1] == 0 and out_ker[1][1] == 0
        assert (g_ker[0].reshape(shape[0], -1)[1] == 0).all()


def check_dsm(
    shape,
    dtype,
    device,
    *,
    with_logits: bool,
    poison: bool,
    x0_grad: bool,
    channels_last: bool = False,
    layout: str = "",
    use: tuple[int, ...] = (0, 1),
):
    """Run the fused and the reference fake-score terms on the same inputs and compare values and gradients.

    ``use``: which outputs (0: dsm, 1: disc) enter the loss that is differentiated.
    """
    from scoredistill.kernels import dsm_triton

    rtol = TOL[dtype]
    denoised, x0 = _make(shape, dtype, device, 2, poison=poison, channels_last=channels_last, seed=3, layout=layout)
    if not x0_grad:
        x0 = x0.detach()
    g = torch.Generator().manual_seed(5)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(shape[0], generator=g))
    if poison and shape[0] > 3:
        sigma[2] = float("inf")
    sigma = sigma.to(device)
    inputs = [denoised] + ([x0] if x0_grad else [])
    lr = lf = None
    if with_logits:
        lr = torch.randn((shape[0], 1, 3, 3), generator=g).to(dtype)
        lf = torch.randn((shape[0], 1, 3, 3), generator=g).to(dtype)
        if poison and shape[0] > 3:
            lf[3, 0, 0, 0] = float("nan")
        lr, lf = lr.to(device).requires_grad_(), lf.to(device).requires_grad_()
        inputs += [lr, lf]
    out_ref = ref.fake_score_terms(denoised, x0, sigma, logits_real=lr, logits_fake=lf)
    out_ker = dsm_triton.fake_score_terms(denoised, x0, sigma, logits_real=lr, logits_fake=lf)
    assert "DSMFunction" in type(out_ker[0].grad_fn).__name__
    for name, a, e in zip(("dsm", "disc"), out_ker, out_ref, strict=True):
        _close(a, e, rtol, f"{name} {shape} {dtype}")
    if not any(out_ref[i] is not None for i in use):
        return
    g_ref = _grads([out_ref[i] for i in use], inputs)
    g_ker = _grads([out_ker[i] for i in use], inputs)
    for i, (a, e, t) in enumerate(zip(g_ker, g_ref, inputs, strict=True)):
        _close(a, e, rtol, f"dsm grad #{i} {shape} {dtype}", like=t)
        if a is not None:
            assert torch.isfinite(a).all(), f"dsm grad #{i} not finite"


# ---------------------------------------------------------------------------------------------------- GPU tests


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("alpha", [1.0, 1.2])
@pytest.mark.parametrize("with_logits", [False, True])
@pytest.mark.parametrize("poison", [False, True])
def test_sid_parity_cuda(shape, dtype, alpha, with_logits, poison):
    check_sid(shape, dtype, "cuda", alpha=alpha, with_logits=with_logits, poison=poison)


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_logits", [False, True])
@pytest.mark.parametrize("poison", [False, True])
@pytest.mark.parametrize("x0_grad", [False, True])
def test_dsm_parity_cuda(shape, dtype, with_logits, poison, x0_grad):
    check_dsm(shape, dtype, "cuda", with_logits=with_logits, poison=poison, x0_grad=x0_grad)


@pytest.mark.kernels
@needs_kernels
def test_fp16_and_channels_last_cuda():
    check_sid((4, 3, 16, 16), torch.float16, "cuda", alpha=1.2, with_logits=True, poison=True, channels_last=True)
    check_dsm((4, 3, 16, 16), torch.float16, "cuda", with_logits=True, poison=True, x0_grad=True, channels_last=True)
    check_sid((32, 3, 32, 32), torch.float32, "cuda", alpha=1.0, with_logits=False, poison=True, channels_last=True)


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("layout", ["mixed", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts_cuda(layout, dtype):
    """Mixed memory formats and non-contiguous views (copied first) give the reference's values and gradients."""
    for shape in [(32, 3, 32, 32), (3, 3, 7, 5)]:
        check_sid(shape, dtype, "cuda", alpha=1.2, with_logits=True, poison=True, layout=layout)
        check_dsm(shape, dtype, "cuda", with_logits=True, poison=True, x0_grad=True, layout=layout)


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("one_launch", [True, False])
def test_partial_use_and_two_launch_path_cuda(monkeypatch, one_launch):
    """Only one of the outputs differentiated (the other's gradient is None), on both forward paths."""
    from scoredistill.kernels import triton_utils

    monkeypatch.setattr(triton_utils, "ONE_LAUNCH", one_launch)
    for shape in [(32, 3, 32, 32), (5, 17), (8, 4, 64, 64)]:
        for use in [(0,), (2,), (0, 2)]:
            check_sid(shape, torch.float32, "cuda", alpha=1.0, with_logits=True, poison=True, use=use)
        for use in [(0,), (1,), (0, 1)]:
            check_dsm(shape, torch.float32, "cuda", with_logits=True, poison=True, x0_grad=False, use=use)


def _sida_step(x, r, f, lg, sigma):
    from scoredistill.kernels import dsm_triton, sid_triton

    sid, w, adv = sid_triton.sid_generator_terms(x, r, f, alpha=1.0, logits_fake=lg)
    dsm, disc = dsm_triton.fake_score_terms(r, x.detach(), sigma, logits_real=lg, logits_fake=lg * 0.5)
    outs = (sid, w, adv, dsm, disc)
    grads = torch.autograd.grad(sid.sum() + 0.3 * adv.sum() + dsm.sum() + 0.7 * disc.sum(), (x, r, f, lg))
    return [t.detach().clone() for t in outs + tuple(grads)]


def _sida_inputs(batch: int = 16):
    g = torch.Generator(device="cuda").manual_seed(11)
    x, r, f = (torch.randn(batch, 3, 32, 32, device="cuda", generator=g).requires_grad_() for _ in range(3))
    lg = (3 * torch.randn(batch, 1, 8, 8, device="cuda", generator=g)).requires_grad_()
    sigma = torch.rand(batch, device="cuda", generator=g) + 0.1
    with torch.no_grad():
        x[1, 0, 0, 0] = float("nan")
    return x, r, f, lg, sigma


@pytest.mark.kernels
@needs_kernels
def test_deterministic_cuda():
    """Fixed-order reductions: two calls give bitwise identical values and gradients (no atomics in the sums)."""
    args = _sida_inputs()
    first, second = _sida_step(*args), _sida_step(*args)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("fresh_counters", [False, True])
def test_cuda_graph_replay_cuda(monkeypatch, fresh_counters):
    """Captured in a CUDA graph and replayed, the kernels give the eager results again, replay after replay.

    ``fresh_counters``: no arrival counter exists yet when the capture starts, so the forward falls back to its
    two-launch path inside the graph.
    """
    from scoredistill.kernels import triton_utils

    args = _sida_inputs()
    monkeypatch.setattr(triton_utils, "ONE_LAUNCH", False)
    _sida_step(*args)  # compile the two-launch kernels outside the capture
    monkeypatch.setattr(triton_utils, "ONE_LAUNCH", True)
    want = _sida_step(*args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _sida_step(*args)
    torch.cuda.current_stream().wait_stream(side)
    if fresh_counters:
        monkeypatch.setattr(triton_utils, "_counters", {})
        monkeypatch.setattr(triton_utils, "_counter_slots", {})
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _sida_step(*args)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(got, want, strict=True):
            if fresh_counters:  # another kernel (the two-launch path): the same sums, maybe other FMA contractions
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(a, b)
    if not fresh_counters:  # every counter slot is back to zero after the replays
        assert all(int(t.abs().sum()) == 0 for t in triton_utils._counters.values())


@pytest.mark.kernels
@needs_kernels
def test_all_samples_masked_cuda():
    from scoredistill.kernels import sid_triton

    x = torch.full((4, 3, 8, 8), float("nan"), device="cuda", requires_grad=True)
    r, f = torch.zeros_like(x, requires_grad=True), torch.zeros_like(x, requires_grad=True)
    lg = torch.zeros((4, 1, 2, 2), device="cuda", requires_grad=True)
    sid, w, adv = sid_triton.sid_generator_terms(x, r, f, alpha=1.0, logits_fake=lg)
    assert (sid == 0).all() and (w == 0).all() and (adv == 0).all()
    (sid.sum() + adv.sum()).backward()
    assert (x.grad == 0).all() and (r.grad == 0).all() and (lg.grad == 0).all()


@pytest.mark.kernels
@needs_kernels
def test_dispatch_cuda(monkeypatch):
    x, r, f = (torch.randn(2, 3, 4, 4, device="cuda", requires_grad=True) for _ in range(3))
    sid, _, _ = dispatch.sid_generator_terms(x, r, f, alpha=1.2)
    assert "SiDFunction" in type(sid.grad_fn).__name__
    sid, _, _ = dispatch.sid_generator_terms(x, r, f, alpha=1.2, use_kernels=False)
    assert "SiDFunction" not in type(sid.grad_fn).__name__
    sigma = torch.ones(2, device="cuda")
    dsm, _ = dispatch.fake_score_terms(r, x.detach(), sigma)
    assert "DSMFunction" in type(dsm.grad_fn).__name__
    monkeypatch.setenv("SCOREDISTILL_KERNELS", "0")
    sid, _, _ = dispatch.sid_generator_terms(x, r, f, alpha=1.2)
    assert "SiDFunction" not in type(sid.grad_fn).__name__
    dsm, _ = dispatch.fake_score_terms(r, x.detach(), sigma)
    assert "DSMFunction" not in type(dsm.grad_fn).__name__


@pytest.mark.kernels
@needs_kernels
def test_no_host_sync_cuda():
    from scoredistill.kernels import dsm_triton, sid_triton

    x, r, f = (torch.randn(8, 3, 16, 16, device="cuda", requires_grad=True) for _ in range(3))
    lg = torch.randn(8, 1, 2, 2, device="cuda", requires_grad=True)
    sigma = torch.rand(8, device="cuda") + 0.1
    sid_triton.sid_generator_terms(x, r, f, alpha=1.0, logits_fake=lg)  # compile outside the check
    dsm_triton.fake_score_terms(r, x.detach(), sigma, logits_real=lg, logits_fake=lg)
    torch.cuda.set_sync_debug_mode("error")
    try:
        sid, _, adv = sid_triton.sid_generator_terms(x, r, f, alpha=1.0, logits_fake=lg)
        dsm, disc = dsm_triton.fake_score_terms(r, x.detach(), sigma, logits_real=lg, logits_fake=lg)
        (sid.sum() + adv.sum() + dsm.sum() + disc.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------------------------------- CPU tests


def test_dispatch_switch_cpu(monkeypatch):
    """The opt-out switches pick the reference; CPU tensors always get the reference."""
    monkeypatch.setattr(kernels, "available", lambda: True)
    fake_cuda = SimpleNamespace(is_cuda=True)
    monkeypatch.delenv("SCOREDISTILL_KERNELS", raising=False)
    assert kernels._use_fused(fake_cuda, None)
    assert not kernels._use_fused(fake_cuda, False)
    monkeypatch.setenv("SCOREDISTILL_KERNELS", "0")
    assert not kernels._use_fused(fake_cuda, None)
    monkeypatch.delenv("SCOREDISTILL_KERNELS")
    x, r, f = (torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(3))
    assert not kernels._use_fused(x, None)
    got = dispatch.sid_generator_terms(x, r, f, alpha=1.2)
    want = ref.sid_generator_terms(x, r, f, alpha=1.2)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def _interpreter_skip_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    import numpy as np

    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):
        # numpy 2.4 refuses int() on 1-element arrays, which Triton's interpreter (<= 3.6) does for runtime loop
        # bounds ("only 0-dimensional arrays can be converted to Python scalars").
        return f"Triton's interpreter breaks on numpy {np.__version__} (runtime loop bounds); needs numpy < 2.4"
    return None


def run_interpreter_cases() -> None:
    """Small parity cases on CPU through ``TRITON_INTERPRET=1`` (set before Triton is imported)."""
    for shape in SMALL_SHAPES:
        for alpha in (1.0, 1.2):
            check_sid(shape, torch.float32, "cpu", alpha=alpha, with_logits=alpha == 1.0, poison=True)
        check_sid(shape, torch.bfloat16, "cpu", alpha=1.2, with_logits=True, poison=False)
        check_dsm(shape, torch.float32, "cpu", with_logits=True, poison=True, x0_grad=True)
        check_dsm(shape, torch.bfloat16, "cpu", with_logits=False, poison=False, x0_grad=False)
    check_sid((4, 3, 8, 8), torch.float32, "cpu", alpha=1.2, with_logits=True, poison=True, channels_last=True)
    for layout in ("mixed", "strided"):
        check_sid((4, 2, 40, 40), torch.float32, "cpu", alpha=1.2, with_logits=True, poison=True, layout=layout)
        check_dsm((4, 2, 40, 40), torch.float32, "cpu", with_logits=True, poison=True, x0_grad=True, layout=layout)
    from scoredistill.kernels import triton_utils

    for one_launch in (True, False):
        triton_utils.ONE_LAUNCH = one_launch
        for use in [(0,), (2,)]:
            check_sid((4, 2, 40, 40), torch.float32, "cpu", alpha=1.0, with_logits=True, poison=True, use=use)
        for use in [(0,), (1,), (0, 1)]:
            check_dsm((4, 2, 40, 40), torch.float32, "cpu", with_logits=True, poison=True, x0_grad=False, use=use)
    triton_utils.ONE_LAUNCH = True


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    reason = _interpreter_skip_reason()
    if reason:
        pytest.skip(reason)
    run_under_interpreter(__file__)


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"
    run_interpreter_cases()
    print("interpreter parity: ok")
