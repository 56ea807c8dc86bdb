"""The residual blocks' conditioning from one GEMM per encoder and decoder pass (``batch_conditioning``)."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from helpers import NCSNPP_SKIP, TINY_ADM, TINY_SONG, OpCounter, autograd_nodes, randomise
from scoredistill.networks import DhariwalUNetConfig, SongUNetConfig, build_backbone
from scoredistill.networks.layers import UNetBlock, block_conditioning

CONFIGS = {
    "ddpmpp": SongUNetConfig(**TINY_SONG, label_dim=3, augment_dim=9),
    "ncsnpp-skip": SongUNetConfig(**TINY_SONG, **NCSNPP_SKIP),
    "residual": SongUNetConfig(**TINY_SONG, encoder_type="residual", channel_mult_noise=2),
    "adm": DhariwalUNetConfig(**TINY_ADM, label_dim=3),
}


def _network(name: str, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    net = randomise(build_backbone(CONFIGS[name]))  # the zero-initialised layers and biases would hide the conditioning
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _inputs(name: str, channels_last: bool = False) -> tuple[torch.Tensor, tuple, dict]:
    config = CONFIGS[name]
    x = torch.randn(2, 3, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.eye(3)[:2] if config.label_dim else None
    extra = {"augment_labels": torch.randn(2, 9)} if getattr(config, "augment_dim", 0) else {}
    return x, (torch.tensor([0.3, 1.2]), labels), extra


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float32 rounding, relative to the tensor's norm (the sums' order differs)."""
    return bool((a - b).norm() <= 1e-5 * b.norm() + 1e-7)


def _blocks(net: torch.nn.Module) -> list[UNetBlock]:
    return [m for m in net.modules() if isinstance(m, UNetBlock)]


def _passes(net, x, args, extra):
    """Every entry point: the full pass, the pass with logits, the encoder alone and the shared encoder pass."""
    y = net(x, *args, **extra)
    y2, logits = net.forward_with_logits(x, *args, **extra)
    enc = net.encoder_logits(x, *args, **extra)
    y3, logits3 = net.forward_with_logits_shared(x, *args, **extra, decode=1)
    return [y, y2, logits, enc, y3, logits3]


def _output_and_grads(
    net: torch.nn.Module, backbone: torch.nn.Module, x, args, extra, batched: bool, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """``net``'s output on ``x``, ``x``'s gradient and every parameter's (by name), with ``backbone``'s
    `batch_conditioning` set to ``batched``, under autocast to ``dtype`` where one is given."""
    backbone.batch_conditioning = batched
    net.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    torch.manual_seed(1)
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = net(xx, *args, **extra)
    y.float().square().sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return {"output": y.detach(), "input": xx.grad, **grads}


@pytest.mark.parametrize(("channels_last", "fold"), [(False, False), (True, True)], ids=["nchw", "nhwc-fold"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_conditioning_gives_the_blocks_values_and_gradients(name, channels_last, fold, monkeypatch) -> None:
    """In float32, every entry point's outputs and every gradient (the input's and each parameter's) agree with the
    blocks' own affine layers to rounding: the conv0 biases (DDPM++) and the scale-shift split (ADM) included. With
    ``fold``, the blocks take the branch of the fused kernels (the convolution biases folded into the norms and
    residual sums), here through their native fallbacks."""
    if fold:
        monkeypatch.setattr(UNetBlock, "_fold_biases", lambda self, x: True)
    net = _network(name, channels_last)
    x, args, extra = _inputs(name, channels_last)
    runs = []
    for batched in (False, True):
        net.batch_conditioning = batched
        net.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        torch.manual_seed(1)
        outs = _passes(net, xx, args, extra)
        sum(o.square().sum() for o in outs).backward()
        runs.append((outs, xx.grad, {n: p.grad for n, p in net.named_parameters()}))
    (o0, gx0, gp0), (o1, gx1, gp1) = runs
    for a, b in zip(o0, o1, strict=True):
        assert _close(b, a)
    assert _close(gx1, gx0)
    assert gp0.keys() == gp1.keys()
    for n, g0 in gp0.items():
        assert g0 is not None and gp1[n] is not None and _close(gp1[n], g0), n
    # the comparison sees the conditioning: a block's conv0 bias or affine weight changes the output
    with torch.no_grad():
        _blocks(net)[0].affine.weight.mul_(1.5)
        assert not _close(net(x, *args, **extra), o1[0])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_conditioning_runs_under_bf16_autocast_like_the_blocks(name: str) -> None:
    """Under CPU bf16 autocast (where some blocks' inputs stay float32: the residual encoder's), the batched
    conditioning runs, gives every output and gradient the blocks' dtype, and its output is about as close to the
    float32 blocks' as the bf16 blocks' own. (These randomised tiny networks amplify bf16 rounding: both paths' errors
    reach tens of percent, tensor by tensor at random, over five seeds a median ratio of 0.9 to 1.1 between the
    two; the float32 test above compares the values.)"""
    net = _network(name)
    run = functools.partial(_output_and_grads, net, net, *_inputs(name))
    ref = run(batched=False)
    blocks, batched = run(batched=False, dtype=torch.bfloat16), run(batched=True, dtype=torch.bfloat16)
    assert blocks.keys() == batched.keys() == ref.keys()
    assert {n: t.dtype for n, t in batched.items()} == {n: t.dtype for n, t in blocks.items()}
    assert all(torch.isfinite(t).all() for t in batched.values())
    y, y0, y_ref = batched["output"].float(), blocks["output"].float(), ref["output"]
    assert not torch.equal(y0, y_ref)  # bf16 ran
    assert (y - y_ref).norm() <= 1.5 * (y0 - y_ref).norm() + 0.05 * y_ref.norm()


@pytest.mark.parametrize("name", ["ddpmpp", "adm"])
def test_batched_conditioning_runs_one_gemm_per_stage(name: str) -> None:
    """One conditioning GEMM for the encoder and one for the decoder instead of one per block, forward and
    backward, and in the backward one gather of the parts' gradients (a split's node) instead of a node per
    block."""
    net = _network(name)
    x, args, extra = _inputs(name)
    blocks = len(_blocks(net))
    gemms = {torch.ops.aten.addmm.default, torch.ops.aten.mm.default}
    counts, nodes = [], []
    for batched in (False, True):
        net.batch_conditioning = batched
        with OpCounter(lambda func, _: func in gemms) as forward:
            y = net(x.clone().requires_grad_(), *args, **extra)
        with OpCounter(lambda func, _: func in gemms) as backward:
            y.square().sum().backward()
        counts.append((forward.count, backward.count))
        nodes.append(autograd_nodes(y))
    (f0, b0), (f1, b1) = counts
    assert f0 - f1 == blocks - 2  # per block, one GEMM; batched, one per stage
    assert b0 - b1 == 2 * (blocks - 2)  # the input's and the weight's gradients
    assert nodes[0].count("AddmmBackward0") - nodes[1].count("AddmmBackward0") == blocks - 2
    assert nodes[1].count("SplitWithSizesBackward0") == 2


@pytest.mark.parametrize("name", ["ddpmpp", "adm"])
def test_batched_conditioning_reads_the_precast_copies_and_holds_their_gradients(name: str) -> None:
    """Under bf16 autocast with a `PreCast` active and its gradients held, the batched conditioning reads the
    copies (the same values as casting at every use) and its parameters' gradients come out of the release as the
    casts' own, bit for bit."""
    from scoredistill.networks._precast import PreCast

    net = _network(name)
    net.batch_conditioning = True
    x, args, extra = _inputs(name)
    runs = []
    for precast in (None, PreCast([net], torch.bfloat16)):
        net.zero_grad(set_to_none=True)
        active = precast.active(hold_gradients=True) if precast else contextlib.nullcontext()
        torch.manual_seed(1)
        with active, torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x, *args, **extra)
            y.float().square().sum().backward()
        if precast:
            precast.release_gradients()
        runs.append((y, {n: p.grad for n, p in net.named_parameters()}))
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1)
    for n, g in g0.items():
        assert g is not None and torch.equal(g1[n], g), n


def test_block_conditioning_declines_mixed_blocks_and_takes_none() -> None:
    """Additive and scale-shift blocks together, or a block without its conv0 bias, leave each block to its own
    layer (``None``); no blocks, no conditioning."""
    emb = torch.randn(2, 8)
    additive, adaptive = UNetBlock(16, 16, 8, adaptive_scale=False), UNetBlock(16, 16, 8, adaptive_scale=True)
    assert block_conditioning([], emb) == []
    assert block_conditioning([additive, adaptive], emb) is None
    no_bias = UNetBlock(16, 16, 8, adaptive_scale=False)
    no_bias.conv0.bias = None
    assert block_conditioning([additive, no_bias], emb) is None
    conds = block_conditioning([adaptive, adaptive], emb)
    assert len(conds) == 2 and all(s.shape == t.shape == (2, 16) for s, t in conds)
    torch.testing.assert_close(torch.cat(conds[0], dim=1), adaptive.affine(emb))


@pytest.mark.kernels
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_batched_conditioning_on_cuda_is_as_close_to_float32_as_the_blocks(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full-size networks in channels_last on CUDA (the fused norms, the biases folded). In float32 the batched
    conditioning gives the blocks' output, input gradient and parameter gradients to 1e-3. In bf16 both paths are
    compared with the float32 blocks: the batched one's error is at most 1.5 times the blocks' own, tensor by tensor
    (bf16's own error in the deepest blocks' parameter gradients reaches about 12% on this input, on either path:
    measured on the CPU, where the float32 paths agree to 2e-5). TF32 is off: float32 means float32."""
    from scoredistill.roles.precond import edm_precond

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = edm_precond(preset).cuda().eval().to(memory_format=torch.channels_last)
    with torch.no_grad():  # the zero-initialised layers would hide the conditioning
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(2, device="cuda"), net.label_dim).float()
    res = net.model.config.img_resolution
    x = torch.randn(2, 3, res, res, device="cuda").contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.5, 5.0], device="cuda")

    run = functools.partial(_output_and_grads, net, net.model, x, (sigma, labels), {})

    def errors(run_: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
        return {n: float((run_[n].float() - r).norm() / r.norm()) for n, r in ref.items() if r.norm() > 0}

    ref = {n: t.float() for n, t in run(batched=False).items()}
    assert {"output", "input"} <= ref.keys() and len(ref) > 100
    fp32 = errors(run(batched=True), ref)
    assert max(fp32.values()) <= 1e-3, max(fp32.items(), key=lambda kv: kv[1])
    blocks = errors(run(batched=False, dtype=torch.bfloat16), ref)
    batched = errors(run(batched=True, dtype=torch.bfloat16), ref)
    assert blocks.keys() == batched.keys() == fp32.keys()
    assert blocks["output"] < 2e-2 and blocks["input"] < 5e-2  # bf16 ran
    worse = {n: (e, blocks[n]) for n, e in batched.items() if not e <= 1.5 * blocks[n] + 1e-3}
    assert not worse, worse
