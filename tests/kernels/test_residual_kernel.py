"""The residual sum with a folded convolution bias: the fused kernel, and UNet blocks that fold their biases.

GPU tests skip without CUDA + Triton. A CPU test runs the kernel through Triton's interpreter
(``TRITON_INTERPRET=1``) in a subprocess; running this file as a script executes those cases.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.networks.layers import GroupNorm, UNetBlock, residual_add

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


def check(
    shape, dtype, device: str, *, channels_last: bool, with_x: bool, scale: float, seed: int = 0, fused_grad=False
) -> None:
    """The fused sum and its gradients vs the float32 composition of native ops on the same inputs; with
    ``fused_grad``, the one-kernel backward (``FUSED_BIAS_GRAD``)."""
    from scoredistill.kernels import residual_triton

    previous, residual_triton.FUSED_BIAS_GRAD = residual_triton.FUSED_BIAS_GRAD, fused_grad
    fused_grad_calls = []
    one_pass = residual_triton._fused_grad
    residual_triton._fused_grad = lambda *args: fused_grad_calls.append(1) or one_pass(*args)
    try:
        _check(shape, dtype, device, channels_last, with_x, scale, seed)
    finally:
        residual_triton.FUSED_BIAS_GRAD, residual_triton._fused_grad = previous, one_pass
    # the one-kernel backward runs exactly where it applies: asked for, and a channels_last gradient
    assert len(fused_grad_calls) == (2 if fused_grad and channels_last and shape[1] > 1 else 0)


def _check(shape, dtype, device, channels_last, with_x, scale, seed) -> None:
    from scoredistill.kernels.residual_triton import _ResidualAdd

    g = torch.Generator().manual_seed(seed)
    h, x = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
    if channels_last:
        h, x = (t.contiguous(memory_format=torch.channels_last) for t in (h, x))
    bias = torch.randn(shape[1], generator=g)
    dy = torch.randn(shape, generator=g).to(device)
    if channels_last:  # the incoming gradient in the layout a channels_last network gives it
        dy = dy.contiguous(memory_format=torch.channels_last)
    results = []
    for fused in (False, True):
        leaves = [t.to(device).detach().requires_grad_() for t in (h, x, bias)]
        hh, xx, bb = leaves
        for _ in range(2 if fused else 1):  # JIT launch, then the compiled-kernel handle (on CUDA)
            for leaf in leaves:
                leaf.grad = None
            if fused:
                y = _ResidualAdd.apply(hh, xx if with_x else None, bb, scale)
                assert y.dtype == dtype and y.stride() == hh.stride()
            else:
                y = (hh.float() + (xx.float() if with_x else 0) + bb.reshape(1, -1, 1, 1)) * scale
            (y.float() * dy).sum().backward()
        results.append([y.float(), hh.grad, xx.grad if with_x else torch.zeros(()), bb.grad])
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, ref, got in zip(("y", "dh", "dx", "dbias"), *results):
        err = (ref.float() - got.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)
        assert err.item() < tol, (shape, dtype, channels_last, with_x, scale, name, err.item())


def run_interpreter_cases() -> None:
    for shape, cl, with_x in itertools.product(
        [(2, 8, 4, 4), (3, 5, 7, 3), (1, 1, 9, 9)], (False, True), (True, False)
    ):
        check(shape, torch.float32, "cpu", channels_last=cl, with_x=with_x, scale=math.sqrt(0.5))
    check((2, 64, 33, 1), torch.float32, "cpu", channels_last=True, with_x=True, scale=1.0)  # several programs
    check((2, 16, 8, 8), torch.bfloat16, "cpu", channels_last=False, with_x=True, scale=1.0)
    for shape, scale, dtype in itertools.product(  # the one-kernel backward: several row programs and channel blocks
        [(2, 8, 4, 4), (3, 130, 19, 11), (1, 3, 5, 5)], (1.0, math.sqrt(0.5)), (torch.float32, torch.bfloat16)
    ):
        check(shape, dtype, "cpu", channels_last=True, with_x=True, scale=scale, fused_grad=True)
    check((3, 130, 19, 11), torch.float32, "cpu", channels_last=False, with_x=False, scale=0.5, fused_grad=True)


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


def test_reference_path_equals_the_unfused_ops():
    g = torch.Generator().manual_seed(0)
    h, x, b = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g), torch.randn(4, generator=g)
    expected = (h + b.reshape(1, 4, 1, 1) + x) * 0.5
    torch.testing.assert_close(residual_add(h, x, b, 0.5), expected, rtol=0, atol=0)
    torch.testing.assert_close(residual_add(h, None, b), h + b.reshape(1, 4, 1, 1), rtol=0, atol=0)


def test_unsupported_operands_are_refused():
    pytest.importorskip("triton")
    from scoredistill.kernels.residual_triton import residual_add as fused
    from scoredistill.kernels.residual_triton import supported

    h = torch.randn(2, 4, 3, 3)
    assert supported(h, h.clone(), torch.zeros(4))
    assert not supported(h, h.contiguous(memory_format=torch.channels_last), torch.zeros(4))  # layouts differ
    assert not supported(h, h.double(), torch.zeros(4))
    assert not supported(h, None, torch.zeros(5))
    with pytest.raises(ValueError, match="bias"):
        fused(h, None, torch.zeros(5))


def _randomised_block(**kwargs) -> UNetBlock:
    # Non-zero biases and last layers everywhere: EDM zero-initialises conv1 and proj, hiding their biases' path.
    block = UNetBlock(kwargs.pop("cin", 16), 16, 8, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5 if p.dim() > 1 else 4))
    return block


@pytest.mark.parametrize(
    "kwargs",
    [
        {"adaptive_scale": True, "attention": True, "num_heads": 2},  # ADM with attention
        {"adaptive_scale": True, "cin": 8, "down": True},  # ADM down-sampling, 1x1 skip convolution
        {"adaptive_scale": False, "skip_scale": math.sqrt(0.5), "attention": True, "num_heads": 1},  # DDPM++
        {"adaptive_scale": False, "skip_scale": math.sqrt(0.5), "up": True},  # DDPM++ up: bias-free resampling skip
    ],
)
@pytest.mark.parametrize("skip_grad_in_norm", [False, True])
def test_block_with_folded_biases_matches(kwargs, skip_grad_in_norm, monkeypatch):
    # The folded path (on CUDA when the fused norms run) forced on CPU, where its native fallbacks run: the same
    # block function, output and every gradient, as the unfolded one (with skip_grad_in_norm's wiring, whose
    # fallback returns the norm's input as it is).
    block = _randomised_block(**dict(kwargs))
    monkeypatch.setattr(block, "skip_grad_in_norm", skip_grad_in_norm)
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, kwargs.get("cin", 16), 8, 8, generator=g), torch.randn(2, 8, generator=g)
    outs = []
    for fold in (False, True):
        monkeypatch.setattr(UNetBlock, "_fold_biases", lambda self, x, fold=fold: fold)
        block.zero_grad()
        xi = x.clone().requires_grad_()
        y = block(xi, emb)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append([y, xi.grad, *(p.grad.clone() for p in block.parameters())])
    for ref, got in zip(*outs):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_skip_grad_in_norm_stays_out_of_torch_compile(monkeypatch):
    # The norm's second output has not been run under torch.compile on a GPU: a compiled block takes the plain path.
    block = _randomised_block(adaptive_scale=False, attention=True, num_heads=1)
    monkeypatch.setattr(UNetBlock, "_fold_biases", lambda self, x: True)
    calls = []
    plain = GroupNorm.forward_with_input
    monkeypatch.setattr(GroupNorm, "forward_with_input", lambda self, x, **kw: calls.append(1) or plain(self, x, **kw))
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 8, generator=g)
    eager = block(x, emb)
    assert len(calls) == 2  # norm0 and the attention's norm2
    calls.clear()
    compiled = torch.compile(block, backend="eager")(x, emb)
    assert calls == [] and torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_blocks_fold_only_where_the_fused_norms_run():
    block = UNetBlock(8, 8, 4)
    assert not block._fold_biases(torch.randn(1, 8, 4, 4))  # CPU: the native ops, unfolded
    if torch.cuda.is_available() and kernels.available():
        assert block._fold_biases(torch.randn(1, 8, 4, 4, device="cuda"))
        block.norm1.use_kernels = False
        assert not block._fold_biases(torch.randn(1, 8, 4, 4, device="cuda"))


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 192, 64, 64), (3, 5, 7, 3), (2, 768, 8, 8)])
@pytest.mark.parametrize("fused_grad", [False, True])
def test_cuda_parity(shape, dtype, channels_last, fused_grad):
    for with_x, scale in ((True, 1.0), (True, math.sqrt(0.5)), (False, 1.0)):
        check(shape, dtype, "cuda", channels_last=channels_last, with_x=with_x, scale=scale, fused_grad=fused_grad)


if __name__ == "__main__":
    run_interpreter_cases()
    print("ok")
