"""EDM-compatible networks: golden outputs, full-size key sets, configs, strict loading, precision, layouts."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from helpers import FIXTURES, NCSNPP_SKIP, TINY_ADM, TINY_SONG, OpCounter, autograd_nodes
from scoredistill._types import EncoderBackbone
from scoredistill.networks import (
    PRESETS,
    DhariwalUNet,
    DhariwalUNetConfig,
    SongUNet,
    SongUNetConfig,
    StateDictMismatchError,
    build_backbone,
    config_from_edm_kwargs,
    load_edm_state_dict,
)
from scoredistill.roles.precond import Precond, edm_precond, edm_scalings

GOLDEN = FIXTURES / "golden"
GOLDEN_FILES = ["ddpmpp-tiny-uncond", "ddpmpp-tiny-cond", "ncsnpp-tiny-uncond", "adm-tiny-cond"]
KEYS_JSON = GOLDEN / "edm_checkpoint_keys.json"
TEACHERS = {
    "cifar10-32x32-uncond": ("edm-cifar10-32x32-uncond (DDPM++)", 55_733_891),
    "cifar10-32x32-cond": ("edm-cifar10-32x32-cond (DDPM++)", 55_735_299),
    "ffhq-64x64": ("edm-ffhq/afhqv2-64x64-uncond (DDPM++)", 61_805_571),
    "afhqv2-64x64": ("edm-ffhq/afhqv2-64x64-uncond (DDPM++)", 61_805_571),
    "imagenet-64x64": ("edm-imagenet-64x64-cond (ADM)", 295_899_267),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def load_golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(GOLDEN / f"{name}.safetensors", "pt") as f:
        return json.loads(f.metadata()["config"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def golden_denoiser(name: str, **overrides) -> tuple[Precond, dict[str, torch.Tensor]]:
    """The golden network (EDM weights loaded strictly) in eval mode, and the file's tensors."""
    config, tensors = load_golden(name)
    config = dataclasses.replace(config_from_edm_kwargs(config), **overrides)
    D = edm_precond(config)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return load_edm_state_dict(D, state).eval(), tensors


def golden_inputs(tensors: dict[str, torch.Tensor]) -> tuple:
    labels, augment = tensors["in.labels"], tensors["in.augment_labels"]
    return (
        tensors["in.x"],
        tensors["in.sigma"],
        labels if labels.numel() else None,
        augment if augment.numel() else None,
    )


@pytest.fixture(scope="module")
def goldens() -> dict[str, tuple[Precond, dict[str, torch.Tensor]]]:
    return {name: golden_denoiser(name) for name in GOLDEN_FILES}


# ----------------------------------------------------------------------------------------------------------------------
# Golden outputs of the reference EDM/SiDA code (fp32, eval mode, dropout 0).


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_outputs(goldens, name: str) -> None:
    D, t = goldens[name]
    x, sigma, labels, augment = golden_inputs(t)
    with torch.no_grad():
        out = D.score(x, sigma, labels, augment)
        denoised = D(x, sigma, labels, augment)
        logits = D.logits(x, sigma, labels, augment)
    assert out.denoised.dtype == out.logits.dtype == torch.float32
    assert out.logits.shape == t["out.logits"].shape
    assert rel_err(out.denoised, t["out.denoised"]) < 1e-4
    assert rel_err(out.logits, t["out.logits"]) < 1e-4
    # The raw backbone output F, without the c_skip x term that dominates D at small sigma.
    c_skip, c_out, _, _ = (c[:, None, None, None] for c in edm_scalings(sigma))
    assert rel_err((out.denoised - c_skip * x) / c_out, (t["out.denoised"] - c_skip * x) / c_out) < 1e-4
    # Encoder-only and decoder-only entry points agree with the single pass.
    assert torch.equal(logits, out.logits)
    assert torch.equal(denoised, out.denoised)


def test_golden_backbones_speak_the_encoder_contract(goldens) -> None:
    for D, _ in goldens.values():
        assert isinstance(D.model, (SongUNet, DhariwalUNet))
        assert isinstance(D.model, EncoderBackbone)
        assert D.has_encoder


def test_every_parameter_gets_a_gradient(goldens) -> None:
    D, t = goldens["ncsnpp-tiny-uncond"]
    x, sigma, labels, augment = golden_inputs(t)
    out = D.score(x, sigma, labels, augment)
    (out.denoised.square().mean() + out.logits.mean()).backward()
    no_grad = [n for n, p in D.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    D.zero_grad(set_to_none=True)
    assert not no_grad


# ----------------------------------------------------------------------------------------------------------------------
# Full-size published teachers: exact keys, shapes, order and parameter count (built on the meta device).


@pytest.mark.parametrize("preset", sorted(TEACHERS))
def test_full_size_teacher_keys(preset: str) -> None:
    entry, num_parameters = TEACHERS[preset]
    expected = json.loads(KEYS_JSON.read_text())[entry]
    assert expected["num_parameters"] == num_parameters
    assert PRESETS[preset] == config_from_edm_kwargs(expected["config"])
    with torch.device("meta"):
        D = edm_precond(preset)
    got = [[k, list(v.shape)] for k, v in D.state_dict().items()]
    assert got == expected["state_dict"]
    assert sum(p.numel() for p in D.parameters()) == num_parameters
    assert D.label_dim == PRESETS[preset].label_dim and D.augment_dim == PRESETS[preset].augment_dim
    assert D.sigma_data == 0.5


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"cifar10-32x32-uncond.*imagenet-64x64"):
        edm_precond("cifar10")
    with pytest.raises(ValueError, match=r"unknown SongUNetConfig fields \['dropuot'\]"):
        edm_precond("cifar10-32x32-uncond", dropuot=0.0)


def test_preset_overrides() -> None:
    with torch.device("meta"):
        D = edm_precond("cifar10-32x32-cond", dropout=0.0, label_dropout=0.1)
    assert D.model.config.dropout == 0.0 and D.model.config.label_dropout == 0.1
    assert PRESETS["cifar10-32x32-cond"].dropout == 0.13


# ----------------------------------------------------------------------------------------------------------------------
# Configs: validation, dict round trips, EDM kwargs.


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SongUNetConfig, {"img_resolution": 30, "channel_mult": (1, 2, 2)}, "divisible by 2\\^"),
        (SongUNetConfig, {"img_resolution": 32, "attn_resolutions": (12,)}, "pick from \\[32, 16, 8, 4\\]"),
        (SongUNetConfig, {"img_resolution": 32, "embedding_type": "sinusoidal"}, "'positional' \\(DDPM\\+\\+\\)"),
        (SongUNetConfig, {"img_resolution": 32, "encoder_type": "resnet"}, "'standard', 'skip' or 'residual'"),
        (SongUNetConfig, {"img_resolution": 32, "decoder_type": "residual"}, "'standard' or 'skip'"),
        (SongUNetConfig, {"img_resolution": 32, "resample_filter": (1, 2, 1)}, "even number of taps"),
        (SongUNetConfig, {"img_resolution": 32, "dropout": 1.0}, "dropout must lie in \\[0, 1\\)"),
        (SongUNetConfig, {"img_resolution": 32, "label_dropout": 0.1}, "set label_dim > 0"),
        (SongUNetConfig, {"img_resolution": 32, "channel_mult": ()}, "non-empty tuple"),
        (SongUNetConfig, {"img_resolution": 32, "num_blocks": 0}, "num_blocks must be a positive int"),
        (SongUNetConfig, {"img_resolution": 32, "label_dim": -1}, "label_dim must be an int >= 0"),
        (DhariwalUNetConfig, {"img_resolution": 64, "model_channels": 16}, "drop 32 from attn_resolutions"),
        (DhariwalUNetConfig, {"img_resolution": 64, "attn_resolutions": (64, 3)}, "pick from \\[64, 32, 16, 8\\]"),
    ],
)
def test_config_validation(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        SongUNetConfig(32)  # type: ignore[misc]
    config = SongUNetConfig(img_resolution=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dropout = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"channel_mult=\(1, 2\)"):
        SongUNetConfig(img_resolution=32, channel_mult=2)  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_dict_round_trip(preset: str) -> None:
    config = PRESETS[preset]
    data = json.loads(json.dumps(config.to_dict()))
    assert isinstance(data["channel_mult"], list)
    restored = type(config).from_dict(data)
    assert restored == config and isinstance(restored.channel_mult, tuple) and hash(restored) == hash(config)
    with pytest.raises(ValueError, match=r"unknown .*Config keys \['bogus'\]; valid keys"):
        type(config).from_dict({**data, "bogus": 1})


def test_lists_become_tuples() -> None:
    config = SongUNetConfig(img_resolution=32, channel_mult=[2, 2], attn_resolutions=[16], resample_filter=[1, 1])
    assert config == SongUNetConfig(img_resolution=32, channel_mult=(2, 2), attn_resolutions=(16,))


def test_config_from_edm_kwargs() -> None:
    kwargs = {"model_type": "SongUNet", "img_resolution": 16, "use_fp16": True, "sigma_data": 0.5}
    assert config_from_edm_kwargs(kwargs) == SongUNetConfig(img_resolution=16)
    assert isinstance(config_from_edm_kwargs({"img_resolution": 64}), DhariwalUNetConfig)
    with pytest.raises(ValueError, match=r"unknown model_type 'VPPrecond'"):
        config_from_edm_kwargs({"model_type": "VPPrecond", "img_resolution": 16})
    with pytest.raises(ValueError, match=r"\['beta_d'\]"):
        config_from_edm_kwargs({"model_type": "SongUNet", "img_resolution": 16, "beta_d": 19.9})


def test_backbone_rejects_foreign_config() -> None:
    with pytest.raises(TypeError, match=r"SongUNetConfig"):
        SongUNet(DhariwalUNetConfig(**TINY_ADM))  # type: ignore[arg-type]
    assert isinstance(build_backbone(DhariwalUNetConfig(**TINY_ADM)), DhariwalUNet)


# ----------------------------------------------------------------------------------------------------------------------
# Strict EDM loading.


def test_strict_load_names_every_offending_key() -> None:
    _, t = load_golden("ddpmpp-tiny-uncond")
    state = {k.removeprefix("state."): v for k, v in t.items() if k.startswith("state.")}
    del state["model.enc.8x8_block1.qkv.bias"]
    state["model.enc.8x8_block9.conv0.weight"] = torch.zeros(1)
    state["model.map_layer0.weight"] = torch.zeros(3, 3)
    D = edm_precond(config_from_edm_kwargs(load_golden("ddpmpp-tiny-uncond")[0]))
    before = D.model.map_layer1.weight.clone()
    with pytest.raises(StateDictMismatchError) as info:
        load_edm_state_dict(D, state)
    message = str(info.value)
    assert "missing: model.enc.8x8_block1.qkv.bias" in message
    assert "unexpected: model.enc.8x8_block9.conv0.weight" in message
    assert "shape mismatch: model.map_layer0.weight: module [64, 16], state dict [3, 3]" in message
    assert info.value.missing == ["model.enc.8x8_block1.qkv.bias"]
    assert torch.equal(D.model.map_layer1.weight, before)


def test_strict_load_model_prefix_normalisation(goldens) -> None:
    D, t = goldens["adm-tiny-cond"]
    backbone = build_backbone(D.model.config)
    state = {k.removeprefix("state."): v for k, v in t.items() if k.startswith("state.")}
    load_edm_state_dict(backbone, state)
    assert torch.equal(backbone.map_label.weight, D.model.map_label.weight)
    fresh = edm_precond(D.model.config)
    load_edm_state_dict(fresh, backbone.state_dict())
    assert torch.equal(fresh.model.out_conv.weight, D.model.out_conv.weight)


# ----------------------------------------------------------------------------------------------------------------------
# Label dropout, precision, memory layout, random initialisation.


@pytest.mark.parametrize("name", ["ddpmpp-tiny-cond", "adm-tiny-cond"])
def test_label_dropout_only_in_training(name: str) -> None:
    D, t = golden_denoiser(name, label_dropout=1.0)
    x, sigma, labels, augment = golden_inputs(t)
    with torch.no_grad():
        eval_out = D(x, sigma, labels, augment)
        eval_unlabelled = D(x, sigma, torch.zeros_like(labels), augment)
        train_out = D.train()(x, sigma, labels, augment)
    assert rel_err(eval_out, t["out.denoised"]) < 1e-4
    assert rel_err(eval_out, eval_unlabelled) > 1e-6
    assert rel_err(train_out, eval_unlabelled) < 1e-6


@pytest.mark.parametrize("name", ["ncsnpp-tiny-uncond", "adm-tiny-cond"])
def test_channels_last_gives_same_output(goldens, name: str) -> None:
    t = goldens[name][1]
    x, sigma, labels, augment = golden_inputs(t)
    D_cl = golden_denoiser(name)[0].to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = D_cl.score(x.contiguous(memory_format=torch.channels_last), sigma, labels, augment)
    assert rel_err(out.denoised, t["out.denoised"]) < 1e-4
    assert rel_err(out.logits, t["out.logits"]) < 1e-4


@pytest.mark.parametrize(
    "config",
    [
        SongUNetConfig(**TINY_SONG, label_dim=3, augment_dim=9),
        SongUNetConfig(**TINY_SONG, **NCSNPP_SKIP),
        SongUNetConfig(**TINY_SONG, encoder_type="residual", channel_mult_noise=2),
        DhariwalUNetConfig(**TINY_ADM, label_dim=3),
    ],
    ids=["ddpmpp", "ncsnpp-skip", "residual", "adm"],
)
def test_random_init_bf16_autocast(config) -> None:
    torch.manual_seed(0)
    D = edm_precond(config).eval()
    x = torch.randn(2, 3, 8, 8)
    labels = torch.tensor([0, 2]) if config.label_dim else None
    with torch.no_grad():
        ref = D.score(x, torch.tensor([0.5, 5.0]), labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = D.score(x, torch.tensor([0.5, 5.0]), labels)
            raw = D.model(x, torch.zeros(2), None if labels is None else torch.eye(3)[labels])
    assert out.denoised.dtype == out.logits.dtype == torch.float32
    assert out.logits.shape == (2, 1, 4, 4)
    assert torch.isfinite(out.denoised).all() and torch.isfinite(out.logits).all() and torch.isfinite(raw).all()
    assert torch.isfinite(ref.denoised).all()
    assert (out.logits - ref.logits).abs().max() < 0.1 * ref.logits.abs().max() + 1e-3
    # Near-zero last layers: a fresh denoiser starts close to c_skip x.
    c_skip = edm_scalings(torch.tensor([0.5, 5.0]))[0][:, None, None, None]
    assert (ref.denoised - c_skip * x).abs().max() < 1e-2


def test_conditional_backbone_needs_labels() -> None:
    net = SongUNet(SongUNetConfig(**TINY_SONG, label_dim=3))
    with pytest.raises(ValueError, match=r"class-conditional \(label_dim=3\)"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1))


@pytest.mark.parametrize("up", [True, False])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kernel", [0, 1, 3])
def test_box_resampling_matches_the_fir_convolution(up, fused, kernel):
    # Two-tap filters take avg_pool2d / nearest up-sampling; the depthwise FIR convolution is the definition.
    from scoredistill.networks.layers import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(8, 8 if kernel == 0 else 16, kernel, up=up, down=not up, resample_filter=(1, 1), fused_resample=fused)
    assert conv._box
    outs = []
    for box in (True, False):
        conv._box = box
        x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = conv(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append((y, x.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("heads", [1, 4])
def test_channels_last_attention_matches_contiguous_with_gradients(heads: int, split: bool) -> None:
    # The channels_last attention reorders the qkv convolution's output channels (and, with split_qkv, computes q, k
    # and v by three GEMMs); outputs and every gradient (the qkv weight and bias in EDM's [head, channel, (q, k, v)]
    # order included) must equal the contiguous path.
    from scoredistill.networks.layers import UNetBlock

    torch.manual_seed(0)
    block = UNetBlock(16, 16, 8, attention=True, num_heads=heads)
    block.split_qkv = split
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5 if p.dim() > 1 else 4))
    x, emb = torch.randn(2, 16, 6, 5), torch.randn(2, 8)
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        block.to(memory_format=fmt)
        block.zero_grad()
        xi = x.detach().contiguous(memory_format=fmt).requires_grad_()
        y = block(xi, emb)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append([y, xi.grad, *(p.grad.clone() for p in block.parameters())])
    assert outs[1][0].is_contiguous(memory_format=torch.channels_last)
    for ref, got in zip(*outs):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_split_qkv_leaves_no_gradient_stacking_in_the_attention_backward(split: bool) -> None:
    # What split_qkv is for: with one qkv GEMM, q, k and v are unbound from one tensor and autograd stacks their
    # gradients (UnbindBackward0, a cat) before copying them into the GEMM's layout; with three GEMMs it does not.
    from scoredistill.networks.layers import UNetBlock

    block = UNetBlock(16, 16, 8, attention=True, num_heads=2).to(memory_format=torch.channels_last)
    block.split_qkv = split
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    nodes = set(autograd_nodes(block(x, torch.randn(2, 8))))
    assert ("UnbindBackward0" in nodes) is not split


@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_each_network_carries_its_measured_launch_choices(preset: str) -> None:
    """DDPM++ (SongUNet) prefers the group norms' hybrid launch strategy and one qkv GEMM; ADM (DhariwalUNet) the
    tiles and three qkv GEMMs in its attention blocks. A copy keeps them (the fake score is built as one)."""
    import copy

    from scoredistill.networks.layers import GroupNorm, UNetBlock
    from scoredistill.roles.precond import edm_precond

    net = copy.deepcopy(edm_precond(preset))
    adm = preset == "imagenet-64x64"
    norms = [m for m in net.modules() if isinstance(m, GroupNorm)]
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    attention = [b for b in blocks if b.num_heads]
    assert norms and attention and len(attention) < len(blocks)
    assert {n.kernel_strategy for n in norms} == {None if adm else "hybrid"}
    assert {b.split_qkv for b in attention} == {adm} and not any(b.split_qkv for b in blocks if not b.num_heads)


@pytest.mark.kernels
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_split_qkv_on_cuda_equals_one_qkv_gemm_to_bf16_rounding() -> None:
    """ImageNet-64's ADM backbone in bf16 channels_last on CUDA (SDPA's fused kernels): output and input gradient
    with q, k and v by three GEMMs agree with one GEMM to bf16 rounding."""
    from scoredistill.networks.layers import UNetBlock
    from scoredistill.roles.precond import edm_precond

    torch.manual_seed(0)
    net = edm_precond("imagenet-64x64").cuda().eval().to(memory_format=torch.channels_last)
    with torch.no_grad():  # the zero-initialised projections would hide the attention
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    labels = torch.nn.functional.one_hot(torch.arange(2, device="cuda") % 1000, net.label_dim).float()
    x = torch.randn(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.5, 5.0], device="cuda")
    outputs = []
    for split in (False, True):
        for m in net.modules():
            if isinstance(m, UNetBlock):
                m.split_qkv = split
        xx = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(xx, sigma, labels)
        (grad,) = torch.autograd.grad(y.square().sum(), xx)
        outputs.append((y.float(), grad.float()))
    for a, b in zip(*outputs, strict=True):
        assert torch.isfinite(a).all() and (a - b).norm() <= 2e-2 * a.norm()


@pytest.mark.parametrize(
    "config",
    [
        SongUNetConfig(**TINY_SONG, label_dim=3, augment_dim=9),
        SongUNetConfig(**TINY_SONG, **NCSNPP_SKIP),
        DhariwalUNetConfig(**TINY_ADM, label_dim=3),
        "tiny",
    ],
    ids=["ddpmpp", "ncsnpp-skip", "adm", "tinyunet"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_shared_encoder_pass_equals_a_full_pass_and_an_encoder_pass(config, channels_last) -> None:
    """``score_and_logits`` (SiDA's fake-score phase with ``share_encoder_pass``): one encoder pass over generator
    samples and real images gives the full pass's output and logits and the encoder-only pass's logits, and the
    same parameter gradients."""
    from scoredistill import FakeScore, Precond
    from scoredistill.networks.toy import TinyUNet

    torch.manual_seed(0)
    if config == "tiny":
        D = Precond(TinyUNet(img_channels=3, channels=8, augment_dim=9), augment_dim=9)
        label_dim, augment_dim = 0, 9
    else:
        D, label_dim, augment_dim = edm_precond(config), config.label_dim, config.augment_dim
    with torch.no_grad():  # the zero-initialised output convolutions would hide the decoder
        for p in D.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fake_score = FakeScore(D.eval())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fake_score.to(memory_format=fmt)
    x, other = (torch.randn(3, 3, 8, 8).contiguous(memory_format=fmt) for _ in range(2))
    sigma = torch.tensor([0.3, 2.0, 20.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), 3).float() if label_dim else None
    aug, aug_other = (torch.randn(3, augment_dim) if augment_dim else None for _ in range(2))
    results = []
    for shared in (False, True):
        fake_score.zero_grad()
        if shared:
            out, other_logits = fake_score.score_and_logits(
                x, sigma, labels, aug, other=other, other_augment_labels=aug_other
            )
        else:
            out = fake_score.score(x, sigma, labels, aug)
            other_logits = fake_score.logits(other, sigma, labels, aug_other)
        loss = out.denoised.square().sum() + out.logits.sum() - 2 * other_logits.sum()
        loss.backward()
        results.append([out.denoised, out.logits, other_logits, *(p.grad.clone() for p in fake_score.parameters())])
    for a, b in zip(*results, strict=True):  # the gradients' batch sums in another order
        torch.testing.assert_close(b, a, rtol=2e-4, atol=1e-4)


def test_shared_encoder_pass_refuses_a_backbone_that_cannot_share_and_batches_that_differ() -> None:
    from scoredistill import FakeScore, Precond
    from scoredistill.networks.toy import MLP

    with pytest.raises(TypeError, match="cannot share one encoder pass"):
        FakeScore(Precond(MLP(2, 8, depth=2))).score_and_logits(torch.zeros(2, 2), 1.0, other=torch.zeros(2, 2))
    song = FakeScore(edm_precond(SongUNetConfig(**TINY_SONG)))
    with pytest.raises(ValueError, match=r"other \(1, 3, 8, 8\) must match x \(2, 3, 8, 8\)"):
        song.score_and_logits(torch.zeros(2, 3, 8, 8), 1.0, other=torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------------------------------------------------
# Pre-cast weights (DistillConfig.precast_weights).


def _parameter_casts(params) -> OpCounter:
    """Counts the casts (``aten._to_copy``) of the given parameters."""
    ids = {id(p) for p in params}
    return OpCounter(lambda func, args: func is torch.ops.aten._to_copy.default and id(args[0]) in ids)


def _matmul_params(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    from scoredistill.networks.layers import Conv2d, Linear

    layers = [m for m in net.modules() if isinstance(m, Conv2d | Linear)]
    return [p for m in layers for p in (m.weight, m.bias) if p is not None]


@pytest.mark.parametrize(
    "config",
    [SongUNetConfig(**TINY_SONG, label_dim=3, augment_dim=9), DhariwalUNetConfig(**TINY_ADM, label_dim=3)],
    ids=["ddpmpp", "adm"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_precast_copies_give_the_casts_values_and_gradients(config, channels_last) -> None:
    """Under bf16 autocast, a network reading a `PreCast`'s copies gives the output, the input gradient and every
    parameter gradient of the network that casts at every use, bit for bit, without casting a weight or bias of its
    convolutions and linear layers in the forward pass."""
    from scoredistill.networks._precast import PreCast

    torch.manual_seed(0)
    net = build_backbone(config)
    with torch.no_grad():  # the zero-initialised output layers would hide most of the network
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt)
    noise, labels = torch.tensor([0.3, 1.2]), torch.eye(3)[:2]
    extra = {"augment_labels": torch.randn(2, 9)} if getattr(config, "augment_dim", 0) else {}
    runs = []
    for precast in (None, PreCast([net], torch.bfloat16)):
        net.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        torch.manual_seed(1)  # dropout
        active = precast.active() if precast else contextlib.nullcontext()
        with active, torch.autocast("cpu", dtype=torch.bfloat16), _parameter_casts(_matmul_params(net)) as casts:
            y = net(xx, noise, labels, **extra)
        y.float().square().sum().backward()
        runs.append((y, xx.grad, [p.grad for p in net.parameters()], casts.count))
    (y0, gx0, gp0, casts0), (y1, gx1, gp1, casts1) = runs
    assert casts0 >= len(_matmul_params(net)) and casts1 == 0
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert all(g0 is not None and torch.equal(g0, g1) for g0, g1 in zip(gp0, gp1, strict=True))


def test_precast_copies_are_read_only_while_active_and_as_fresh_as_their_refresh() -> None:
    from scoredistill.networks._precast import PreCast, cast_parameter, matmul_parameter
    from scoredistill.networks.layers import Linear

    layer = Linear(4, 3)
    casts = PreCast([layer], torch.bfloat16)
    x = torch.randn(2, 4)
    assert len(casts) == 2
    with torch.no_grad():
        layer.weight.add_(1.0)  # not yet refreshed
    outside = cast_parameter(layer.weight, torch.bfloat16)  # inactive: the cast itself
    assert torch.equal(outside, layer.weight.to(torch.bfloat16))
    with casts.active():
        stale = cast_parameter(layer.weight, torch.bfloat16)
        assert not torch.equal(stale, outside)  # the copy is that of the last refresh
        casts.refresh()
        assert torch.equal(cast_parameter(layer.weight, torch.bfloat16), outside)
        assert cast_parameter(layer.weight, torch.float16).dtype == torch.float16  # no fp16 copy: a cast
        assert matmul_parameter(layer.weight, x) is layer.weight  # fp32 without autocast: no cast at all
        with torch.autocast("cpu", dtype=torch.bfloat16):
            copy = matmul_parameter(layer.weight, x)  # autocast would cast: the copy instead
        assert copy.dtype == torch.bfloat16 and copy.grad_fn is not None  # the gradient returns to the parameter
        with torch.no_grad():
            assert matmul_parameter(layer.weight, x.bfloat16()).grad_fn is None


def test_precast_refusals() -> None:
    from scoredistill.networks._precast import PreCast
    from scoredistill.networks.layers import Linear

    with pytest.raises(ValueError, match="bfloat16 or float16 copies"):
        PreCast([Linear(2, 2)], torch.float32)
    first, second = PreCast([Linear(2, 2)], torch.bfloat16), PreCast([Linear(2, 2)], torch.bfloat16)
    with pytest.raises(ValueError, match="holds no copies of that Linear"):
        first.refresh([Linear(2, 2)])
    with first.active(), pytest.raises(RuntimeError, match="another PreCast is already active"), second.active():
        pass
    mixed = PreCast([Linear(2, 2), Linear(2, 2).double()], torch.bfloat16)
    with pytest.raises(ValueError, match="must share a dtype and device"), mixed.active(hold_gradients=True):
        pass
    with first.active():  # a refused entry leaves nothing active behind
        pass


def test_precast_held_gradients_are_released_as_the_casts_would_give_them() -> None:
    """``hold_gradients``: each use's bf16 weight gradient is held; ``release_gradients`` casts them in one batch into
    views of one flat buffer (a layer's three uses summed in float32), or adds them to a ``.grad`` there."""
    from scoredistill.networks._precast import PreCast
    from scoredistill.networks.layers import Conv2d, Linear

    torch.manual_seed(0)
    layers = torch.nn.ModuleList([Linear(4, 3), Conv2d(3, 5, 3).to(memory_format=torch.channels_last)])
    # A bf16 input: the linear layer casts its weight at each of its two uses (autocast caches only the casts it
    # makes itself, which sum two uses' gradients in bf16), so the reference sums the two casts in float32 too.
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    img = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layers[0](x).float().square().sum() + layers[0](2 * x).float().sum()  # the linear layer used 3 times
            y = y + layers[0](x[:1] - 1).float().square().mean()
            return y + layers[1](img).float().square().sum()

    loss().backward()  # the casts at every use
    expected = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad(set_to_none=True)
    casts = PreCast([layers], torch.bfloat16)
    with casts.active(hold_gradients=True):
        loss().backward()
    assert all(p.grad is None for p in layers.parameters())  # held, not yet cast
    flat, viewed = casts.release_gradients()
    assert flat.numel() == sum(p.numel() for p in layers.parameters()) and len(viewed) == 4
    for p, e in zip(layers.parameters(), expected, strict=True):
        assert p.grad._base is flat and p.grad.stride() == p.stride()
        assert torch.equal(p.grad, e)
    assert casts.release_gradients() == (None, [])  # nothing held any more
    with casts.active(hold_gradients=True):
        loss().backward()
    flat2, viewed2 = casts.release_gradients()  # added to the .grad already there, not made views
    assert flat2 is not None and viewed2 == []
    for p, e in zip(layers.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, 2 * e)


# ----------------------------------------------------------------------------------------------------------------------
# Frozen layers: a convolution or linear layer whose weight takes no gradient saves only its weight.


def _saved_storages(fn) -> tuple[torch.Tensor, dict[int, int]]:
    """``fn()``'s result and the storages its autograd graph saved for the backward pass (data pointer -> bytes)."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return fn(), saved


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("stride", "padding", "groups", "kernel"), [(1, 1, 1, 3), (2, 0, 4, 2), (1, 0, 1, 1)])
def test_frozen_convolution_gives_autograds_values_and_input_gradient(stride, padding, groups, kernel, channels_last):
    """`layers.conv2d` with a frozen weight: F.conv2d's output, its input gradient (in the input's layout), and
    nothing saved but the weight; with a trained weight it is F.conv2d itself."""
    from scoredistill.networks.layers import conv2d

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w, b = torch.randn(8, 8 // groups, kernel, kernel, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    geometry = {"stride": stride, "padding": padding, "groups": groups}
    y, saved = _saved_storages(lambda: conv2d(x, w, b, **geometry))
    y_ref = F.conv2d(x, w, b, **geometry)
    g = torch.randn_like(y_ref)
    (dx,), (dx_ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_ref, x, g)
    assert type(y.grad_fn).__name__ == "_FrozenMatmulBackward"
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)
    assert dx.stride() == dx_ref.stride()
    assert set(saved) == {w.untyped_storage().data_ptr()}  # the weight only: not the input
    # torch.func's transforms take it too (forward and setup_context apart).
    dx_func = torch.func.grad(lambda v: (conv2d(v, w, b, **geometry) * g).sum())(x.detach())
    torch.testing.assert_close(dx_func, dx_ref, rtol=1e-12, atol=1e-12)
    trained = w.clone().requires_grad_()
    assert type(conv2d(x, trained, b, **geometry).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert conv2d(x, w, b, **geometry).grad_fn is None


def test_frozen_linear_under_autocast_casts_as_autocast_does() -> None:
    """`layers.linear` with a frozen weight under bf16 autocast: the output autocast's F.linear gives, the float32
    input's gradient cast back to float32, and the input not saved (its bf16 cast is not either)."""
    from scoredistill.networks.layers import linear

    torch.manual_seed(0)
    x = torch.randn(5, 7, requires_grad=True)
    w, b = torch.randn(3, 7), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, saved = _saved_storages(lambda: linear(x, w, b))
        y_ref = F.linear(x, w, b)
    assert y.dtype == y_ref.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    g = torch.randn(5, 3, dtype=torch.bfloat16)
    (dx,), (dx_ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y_ref, x, g)
    assert dx.dtype == torch.float32 and torch.equal(dx, dx_ref)
    assert len(saved) == 1 and x.untyped_storage().data_ptr() not in saved  # the weight's bf16 cast only


@pytest.mark.parametrize("name", ["ddpmpp-tiny-cond", "ncsnpp-tiny-uncond", "adm-tiny-cond"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_frozen_network_saves_less_for_the_same_input_gradient(goldens, monkeypatch, name: str, autocast) -> None:
    """A frozen golden network (the teacher; the fake score in the generator step): the output and input gradient
    of autograd's own layers, bit for bit, with fewer bytes saved for the backward pass."""
    from scoredistill.networks import layers

    D, tensors = goldens[name]
    x, sigma, labels, augment = golden_inputs(tensors)
    D = D.requires_grad_(False).to(memory_format=torch.channels_last)
    runs = []
    for frozen_path in (True, False):
        if not frozen_path:
            monkeypatch.setattr(layers, "FROZEN_WEIGHT_ONLY", False)
        xx = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            y, sizes = _saved_storages(lambda xx=xx: D(xx, sigma, labels, augment_labels=augment))
        (dx,) = torch.autograd.grad(y.float().square().sum(), xx)
        runs.append((y, dx, sum(sizes.values())))
    (y0, dx0, bytes0), (y1, dx1, bytes1) = runs
    assert torch.equal(y0, y1) and torch.equal(dx0, dx1)
    assert bytes0 < 0.9 * bytes1, (bytes0, bytes1)


@pytest.mark.kernels
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["cifar10-32x32-uncond", "imagenet-64x64"])
def test_frozen_network_on_cuda_holds_less_for_the_same_input_gradient(monkeypatch, preset: str) -> None:
    """A frozen full-size teacher in bf16 channels_last on CUDA (cuDNN, the fused group norms): the output and the
    input gradient (in channels_last) of autograd's own layers, with less memory held between forward and backward."""
    from scoredistill.networks import layers

    torch.manual_seed(0)
    net = edm_precond(preset).cuda().eval().requires_grad_(False).to(memory_format=torch.channels_last)
    with torch.no_grad():  # the zero-initialised output layers would hide most of the network
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    labels = torch.eye(net.label_dim, device="cuda")[:4] if net.label_dim else None
    res = 64 if preset.startswith("imagenet") else 32
    x = torch.randn(4, 3, res, res, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([0.1, 0.5, 2.0, 20.0], device="cuda")
    warm = x.clone().requires_grad_()  # cuBLAS's and cuDNN's workspaces are made here, outside the counts below
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.autograd.grad(net(warm, sigma, labels).float().sum(), warm)
    runs = []
    for frozen_path in (True, False):
        if not frozen_path:
            monkeypatch.setattr(layers, "FROZEN_WEIGHT_ONLY", False)
        xx = x.clone().requires_grad_()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(xx, sigma, labels)
        held = torch.cuda.memory_allocated() - before
        (dx,) = torch.autograd.grad(y.float().square().sum(), xx)
        runs.append((y.float(), dx, held))
    (y0, dx0, held0), (y1, dx1, held1) = runs
    assert torch.equal(y0, y1)
    assert dx0.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(dx0).all()
    err = float((dx0 - dx1).norm() / dx1.norm())
    assert err <= 1e-3, err
    assert held0 < 0.8 * held1, (held0, held1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_convolution_backward_makes_no_copy_of_the_input(channels_last) -> None:
    """The backward's stand-in for the input has the input's layout, so `convolution_backward` takes it as it is:
    a stride-0 stand-in was made contiguous first, one activation-sized copy per layer (10% of an ImageNet-64
    iteration on an H100)."""
    from scoredistill.networks.layers import conv2d

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=fmt).requires_grad_()
    for kernel in (3, 1):  # a 1x1 weight's strides fit both layouts
        w = torch.randn(16, 16, kernel, kernel).contiguous(memory_format=fmt)
        y = conv2d(x, w, padding=kernel // 2)
        g = torch.randn_like(y)
        with OpCounter(
            lambda func, args: func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone)
        ) as copies:
            (dx,) = torch.autograd.grad(y, x, g)
        assert copies.count == 0
        assert dx.stride() == x.stride()
