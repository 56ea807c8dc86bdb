"""The decoders' skip concatenation: the channels_last Triton copy (the default on CUDA) and its dispatch.

GPU tests skip without CUDA + Triton. A CPU test runs the kernel through Triton's interpreter
(``TRITON_INTERPRET=1``) in a subprocess; running this file as a script executes those cases.
"""

from __future__ import annotations

import pytest
import torch

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.networks.layers import cat_channels

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


def check(n: int, ca: int, cb: int, h: int, w: int, dtype: torch.dtype, device: str) -> None:
    """The kernel's output and input gradients equal torch.cat's, bit for bit; with ``DENSE_SPLIT`` the gradients
    are dense channels_last tensors, else channel slices of ``dy`` as torch.cat's."""
    from scoredistill.kernels import concat_triton
    from scoredistill.kernels.concat_triton import _CatChannels

    g = torch.Generator().manual_seed(ca * 1000 + cb)
    a, b = (torch.randn(n, c, h, w, generator=g).to(dtype) for c in (ca, cb))
    a, b = (t.to(device).contiguous(memory_format=torch.channels_last).requires_grad_() for t in (a, b))
    dy = torch.randn(n, ca + cb, h, w, generator=g).to(device, dtype)
    expected = torch.cat([a, b], dim=1)
    ga, gb = torch.autograd.grad(expected, (a, b), dy)
    dense_before = concat_triton.DENSE_SPLIT
    try:
        for dense, _ in ((False, 0), (False, 1), (True, 0), (True, 1)):  # JIT, then the compiled handle (CUDA)
            concat_triton.DENSE_SPLIT = dense
            y = _CatChannels.apply(a, b)
            assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
            assert torch.equal(y, expected), (n, ca, cb, h, w, dtype)
            fa, fb = torch.autograd.grad(y, (a, b), dy.contiguous(memory_format=torch.channels_last))
            assert torch.equal(fa, ga) and torch.equal(fb, gb)
            assert all(g.is_contiguous(memory_format=torch.channels_last) for g in (fa, fb)) is dense
            assert all(g.dtype == dtype and g.device == a.device for g in (fa, fb))
            # A gradient that is not dense channels_last keeps the slices.
            fa, fb = torch.autograd.grad(_CatChannels.apply(a, b), (a, b), dy.contiguous())
            assert torch.equal(fa, ga) and torch.equal(fb, gb)
    finally:
        concat_triton.DENSE_SPLIT = dense_before


def run_interpreter_cases() -> None:
    check(2, 8, 8, 4, 4, torch.float32, "cpu")
    check(3, 130, 70, 5, 3, torch.float32, "cpu")  # several channel blocks; the split inside one of them
    check(1, 3, 200, 7, 9, torch.float32, "cpu")  # several pixel blocks (63 > 32)
    check(2, 64, 32, 6, 6, torch.bfloat16, "cpu")


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


def test_off_the_kernel_it_is_torch_cat():
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    assert torch.equal(cat_channels(a, b), torch.cat([a, b], dim=1))
    assert not kernels.fused_cat_available(a.contiguous(memory_format=torch.channels_last), b)  # CPU


def test_unsupported_operands_are_refused():
    pytest.importorskip("triton")
    from scoredistill.kernels.concat_triton import cat_channels as fused
    from scoredistill.kernels.concat_triton import supported

    cl = torch.channels_last
    a = torch.randn(2, 4, 3, 3).contiguous(memory_format=cl)
    assert supported(a, torch.randn(2, 6, 3, 3).contiguous(memory_format=cl))
    assert not supported(a, torch.randn(2, 6, 3, 3))  # contiguous, not channels_last
    assert not supported(a, torch.randn(2, 6, 3, 4).contiguous(memory_format=cl))  # another spatial size
    assert not supported(a, torch.randn(3, 6, 3, 3).contiguous(memory_format=cl))  # another batch
    assert not supported(a, torch.randn(2, 6, 3, 3, dtype=torch.float64).contiguous(memory_format=cl))
    with pytest.raises(ValueError, match="channels_last"):
        fused(a, torch.randn(2, 6, 3, 3))


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 192, 192, 64, 64), (32, 768, 768, 8, 8), (3, 5, 7, 3, 2)])
def test_cuda_parity(shape, dtype):
    check(*shape, dtype, "cuda")


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_networks_with_the_kernel_equal_the_native_concatenation(preset, monkeypatch):
    """A whole channels_last backbone, forward and input gradient, bit for bit with and without the kernel (and
    with its backward's dense split)."""
    from scoredistill.kernels import concat_triton
    from scoredistill.roles.precond import edm_precond

    torch.manual_seed(0)
    net = edm_precond(preset).cuda().eval().to(memory_format=torch.channels_last)
    res = net.model.config.img_resolution
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(2, device="cuda") % 10, net.label_dim).float()
    x = torch.randn(2, 3, res, res, device="cuda").contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.5, 5.0], device="cuda")
    outputs, calls = [], []
    kernel = concat_triton.cat_channels
    monkeypatch.setattr(concat_triton, "cat_channels", lambda a, b: calls.append(1) or kernel(a, b))
    for fused, dense in ((False, False), (True, False), (True, True)):
        monkeypatch.setattr(concat_triton, "FUSED_CAT", fused)
        monkeypatch.setattr(concat_triton, "DENSE_SPLIT", dense)
        xx = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(xx, sigma, labels)
        (grad,) = torch.autograd.grad(y.square().sum(), xx)
        outputs.append((y, grad))
    assert calls  # the decoder's concatenations took the kernel
    for y, grad in outputs[1:]:
        assert torch.equal(outputs[0][0], y) and torch.equal(outputs[0][1], grad)


if __name__ == "__main__":
    run_interpreter_cases()
    print("ok")
