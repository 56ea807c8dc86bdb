"""The optimiser steps' NaN/Inf rule and clipping in one Triton pass (`kernels.sanitize_triton`).

GPU tests skip without CUDA + Triton. A CPU test runs the kernel through Triton's interpreter
(``TRITON_INTERPRET=1``) in a subprocess; running this file as a script executes those cases.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.training import distill

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")
SPECIAL = (float("nan"), float("inf"), -float("inf"), 2e5, -3e5, 0.5, -0.0)


def _grad(shape, dtype, device, *, channels_last=False, seed=0) -> torch.Tensor:
    """Random values of every magnitude with each special value planted several times."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * torch.logspace(-3, 6, 7)[torch.randint(0, 7, shape, generator=g)]
    flat = t.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: 3 * len(SPECIAL)]
    flat[idx] = torch.tensor(SPECIAL).repeat(3)[: idx.numel()]
    t = t.to(dtype).to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _expected(t: torch.Tensor, clip: float | None) -> torch.Tensor:
    e = t.nan_to_num(nan=0.0, posinf=1e5, neginf=-1e5)
    return e if clip is None else e.clamp(-clip, clip)


def check(shape, dtype, device, *, channels_last=False, clip=None, offset=0) -> None:
    """The kernel in place against ``nan_to_num`` then ``clamp`` on the same values, bit for bit; with ``offset``, on
    a view that starts inside a larger buffer whose other elements must stay untouched."""
    from scoredistill.kernels.sanitize_triton import sanitize_

    t = _grad(shape, dtype, device, channels_last=channels_last)
    base = None
    if offset:  # a view of a flat buffer, as the released gradients are
        base = torch.full((offset + t.numel() + 5,), float("nan"), dtype=dtype, device=device)
        view = base[offset : offset + t.numel()].view(t.shape)
        view.copy_(t)
        t = view
    expected = _expected(t.clone(), clip)
    ptr, strides = t.data_ptr(), t.stride()
    assert sanitize_(t, clip) is t
    assert t.data_ptr() == ptr and t.stride() == strides
    assert torch.equal(t, expected), (shape, dtype, channels_last, clip)
    assert torch.equal(t.signbit(), expected.signbit())  # -0.0 kept
    if base is not None:  # nothing outside the view written
        assert base[:offset].isnan().all() and base[offset + t.numel() :].isnan().all()


def run_interpreter_cases() -> None:
    for dtype, clip, cl in itertools.product((torch.float32, torch.bfloat16), (None, 1.0), (False, True)):
        check((3, 5, 4, 6), dtype, "cpu", channels_last=cl, clip=clip)
    check((9001,), torch.float32, "cpu", clip=0.25, offset=37)  # several programs, a masked tail, an offset view
    check((7,), torch.float16, "cpu", clip=None)


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


def test_unsupported_operands_are_refused():
    from scoredistill.kernels import sanitize_triton

    assert not sanitize_triton.supported(torch.zeros(4, 6)[:, ::2])  # strided: not a flat span
    assert not sanitize_triton.supported(torch.zeros(4, dtype=torch.float64))
    assert not sanitize_triton.supported(torch.zeros(0))
    with pytest.raises(ValueError, match="dense"):
        sanitize_triton.sanitize_(torch.zeros(4, 6)[:, ::2])
    with pytest.raises(ValueError, match="positive"):
        sanitize_triton.sanitize_(torch.zeros(4), clip=0.0)
    assert not kernels.fused_sanitize_available(torch.zeros(4))  # CPU tensors take PyTorch's ops


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape, channels_last, offset",
    [((256, 256, 3, 3), True, 0), ((256, 256, 3, 3), False, 1000), ((3_000_017,), False, 3), ((5,), False, 0)],
)
def test_cuda_parity(shape, channels_last, offset, dtype, clip):
    check(shape, dtype, "cuda", channels_last=channels_last, clip=clip, offset=offset)


@pytest.mark.kernels
@needs_kernels
@pytest.mark.parametrize("clip", [None, 1.0])
def test_optimiser_rule_on_cuda_matches_the_cpu_ops(clip, monkeypatch):
    """`_sanitize` on CUDA (the kernel over each large gradient and over the small ones' concatenation) against the
    PyTorch ops on the CPU, on the same gradients; with the kernel switched off, the CUDA ops give the same."""
    shapes = [(300, 300), (7,), (3, 5), (64, 64, 3, 3), (1,), (distill.SMALL_GRAD + 9,)]
    cpu = [_grad(s, torch.float32, "cpu", seed=i, channels_last=len(s) == 4) for i, s in enumerate(shapes)]
    expected = [_expected(t, clip) for t in cpu]
    for one_pass in (True, False):
        monkeypatch.setattr(distill, "ONE_PASS_SANITIZE", one_pass)
        grads = [t.to("cuda") for t in cpu]
        distill._sanitize(grads, clip)
        for got, e in zip(grads, expected, strict=True):
            assert torch.equal(got.cpu(), e), (one_pass, got.shape)


if __name__ == "__main__":
    run_interpreter_cases()
