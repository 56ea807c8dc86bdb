"""Box resampling kernels (:mod:`scoredistill.kernels.resample_triton`) against ``avg_pool2d`` / nearest up-sampling.

GPU tests skip without CUDA + Triton. A CPU test runs small cases through Triton's interpreter
(``TRITON_INTERPRET=1``) in a subprocess; running this file as a script executes those cases.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.networks.layers import Conv2d

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")


def check(shape, dtype, device: str, *, up: bool, channels_last: bool, seed: int = 0) -> None:
    """Fused forward and input gradient vs the native op in float32 on the same (rounded) inputs."""
    from scoredistill.kernels.resample_triton import box_down, box_up

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_shape = (*shape[:2], 2 * shape[2], 2 * shape[3]) if up else (*shape[:2], shape[2] // 2, shape[3] // 2)
    dy = torch.randn(out_shape, generator=g).to(device)
    results = []
    for fused in (False, True):
        xi = x.to(device).detach().requires_grad_()
        for _ in range(2 if fused else 1):  # JIT launch, then the compiled-kernel handle (on CUDA)
            xi.grad = None
            if fused:
                y = box_up(xi) if up else box_down(xi)
                assert y.dtype == dtype and y.shape == out_shape
                assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            else:
                xf = xi.float()
                y = F.interpolate(xf, scale_factor=2, mode="nearest") if up else F.avg_pool2d(xf, 2)
            (y.float() * dy).sum().backward()
        results.append((y.float(), xi.grad.float()))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for name, ref, got in zip(("y", "dx"), *results):
        err = (ref - got).abs().max() / ref.abs().max().clamp_min(1e-6)
        assert err.item() < tol, (shape, dtype, up, channels_last, name, err.item())


def run_interpreter_cases() -> None:
    for shape, up, cl in itertools.product([(2, 8, 4, 6), (1, 3, 5, 7), (2, 70, 3, 2)], (False, True), (False, True)):
        check(shape, torch.float32, "cpu", up=up, channels_last=cl)
    check((2, 16, 6, 6), torch.bfloat16, "cpu", up=False, channels_last=True)


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


def test_dispatch_takes_only_channels_last_cuda_tensors(monkeypatch):
    x = torch.randn(2, 8, 4, 4)
    assert not kernels.fused_resample_available(x.contiguous(memory_format=torch.channels_last))  # CPU
    if torch.cuda.is_available() and kernels.available():
        xc = x.cuda()
        assert not kernels.fused_resample_available(xc)  # contiguous: PyTorch's kernels
        assert kernels.fused_resample_available(xc.contiguous(memory_format=torch.channels_last))
        assert not kernels.fused_resample_available(xc.contiguous(memory_format=torch.channels_last), False)
        monkeypatch.setenv("SCOREDISTILL_KERNELS", "0")
        assert not kernels.fused_resample_available(xc.contiguous(memory_format=torch.channels_last))


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 192, 64, 64), (3, 5, 7, 9), (2, 768, 8, 8)])
def test_cuda_parity(shape, dtype, channels_last):
    for up in (False, True):
        check(shape, dtype, "cuda", up=up, channels_last=channels_last)


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("up", [False, True])
def test_conv2d_resampling_takes_the_kernels(up):
    conv = Conv2d(64, 32, 3, up=up, down=not up).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    fused = conv(x)
    conv.use_kernels = False
    torch.testing.assert_close(fused, conv(x), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    run_interpreter_cases()
    print("ok")
