"""The candidate 3x3 convolution (:mod:`scoredistill.kernels.conv_triton`): parity with ``F.conv2d`` and its dispatch.

The reference is ``F.conv2d`` in float32 on the same inputs: the output and the input, weight and bias gradients.
GPU tests skip without CUDA + Triton. A CPU test runs the kernel through Triton's interpreter (``TRITON_INTERPRET=1``)
in a subprocess, in float32 (the interpreter's ``tl.dot`` multiplies bf16 operands as raw bits) and with explicit
tilings (the interpreter cannot autotune); running this file as a script executes those cases.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.networks.layers import Conv2d

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


def check(shape, co, dtype, device, *, config=None, bias=True, weight_layout="channels_last", tol=1e-5) -> float:
    """Output and all gradients against ``F.conv2d`` in float32; returns the largest relative difference."""
    from scoredistill.kernels.conv_triton import conv3x3

    n, ci, h, w = shape
    g = torch.Generator().manual_seed(n * 1000 + ci + co + h)
    x = torch.randn(n, ci, h, w, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(co, ci, 3, 3, generator=g) * (9 * ci) ** -0.5).to(device, dtype)
    if weight_layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last)
    b = (torch.randn(co, generator=g) * 0.1).to(device, dtype) if bias else None
    dy = torch.randn(n, co, h, w, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    leaves = [t.detach().requires_grad_() for t in (x, weight, b) if t is not None]
    reference = [t.detach().float().requires_grad_() for t in leaves]
    y_ref = F.conv2d(reference[0], reference[1], reference[2] if bias else None, padding=1)
    grads_ref = torch.autograd.grad(y_ref, reference, dy.float())
    y = conv3x3(leaves[0], leaves[1], leaves[2] if bias else None, config=config)
    assert y.dtype == dtype and y.shape == y_ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(y, leaves, dy)
    worst = 0.0
    for name, got, want in zip(["y", "dx", "dw", "db"], [y, *grads], [y_ref, *grads_ref], strict=False):
        assert got.dtype == dtype, name
        got, want = got.detach().float(), want.detach()
        diff = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        assert diff <= tol, (shape, co, dtype, name, diff)
        worst = max(worst, diff)
    return worst


def run_interpreter_cases() -> None:
    # Partial row and column tiles, several samples per row tile (the taps' borders between samples), BLOCK_K
    # below the channels (several K blocks per tap), contiguous weights (strided B loads) and no bias.
    check((2, 32, 5, 6), 48, torch.float32, "cpu", config=(16, 32, 16))
    check((1, 64, 4, 7), 32, torch.float32, "cpu", config=(32, 16, 32), bias=False)
    check((3, 32, 3, 3), 32, torch.float32, "cpu", config=(16, 32, 32), weight_layout="contiguous")
    # input gradient with more output than input channels (its K is CO): BLOCK_K must divide both
    check((2, 16, 4, 4), 48, torch.float32, "cpu", config=(16, 16, 16))
    # the input gradient alone (what bench_conv_fusion times) is the transposed convolution
    from scoredistill.kernels.conv_triton import conv3x3_input_grad

    g = torch.Generator().manual_seed(5)
    dy = torch.randn(2, 32, 5, 4, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, generator=g)
    torch.testing.assert_close(conv3x3_input_grad(dy, w, config=(16, 16, 32)), F.conv_transpose2d(dy, w, padding=1))
    # the forward alone on the kernel, every gradient from aten.convolution_backward (TRITON_INPUT_GRAD off)
    from scoredistill.kernels import conv_triton

    conv_triton.TRITON_INPUT_GRAD = False
    try:
        check((2, 32, 5, 6), 48, torch.float32, "cpu", config=(16, 32, 16))
        check((1, 64, 4, 7), 32, torch.float32, "cpu", config=(32, 16, 32), bias=False)
    finally:
        conv_triton.TRITON_INPUT_GRAD = True


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


def test_supported_takes_only_what_the_kernel_computes():
    conv_triton = pytest.importorskip("scoredistill.kernels.conv_triton", reason="needs Triton")

    def operands(n=2, ci=64, co=64, h=16, w=16, dtype=torch.bfloat16, cl=True, k=3):
        x = torch.zeros(n, ci, h, w, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if cl else x, torch.zeros(co, ci, k, k, dtype=dtype)

    assert conv_triton.supported(*operands())
    assert conv_triton.supported(*operands(dtype=torch.float16, h=32, w=8))
    assert not conv_triton.supported(*operands(dtype=torch.float32))  # tl.dot would round float32 to TF32
    assert not conv_triton.supported(*operands(cl=False))
    assert not conv_triton.supported(*operands(k=1))
    assert not conv_triton.supported(*operands(ci=48))  # channel counts in multiples of 32
    assert not conv_triton.supported(*operands(co=40))
    assert not conv_triton.supported(*operands(h=8, w=8))  # below MIN_HW: cuDNN was faster
    x, w = operands()
    assert not conv_triton.supported(x, w.to(torch.float16))
    assert not conv_triton.supported(x[:, :, :, :8], w)  # a view that is not dense


def test_conv3x3_refuses_operands_it_cannot_read():
    conv_triton = pytest.importorskip("scoredistill.kernels.conv_triton", reason="needs Triton")
    x = torch.zeros(1, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"weight must be \[CO, 32, 3, 3\]"):
        conv_triton.conv3x3(x, torch.zeros(32, 16, 3, 3))
    with pytest.raises(ValueError, match=r"bias must be \[32\]"):
        conv_triton.conv3x3(x, torch.zeros(32, 32, 3, 3), torch.zeros(16))
    with pytest.raises(ValueError, match="dense channels_last"):
        conv_triton.conv3x3(x.contiguous(), torch.zeros(32, 32, 3, 3))
    with pytest.raises(ValueError, match="must share a dtype"):
        conv_triton.conv3x3(x, torch.zeros(32, 32, 3, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must share a dtype"):
        conv_triton.conv3x3_input_grad(x, torch.zeros(32, 32, 3, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"weight must be \[32, CI, 3, 3\]"):
        conv_triton.conv3x3_input_grad(x, torch.zeros(16, 32, 3, 3))
    with pytest.raises(ValueError, match="dense channels_last gradient"):
        conv_triton.conv3x3_input_grad(x.contiguous(), torch.zeros(32, 32, 3, 3))


def test_conv2d_takes_the_kernel_only_where_it_is_available(monkeypatch):
    # The layer's dispatch (faked here: no CUDA): its 3x3 convolution goes to conv3x3 with its own weight and bias
    # when the switch and the operands allow, and to F.conv2d otherwise (a 1x1 convolution, or the switch off).
    conv_triton = pytest.importorskip("scoredistill.kernels.conv_triton", reason="needs Triton")
    assert conv_triton.FUSED_CONV3X3 is False  # a candidate: off by default
    calls = []
    monkeypatch.setattr(kernels, "_use_fused", lambda t, use_kernels: use_kernels is not False)
    monkeypatch.setattr(conv_triton, "supported", lambda x, w: True)
    monkeypatch.setattr(conv_triton, "conv3x3", lambda x, w, b: calls.append((w, b)) or F.conv2d(x, w, b, padding=1))
    conv = Conv2d(8, 8, 3, init_bias=1.0)
    x = torch.randn(1, 8, 4, 4)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    assert calls == []  # the switch is off
    monkeypatch.setattr(conv_triton, "FUSED_CONV3X3", True)
    torch.testing.assert_close(conv(x), expected)
    assert len(calls) == 1 and calls[0][0] is conv.weight and calls[0][1] is conv.bias
    conv(x, bias=False)
    assert calls[1][1] is None
    Conv2d(8, 8, 1)(x)
    conv.use_kernels = False
    conv(x)
    assert len(calls) == 2
    conv.use_kernels = None  # inside torch.compile, cuDNN's convolution
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    conv(x)
    assert len(calls) == 2


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("shape,co", [((4, 256, 32, 32), 256), ((3, 256, 16, 16), 256), ((2, 192, 64, 64), 192),
                                      ((2, 128, 16, 16), 256), ((2, 96, 17, 15), 64)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_parity(shape, co, dtype):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for _ in range(2):  # the autotuned first call, then the tuned launch
        check(shape, co, dtype, "cuda", tol=2e-2)
    check(shape, co, dtype, "cuda", tol=2e-2, bias=False, weight_layout="contiguous")


@needs_kernels
@pytest.mark.kernels
def test_cifar10_network_with_the_candidate_matches_cudnn(monkeypatch):
    # The CIFAR-10 DDPM++ backbone in bf16 channels_last: output and input gradient with the 3x3 convolutions on
    # the kernel agree with cuDNN's to bf16 rounding.
    from helpers import randomise
    from scoredistill.kernels import conv_triton
    from scoredistill.roles.precond import edm_precond

    torch.manual_seed(0)
    net = randomise(edm_precond("cifar10-32x32-uncond")).cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.3, 1.0, 3.0, 10.0], device="cuda")
    outputs, launched = [], []
    real_conv3x3 = conv_triton.conv3x3
    monkeypatch.setattr(conv_triton, "conv3x3", lambda *args: launched.append(1) or real_conv3x3(*args))
    for on in (False, True, True):
        monkeypatch.setattr(conv_triton, "FUSED_CONV3X3", on)
        xx = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(xx, sigma)
        (grad,) = torch.autograd.grad(y.float().square().sum(), xx)
        outputs.append((y.float(), grad.float()))
    assert launched  # the kernel ran
    for a, b in zip(outputs[0], outputs[2], strict=True):
        assert torch.isfinite(b).all() and (a - b).norm() <= 2e-2 * a.norm()


if __name__ == "__main__":
    import os

    os.environ["TRITON_INTERPRET"] = "1"
    run_interpreter_cases()
    print("conv3x3 interpreter parity: ok")
