"""Parity of the fused group-norm kernels (:mod:`scoredistill.kernels.groupnorm_triton`) with the reference.

The reference is :func:`scoredistill.networks.layers.group_norm_act` evaluated in float32 on the same (rounded)
inputs. GPU tests skip without CUDA + Triton. A CPU test runs small cases through Triton's interpreter
(``TRITON_INTERPRET=1``) in a subprocess; running this file as a script executes those cases.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from helpers import OpCounter, randomise
from helpers.triton_interpreter import run_under_interpreter
from scoredistill import kernels
from scoredistill.networks.layers import GroupNorm, group_norm_act

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")

# (add, scale, shift, silu): DDPM++'s norm1, ADM's norm1, plain norm + SiLU, attention's bare norm, and the rest.
VARIANTS = [
    (False, False, False, True),
    (True, False, False, True),
    (False, True, True, True),
    (False, False, False, False),
    (True, True, False, False),
    (False, False, True, True),
]
SMALL = [(2, 8, 4, 4, 2), (3, 12, 5, 3, 3), (2, 64, 8, 8, 16), (2, 32, 17, 9, 8)]


def check(
    shape: tuple[int, int, int, int],
    groups: int,
    dtype: torch.dtype,
    device: str,
    variant: tuple[bool, bool, bool, bool],
    *,
    channels_last: bool,
    seed: int = 0,
    sliced: bool = False,
    prefer: str | None = None,
    with_input: str | None = None,
) -> None:
    """Fused forward and every gradient vs the float32 reference on the same inputs.

    ``with_input``: the fused call also returns ``x`` (``group_norm_act_with_input``) and ``x`` has a second use
    whose gradient the norm's backward adds: ``"same"`` (a gradient in ``x``'s layout), ``"other"`` (in the other
    layout) or ``"only"`` (the norm's output unused: its gradient is None).
    """
    from scoredistill.kernels.groupnorm_triton import group_norm_act as fused
    from scoredistill.kernels.groupnorm_triton import group_norm_act_with_input as fused_with_input

    add, scale, shift, silu = variant
    B, C = shape[:2]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if sliced:  # a non-dense view: every other column of a wider map
        x = torch.cat([x, x], dim=3)[..., ::2]
    tensors = {"x": x, "weight": torch.randn(C, generator=g), "bias": torch.randn(C, generator=g)}
    params = torch.randn(B, 3 * C, 1, 1, generator=g).to(dtype)
    if add:
        tensors["add"] = params[:, :C]
    if scale:
        tensors["scale"] = params[:, C : 2 * C] + 1
    if shift:
        tensors["shift"] = params[:, 2 * C :]  # a strided view, as ADM's chunk() gives
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    if with_input == "only":
        grad_out = torch.zeros_like(grad_out)  # the reference's y term adds nothing; the fused call leaves y unused
    grad_res = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2)).to(device) * 3
    if with_input == "other":
        grad_res = grad_res.contiguous(memory_format=torch.contiguous_format if channels_last else torch.channels_last)

    def second_use(x: torch.Tensor) -> torch.Tensor:
        return (x.float() * grad_res).sum() if with_input else x.new_zeros((), dtype=torch.float32)

    results = []
    for fn in ("reference", "fused"):
        leaves = {k: v.to(device).detach().requires_grad_() for k, v in tensors.items()}
        opts = {k: leaves.get(k) for k in ("add", "scale", "shift")}
        if fn == "reference":
            cast = {k: None if v is None else v.float() for k, v in opts.items()}
            y = group_norm_act(leaves["x"].float(), groups, leaves["weight"], leaves["bias"], 1e-5, **cast, silu=silu)
        else:
            # Twice: the first call of a specialisation launches through Triton's JIT, later ones through the
            # compiled-kernel handle (scoredistill.kernels.triton_utils.launch); the second call is checked.
            for _ in range(2):
                for leaf in leaves.values():
                    leaf.grad = None
                args = (leaves["x"], groups, leaves["weight"], leaves["bias"], 1e-5)
                if with_input:
                    y, x_out = fused_with_input(*args, **opts, silu=silu, prefer=prefer)
                    assert torch.equal(x_out, leaves["x"]) and x_out.grad_fn is y.grad_fn
                    uses = (
                        second_use(x_out) if with_input == "only" else (y.float() * grad_out).sum() + second_use(x_out)
                    )
                else:
                    y = fused(*args, **opts, silu=silu, prefer=prefer)
                    uses = (y.float() * grad_out).sum()
                uses.backward()
            assert y.dtype == dtype and (sliced or y.stride() == leaves["x"].stride())
            results.append({"y": y.float(), **{f"d{k}": v.grad for k, v in leaves.items()}})
            continue
        ((y.float() * grad_out).sum() + second_use(leaves["x"])).backward()
        results.append({"y": y.float(), **{f"d{k}": v.grad for k, v in leaves.items()}})
    ref, got = results
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if with_input == "only":  # no gradient reaches the norm's parameters
        assert all(got[f"d{k}"] is None for k in tensors if k != "x"), got
        ref = {"y": ref["y"], "dx": ref["dx"]}
    for name in ref:
        err = (ref[name].float() - got[name].float()).abs().max() / ref[name].float().abs().max().clamp_min(1e-6)
        assert err.item() < tol, (shape, groups, dtype, variant, channels_last, name, err.item())


def test_randomised_networks_depend_on_their_norms():
    # Guards the GPU parity test below against a vacuous comparison.
    from scoredistill.networks.presets import SongUNetConfig
    from scoredistill.roles.precond import edm_precond

    cfg = SongUNetConfig(img_resolution=16, model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))
    net = randomise(edm_precond(cfg)).eval()
    x, sigma = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.5, 3.0])
    before = net(x, sigma)
    norm = [m for m in net.modules() if isinstance(m, GroupNorm)][3]
    with torch.no_grad():
        norm.bias.add_(0.5)
    assert (net(x, sigma) - before).abs().max() > 1e-3


def run_interpreter_cases() -> None:
    for (b, c, h, w, groups), cl in itertools.product(SMALL, (False, True)):
        for variant in VARIANTS:
            check((b, c, h, w), groups, torch.float32, "cpu", variant, channels_last=cl)
    check((2, 64, 8, 8), 16, torch.bfloat16, "cpu", VARIANTS[2], channels_last=True)
    check((1, 32, 64, 64), 8, torch.float32, "cpu", VARIANTS[1], channels_last=False)  # several HW tiles
    check((2, 16, 6, 5), 4, torch.float32, "cpu", VARIANTS[2], channels_last=False, sliced=True)
    check((2, 16, 6, 5), 4, torch.float32, "cpu", VARIANTS[1], channels_last=True, sliced=True)
    # With the input as a second output, whose use's gradient the backward adds (tiles; the pixels in two tiles), in
    # either layout.
    for cl, mode in ((False, "other"), (True, "same"), (True, "only")):
        check((2, 32, 17, 9), 8, torch.float32, "cpu", VARIANTS[1], channels_last=cl, with_input=mode)
    check((2, 64, 8, 8), 16, torch.bfloat16, "cpu", VARIANTS[2], channels_last=True, with_input="same")
    check((2, 16, 6, 5), 4, torch.float32, "cpu", VARIANTS[2], channels_last=True, sliced=True, with_input="other")
    import scoredistill.kernels.groupnorm_triton as gn

    # The one-pass strategy: one program per sample and block of whole groups, its pixels in several tiles.
    gn.set_strategy("one_pass")
    for cl, mode in ((False, "other"), (True, "same")):  # with the input as a second output
        check((2, 32, 17, 9), 8, torch.float32, "cpu", VARIANTS[2], channels_last=cl, with_input=mode)
    for (b, c, h, w, groups), cl in itertools.product(SMALL, (False, True)):
        for variant in VARIANTS[:3]:
            check((b, c, h, w), groups, torch.float32, "cpu", variant, channels_last=cl)
    check((1, 32, 64, 64), 8, torch.float32, "cpu", VARIANTS[1], channels_last=True)  # 32 tiles of 128 pixels
    check((2, 36, 5, 5), 6, torch.float32, "cpu", VARIANTS[2], channels_last=True)  # 6 channels per group: 30 a block
    check((2, 84, 3, 3), 2, torch.float32, "cpu", VARIANTS[1], channels_last=True)  # a group wider than 32 channels
    check((2, 16, 6, 5), 4, torch.float32, "cpu", VARIANTS[2], channels_last=False, sliced=True)
    check((2, 64, 8, 8), 16, torch.bfloat16, "cpu", VARIANTS[2], channels_last=True)
    # The hybrid strategy: the one-pass kernels on maps of at most ONE_PASS_MAX_HW pixels, the tiles above; set
    # module-wide, or preferred by the call under "auto" (a call preferring nothing then takes the tiles).
    launched, launch = [], gn.launch
    gn.launch = lambda kernel, *args: launched.append(getattr(kernel, "fn", kernel).__name__) or launch(kernel, *args)
    one_pass = {"_one_pass_fwd_kernel", "_one_pass_bwd_kernel"}
    try:
        for strategy, prefer in (("hybrid", None), ("auto", "hybrid")):
            gn.set_strategy(strategy)
            for hw in (16, 17):  # 256 and 289 pixels
                launched.clear()
                check((2, 16, hw, hw), 4, torch.float32, "cpu", VARIANTS[1], channels_last=True, prefer=prefer)
                assert (set(launched) == one_pass) if hw == 16 else not (set(launched) & one_pass), (hw, launched)
        launched.clear()
        check((2, 16, 4, 4), 4, torch.float32, "cpu", VARIANTS[1], channels_last=True)  # "auto", no preference
        assert launched and not set(launched) & one_pass, launched
    finally:
        gn.launch = launch
    gn.set_strategy("tiles")
    # The weight's and bias's batch sums in two reductions (FUSED_AFFINE_GRAD_SUMS off; one reduction is the default).
    assert gn.FUSED_AFFINE_GRAD_SUMS
    gn.FUSED_AFFINE_GRAD_SUMS = False
    for variant, cl in itertools.product(VARIANTS[:3], (False, True)):
        check((3, 24, 7, 5), 3, torch.float32, "cpu", variant, channels_last=cl)
    gn.FUSED_AFFINE_GRAD_SUMS = True
    # The other grid order, and small tiles (several HW tiles and channel blocks per sample).

    gn._tiles = lambda C, HW, nhwc, backward: (16, 8, 4, True)
    gn._plan.cache_clear()
    for variant, cl in itertools.product(VARIANTS[:3], (False, True)):
        check((3, 24, 7, 5), 3, torch.float32, "cpu", variant, channels_last=cl)


def test_reference_matches_the_unfused_composition():
    # DDPM++ and ADM wrote these as separate ops; the reference keeps their order exactly.
    g = torch.Generator().manual_seed(0)
    x, p = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, 1, 1, generator=g)
    norm = GroupNorm(8)
    s, t = p.chunk(2, dim=1)
    torch.testing.assert_close(norm(x, add=s, silu=True), torch.nn.functional.silu(norm(x + s)), rtol=0, atol=0)
    expected = torch.nn.functional.silu(torch.addcmul(t, norm(x), s + 1))
    torch.testing.assert_close(norm(x, scale=s + 1, shift=t, silu=True), expected, rtol=0, atol=0)


def test_kernels_off_switch(monkeypatch):
    x = torch.randn(2, 8, 4, 4)
    assert not kernels.fused_group_norm_available(x, 2)  # CPU
    monkeypatch.setenv("SCOREDISTILL_KERNELS", "0")
    if torch.cuda.is_available():
        assert not kernels.fused_group_norm_available(x.cuda(), 2)


@pytest.mark.timeout(300)
def test_interpreter_parity_cpu():
    run_under_interpreter(__file__)


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,groups", [((4, 192, 64, 64), 32), ((2, 1344, 8, 8), 32), ((3, 12, 5, 3), 3)])
@pytest.mark.parametrize("strategy", ["tiles", "one_pass"])
def test_cuda_parity(shape, groups, dtype, channels_last, strategy, monkeypatch):
    import scoredistill.kernels.groupnorm_triton as gn

    monkeypatch.setattr(gn, "_strategy", strategy)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for variant in VARIANTS[:4]:  # the networks' four (each new specialisation costs a Triton compile)
        check(shape, groups, dtype, "cuda", variant, channels_last=channels_last)


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_parity_affine_sums_in_two_reductions(channels_last, monkeypatch):
    # The default sums them in one reduction (test_cuda_parity); this is the path with the switch off.
    import scoredistill.kernels.groupnorm_triton as gn

    monkeypatch.setattr(gn, "FUSED_AFFINE_GRAD_SUMS", False)
    for variant in VARIANTS[:4]:
        check((4, 192, 64, 64), 32, torch.bfloat16, "cuda", variant, channels_last=channels_last)


def test_group_norm_strategy_is_checked_and_restorable():
    gn = pytest.importorskip("scoredistill.kernels.groupnorm_triton", reason="needs Triton")
    with pytest.raises(ValueError, match="unknown group-norm strategy 'two_pass'"):
        gn.set_strategy("two_pass")
    previous = gn.set_strategy("one_pass")
    try:
        assert previous == "auto" and gn.set_strategy("one_pass") == "one_pass"
        assert gn._one_pass(64 * 64) and gn._one_pass(64 * 64, "tiles")  # a module-wide strategy overrides a call's
        gn.set_strategy("hybrid")  # one pass on small maps only
        assert [gn._one_pass(hw) for hw in (4 * 4, 8 * 8, 16 * 16, 16 * 17, 32 * 32)] == [True] * 3 + [False] * 2
        gn.set_strategy("tiles")
        assert not gn._one_pass(4 * 4) and not gn._one_pass(4 * 4, "one_pass")
        gn.set_strategy("auto")  # the call's preference, else the tiles
        assert not gn._one_pass(4 * 4) and gn._one_pass(64 * 64, "one_pass")
        assert [gn._one_pass(hw, "hybrid") for hw in (16 * 16, 16 * 17)] == [True, False]
        with pytest.raises(ValueError, match="unknown group-norm strategy 'auto' preferred"):
            gn.group_norm_act(torch.zeros(1, 4, 2, 2), 2, torch.ones(4), torch.zeros(4), 1e-5, prefer="auto")
    finally:
        gn.set_strategy(previous)


def test_group_norm_layer_hands_its_preferred_strategy_to_the_kernel(monkeypatch):
    # The layer's kernel_strategy reaches the fused kernel (faked here: no CUDA), and is checked when set.
    gn = pytest.importorskip("scoredistill.kernels.groupnorm_triton", reason="needs Triton")
    seen = []
    monkeypatch.setattr(kernels, "fused_group_norm_available", lambda *args: True)
    monkeypatch.setattr(gn, "group_norm_act", lambda x, *args, prefer=None, **kw: seen.append(prefer) or x)
    norm = GroupNorm(8)
    x = torch.randn(2, 8, 4, 4)
    norm(x)
    norm.kernel_strategy = "hybrid"
    norm(x, silu=True)
    assert seen == [None, "hybrid"]
    with pytest.raises(ValueError, match="kernel_strategy must be None or one of \\('tiles', 'one_pass', 'hybrid'\\)"):
        norm.kernel_strategy = "auto"
    assert norm.kernel_strategy == "hybrid"


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("cb_first", [False, True])
def test_cuda_parity_other_tilings(cb_first, monkeypatch):
    # Tilings other than the default rule's (the sweep in benchmarks/tune_norms.py runs them all): both grid
    # orders, small tiles (many HW tiles and channel blocks per sample) and the largest.
    import scoredistill.kernels.groupnorm_triton as gn

    try:
        for tiles in ((16, 32, 4), (128, 64, 8)):
            monkeypatch.setattr(gn, "_tiles", lambda C, HW, nhwc, backward, t=tiles: (*t, cb_first))
            gn._plan.cache_clear()
            for cl in (False, True):
                check((4, 192, 32, 32), 32, torch.bfloat16, "cuda", VARIANTS[2], channels_last=cl)
    finally:
        monkeypatch.undo()
        gn._plan.cache_clear()


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("strategy", ["auto", "tiles", "one_pass", "hybrid"])
def test_networks_with_fused_norms_match_native(preset, channels_last, strategy, monkeypatch):
    # A whole backbone, forward and input gradient, fused norms vs native ones (fp32, TF32 off, eval: no dropout).
    import scoredistill.kernels.groupnorm_triton as gn
    from scoredistill.roles.precond import edm_precond

    monkeypatch.setattr(gn, "_strategy", strategy)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = randomise(edm_precond(preset)).cuda().eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    res = net.model.config.img_resolution
    labels = (
        torch.nn.functional.one_hot(torch.arange(2, device="cuda") % 10, net.label_dim).float()
        if net.label_dim
        else None
    )
    x = torch.randn(2, 3, res, res, device="cuda")
    sigma = torch.tensor([0.5, 3.0], device="cuda")
    outs = []
    for use in (False, None, None):  # native, then fused twice (JIT launch, then the compiled-kernel handle)
        for m in net.modules():
            if isinstance(m, GroupNorm):
                m.use_kernels = use
        xi = x.clone().requires_grad_()
        out = net.score(xi, sigma, labels)
        (out.denoised.square().sum() + out.logits.sum()).backward()
        outs.append((out.denoised, out.logits, xi.grad))
    del outs[1]
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * a.abs().max().item())


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("strategy", ["tiles", "one_pass"])
def test_cuda_parity_with_the_input_as_a_second_output(channels_last, strategy, monkeypatch):
    import scoredistill.kernels.groupnorm_triton as gn

    monkeypatch.setattr(gn, "_strategy", strategy)
    for mode in ("same", "other", "only"):
        check((4, 256, 16, 16), 32, torch.bfloat16, "cuda", VARIANTS[0], channels_last=channels_last, with_input=mode)
        check((4, 192, 64, 64), 32, torch.float32, "cuda", VARIANTS[2], channels_last=channels_last, with_input=mode)


def _activation_adds(net_fn, shape_numel: int) -> tuple[list[torch.Tensor], int]:
    """Runs ``net_fn()`` (forward and backward) counting the additions of activation-sized tensors (at least
    ``shape_numel`` elements) dispatched during it; returns what ``net_fn`` returned and the count."""
    adds = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
    with OpCounter(
        lambda func, args: (
            func in adds and all(isinstance(a, torch.Tensor) and a.numel() >= shape_numel for a in args[:2])
        )
    ) as counter:
        out = net_fn()
    return out, counter.count


@needs_kernels
@pytest.mark.kernels
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_networks_sum_the_skip_gradient_in_the_norm(preset, monkeypatch):
    """``UNetBlock.skip_grad_in_norm``: a whole backbone (float32, TF32 off, channels_last) gives the same output
    and, to float32 rounding, the same input and parameter gradients, with fewer activation-sized additions in the
    backward pass (one fewer per block, and per attention block one more). (In bf16 the two paths differ by bf16
    rounding: one rounding of the sum instead of two.)"""
    from scoredistill.networks.layers import UNetBlock
    from scoredistill.roles.precond import edm_precond

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = randomise(edm_precond(preset)).cuda().train().to(memory_format=torch.channels_last)
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    res = net.model.config.img_resolution
    labels = (
        torch.nn.functional.one_hot(torch.arange(2, device="cuda") % 10, net.label_dim).float()
        if net.label_dim
        else None
    )
    x = torch.randn(2, 3, res, res, device="cuda").contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.5, 3.0], device="cuda")

    def step():
        net.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # dropout
        out = net.score(xi, sigma, labels)
        (out.denoised.square().sum() + out.logits.sum()).backward()
        return [out.denoised, xi.grad] + [p.grad for p in net.parameters()]

    runs = []
    for on in (False, True, True):  # the second "on" run: the compiled-kernel handles
        for b in blocks:
            b.skip_grad_in_norm = on
        runs.append(_activation_adds(step, 2 * 64 * 8 * 8))
    (ref, adds_off), _, (got, adds_on) = runs
    assert torch.equal(ref[0], got[0])  # the forward pass is unchanged
    for a, b in zip(ref[1:], got[1:], strict=True):
        assert (a - b).norm() <= 1e-4 * a.norm() + 1e-8, (a - b).norm() / a.norm()
    attention = sum(1 for b in blocks if b.num_heads)
    assert adds_off - adds_on >= len(blocks) + attention - 2, (adds_off, adds_on, len(blocks), attention)


@needs_kernels
@pytest.mark.kernels
@pytest.mark.timeout(300)
def test_compiled_block_with_the_norms_second_output_matches_eager():
    """``compile="blocks"`` compiles each UNetBlock: with `skip_grad_in_norm` on (which a compiled block does not
    apply), the compiled block gives the eager block's output and gradients."""
    import math

    from scoredistill.networks.layers import UNetBlock

    torch.manual_seed(0)
    block = UNetBlock(64, 64, 32, adaptive_scale=False, skip_scale=math.sqrt(0.5), attention=True, num_heads=1)
    block = randomise(block).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 32, device="cuda")
    assert block.skip_grad_in_norm and block._fold_biases(x)
    runs = []
    for fn in (block, torch.compile(block)):
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = fn(xi, emb)
        (y.square().sum()).backward()
        runs.append([y, xi.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*runs, strict=True):
        assert (a - b).norm() <= 1e-3 * a.norm() + 1e-6, (a - b).norm() / a.norm()


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"
    run_interpreter_cases()
    print("group-norm interpreter parity: ok")
