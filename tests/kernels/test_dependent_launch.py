"""Programmatic dependent launch of the network kernels (``kernels.triton_utils.PDL``, `launch_dependent`).

A kernel launched that way may start before the kernel ahead of it on the stream has finished, so it must wait
(``wait_for_inputs(PDL)``) before its first load or store: the CPU test checks that every kernel the network modules
launch through `launch_dependent` does, from their source (no Triton needed). The GPU tests (Hopper or newer) check
that whole networks give the same bits with it on and off, eagerly and replayed from a CUDA graph.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

from helpers import randomise
from scoredistill import kernels

KERNEL_MODULES = ("groupnorm_triton", "residual_triton", "concat_triton", "resample_triton")
SRC = pathlib.Path(kernels.__file__).parent


def _launched_kernels(tree: ast.Module) -> set[str]:
    """Names of the kernels a module passes to `launch_dependent` (or to group norm's `launch` wrapper of it)."""
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("launch_dependent", "launch")):
            continue
        if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id != "kernel":
            names.add(node.args[0].id)
    return names


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_every_dependent_kernel_waits_before_touching_memory(module):
    tree = ast.parse((SRC / f"{module}.py").read_text())
    launched = _launched_kernels(tree)
    assert launched, f"{module} launches no kernel through launch_dependent"
    if module != "groupnorm_triton":  # its `launch` wrapper is launch_dependent itself
        assert "launch_dependent" in {a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in launched:
        fn = defs[name]
        assert fn.args.args[-1].arg == "PDL", f"{name}: PDL must be the last parameter (launch_dependent appends it)"
        docstring = isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant)
        first = fn.body[1] if docstring else fn.body[0]
        assert (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Call)
            and getattr(first.value.func, "id", None) == "wait_for_inputs"
            and [getattr(a, "id", None) for a in first.value.args] == ["PDL"]
        ), f"{name}: the first statement must be wait_for_inputs(PDL), got {ast.unparse(first)}"
    if module == "groupnorm_triton":  # the wrapper hands every launch to launch_dependent
        wrapper = defs["launch"]
        calls = [n for n in ast.walk(wrapper) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        assert [c.func.id for c in calls] == ["launch_dependent"]


def test_no_dependent_launch_off_the_gpu_or_when_switched_off(monkeypatch):
    triton_utils = pytest.importorskip("scoredistill.kernels.triton_utils")
    monkeypatch.setattr(triton_utils, "PDL", True)
    assert not triton_utils.programmatic_launch(-1)  # the interpreter on the CPU
    monkeypatch.setattr(triton_utils, "PDL", False)
    assert not triton_utils.programmatic_launch(-1)
    if torch.cuda.is_available():
        assert not triton_utils.programmatic_launch(torch.cuda.current_device())

    seen = []
    monkeypatch.setattr(triton_utils, "launch", lambda *args, **kw: seen.append((args, kw)))
    monkeypatch.setattr(triton_utils, "PDL", True)
    triton_utils.launch_dependent("kernel", (1,), -1, "a", 2, num_warps=4)
    assert seen == [(("kernel", (1,), -1, "a", 2, False), {"num_warps": 4, "pdl": False})]


def _pdl_capable() -> bool:
    if not kernels.available():
        return False
    from scoredistill.kernels import triton_utils

    return triton_utils._pdl_capable(torch.cuda.current_device())


needs_pdl = pytest.mark.skipif(not _pdl_capable(), reason="needs CUDA (compute capability 9.0+) and Triton 3.3+")


@needs_pdl
@pytest.mark.kernels
@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_networks_give_the_same_bits_with_dependent_launches(preset, monkeypatch):
    """A whole backbone in bf16, channels_last, with every fused kernel: forward and backward, eagerly and replayed
    from a CUDA graph, give bit-identical outputs and gradients with `PDL` on and off (deterministic cuDNN, the math
    attention). The replays alternate two inputs, so a kernel that read its inputs before they were written would
    see the other input's values. With it on, every network kernel was compiled for programmatic launch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from scoredistill.kernels import triton_utils
    from scoredistill.roles.precond import edm_precond
    from scoredistill.training.fast import capture

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    net = randomise(edm_precond(preset)).cuda().eval().to(memory_format=torch.channels_last)
    res, batch = net.model.config.img_resolution, 8
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(batch, device="cuda") % 10, net.label_dim).float()
    shape = (batch, 3, res, res)
    inputs = [torch.randn(shape, device="cuda").contiguous(memory_format=torch.channels_last) for _ in "ab"]
    sigma = torch.linspace(0.1, 20.0, batch, device="cuda")
    params = [p for p in net.parameters() if p.requires_grad]
    static = inputs[0].clone().requires_grad_()

    def step(x):
        with sdpa_kernel(SDPBackend.MATH), torch.autocast("cuda", dtype=torch.bfloat16):
            out = net.score(x, sigma, labels)
        loss = out.denoised.float().square().sum() + out.logits.float().sum()
        grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
        return [out.denoised, out.logits, *(g for g in grads if g is not None)]

    def eager(x):
        return step(x.clone().requires_grad_())

    def graphed():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(static)  # warm-up: compile outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with capture(graph):
            outs = step(static)
        runs = []
        for i in (0, 1, 0, 1):
            with torch.no_grad():
                static.copy_(inputs[i])
            graph.replay()
            runs.append((i, [t.clone() for t in outs]))
        return runs

    monkeypatch.setattr(triton_utils, "PDL", False)
    refs = [eager(x) for x in inputs]
    runs = graphed()
    monkeypatch.setattr(triton_utils, "PDL", True)
    triton_utils._compiled.clear()
    runs += [(i, eager(x)) for i, x in enumerate(inputs)] + graphed()
    for i, got in runs:
        for a, b in zip(refs[i], got, strict=True):
            assert torch.equal(a, b), (i, (a - b).abs().max())
    network = [c for k, c in triton_utils._compiled.items() if k[0].fn.__module__.rsplit(".", 1)[-1] in KERNEL_MODULES]
    assert network and all(c.metadata.launch_pdl for c in network)
