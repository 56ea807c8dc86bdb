"""Building blocks shared by the EDM-compatible UNets (`.song_unet`, `.dhariwal_unet`).

Clean-room implementations written from the papers: the residual block with additive or scale-shift
conditioning and optional self-attention (Ho et al. 2020; Song et al. 2021, "Score-based generative modeling
through SDEs", DDPM++/NCSN++; Dhariwal & Nichol 2021, ADM), FIR up/down-sampling (Song et al. 2021, following
StyleGAN2), sinusoidal and random Fourier noise embeddings (Vaswani et al. 2017; Tancik et al. 2020), and the
fan-based weight initialisations (Glorot & Bengio 2010; He et al. 2015) named in Karras et al. 2022 (EDM),
Appendix F.

Parameter and buffer NAMES (``weight``, ``bias``, ``resample_filter``, ``freqs``, ``norm0``, ``conv0``,
``affine``, ``norm1``, ``conv1``, ``skip``, ``norm2``, ``qkv``, ``proj``) and their registration order follow
EDM's published checkpoints, so that EDM state dicts load unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import kernels
from ._precast import cast_parameter, matmul_parameter
from .facts import BackboneFacts

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "InitMode",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "block_conditioning",
    "channel_mean_logits",
    "conv2d",
    "group_norm_act",
    "init_weight_",
    "linear",
    "residual_add",
]

InitMode = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]
"""Fan-based initialisations: Glorot (fan_in + fan_out) or He (fan_in), uniform or normal, gain 1."""


def init_weight_(tensor: Tensor, mode: InitMode, fan_in: int, fan_out: int, scale: float = 1.0) -> Tensor:
    """Fill ``tensor`` in place from a fan-based distribution, then multiply by ``scale``.

    Args:
        tensor: Parameter to fill.
        mode: ``xavier_*`` uses variance ``2 / (fan_in + fan_out)``; ``kaiming_*`` uses ``1 / fan_in``.
        fan_in: Inputs per output unit (``in_channels * k * k``).
        fan_out: Outputs per input unit (``out_channels * k * k``).
        scale: Extra multiplier (``init_weight`` in EDM's terms); 0 gives a zero tensor.

    Returns:
        ``tensor``.
    """
    with torch.no_grad():
        if mode.startswith("xavier"):
            var = 2.0 / (fan_in + fan_out)
        elif mode.startswith("kaiming"):
            var = 1.0 / fan_in
        else:
            raise ValueError(f"unknown init mode {mode!r}: pass one of xavier_uniform, xavier_normal, kaiming_*")
        if mode.endswith("uniform"):
            bound = math.sqrt(3.0 * var)
            tensor.uniform_(-bound, bound)
        else:
            tensor.normal_(0.0, math.sqrt(var))
        tensor.mul_(scale)
    return tensor


def _init_bias_(bias: Tensor, mode: InitMode, fan_in: int, fan_out: int, scale: float) -> None:
    if scale == 0:
        with torch.no_grad():
            bias.zero_()
    else:
        init_weight_(bias, mode, fan_in, fan_out, scale)


class Linear(nn.Module):
    """Fully connected layer ``y = x W^T + b`` with a fan-based initialisation.

    Args:
        in_features: Input size.
        out_features: Output size.
        bias: Whether to add a bias.
        init_mode: Initialisation of weight (and bias).
        init_weight: Multiplier of the initial weight.
        init_bias: Multiplier of the initial bias (0 = zero bias).

    Shape:
        ``[B, in_features] -> [B, out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        init_mode: InitMode = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        init_weight_(self.weight, init_mode, in_features, out_features, init_weight)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if self.bias is not None:
            _init_bias_(self.bias, init_mode, in_features, out_features, init_bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    precast_parameters = ("weight", "bias")
    """The parameters read through `matmul_parameter` (a `PreCast` holds copies of these)."""

    def forward(self, x: Tensor) -> Tensor:
        bias = matmul_parameter(self.bias, x) if self.bias is not None else None
        return linear(x, matmul_parameter(self.weight, x), bias)


class _FrozenMatmul(torch.autograd.Function):
    """A convolution or linear map whose weight and bias are frozen, saving only the weight for its backward pass.

    Autograd's own convolution and linear save their input for the weight's gradient. With the weight frozen (the
    teacher, and the fake score in the generator step, whose inputs carry the generator's gradient) that input would
    be held until the backward pass for nothing: for a 3x3 convolution after a group norm it is the norm's output, a
    tensor nothing else keeps. The input's gradient is the one autograd computes (``convolution_backward`` with
    only the input's gradient asked for, or ``grad @ weight``).
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple | None) -> Tensor:
        if conv is None:
            return F.linear(x, weight, bias)
        stride, padding, groups = conv
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:  # apart from forward: torch.func can transform it
        x, weight, _, conv = inputs
        ctx.save_for_backward(weight)
        ctx.geometry, ctx.conv = (x.shape, x.stride()), conv

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (weight,) = ctx.saved_tensors
        if ctx.conv is None:
            return grad.matmul(weight), None, None, None
        stride, padding, groups = ctx.conv
        # convolution_backward reads the input's shape and strides only (the strides choose the kernels' layout, as
        # for autograd's own convolution): an uninitialised tensor laid out like the input stands in for it.
        like_x = grad.new_empty_strided(*ctx.geometry)
        mask = (True, False, False)
        dx = torch.ops.aten.convolution_backward(
            grad, like_x, weight, None, stride, padding, (1, 1), False, (0, 0), groups, mask
        )[0]
        return dx, None, None, None


FROZEN_WEIGHT_ONLY = True
"""A convolution or linear layer whose weight and bias take no gradient saves only its weight for the backward pass
(`_FrozenMatmul`); ``False``: autograd's own layers, which save the input as well (for benchmarks and tests)."""


def _frozen_args(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """``(x, weight, bias)`` in the dtype the map computes in when only ``x`` carries a gradient, else ``None``.

    Under autocast the casts are made here, where autograd sees the input's (its gradient is cast back).
    """
    if not (FROZEN_WEIGHT_ONLY and torch.is_grad_enabled() and x.requires_grad):
        return None
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype == torch.float32:
        dtype = torch.get_autocast_dtype(device)
        return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return None  # let F.conv2d / F.linear report the mismatch
    return x, weight, bias


def conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1, padding: int = 0, groups: int = 1
) -> Tensor:
    """``F.conv2d`` (dilation 1) that saves only its weight for the backward pass when only ``x`` takes a gradient.

    With a trained weight or bias, or without a gradient, it is ``F.conv2d`` itself. Otherwise the output and ``x``'s
    gradient are ``F.conv2d``'s, under autocast too (the casts are made here, where autograd sees the input's), but
    ``x`` is not kept until the backward pass: a frozen network (the teacher; the fake score in the generator
    phase) holds far less between its forward and backward passes.

    Args:
        x: Input ``[B, C_in, H, W]``.
        weight: Filters ``[C_out, C_in / groups, k, k]``.
        bias: ``[C_out]`` or ``None``.
        stride: Stride in both directions.
        padding: Zero padding on each side.
        groups: Blocked connections from input to output channels.

    Returns:
        ``[B, C_out, H', W']``.
    """
    args = _frozen_args(x, weight, bias)
    if args is None:
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    return _FrozenMatmul.apply(*args, ((stride, stride), (padding, padding), groups))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` that saves only its weight for the backward pass when only ``x`` takes a gradient (see
    [`conv2d`][scoredistill.networks.layers.conv2d]).

    Args:
        x: Input ``[..., in_features]``.
        weight: ``[out_features, in_features]``.
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]``.
    """
    args = _frozen_args(x, weight, bias)
    return F.linear(x, weight, bias) if args is None else _FrozenMatmul.apply(*args, None)


def _fir_filter(taps: Sequence[int | float]) -> Tensor:
    """Separable 2-D FIR kernel ``outer(k, k) / sum(k)^2`` as a ``[1, 1, K, K]`` tensor."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(k, k) / k.sum().square())[None, None]


class Conv2d(nn.Module):
    """2-D convolution with optional FIR up- or down-sampling by 2 (Song et al. 2021, App. H).

    Resampling is a depthwise convolution with the separable filter ``outer(k, k) / sum(k)^2`` (scaled by 4
    when up-sampling, a stride-2 transposed convolution). By default resampling runs before the convolution;
    with ``fused_resample`` a down-sampling convolution runs first on a wider padding and the filter is
    applied after it (and an up-sampling filter first with a narrower padding), which is how NCSN++'s
    residual input branch is defined. ``kernel=0`` gives a pure resampler without parameters.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (must equal ``in_channels`` when ``kernel=0``).
        kernel: Square kernel size; 0 for no convolution.
        bias: Whether to add a bias (ignored when ``kernel=0``).
        up: Up-sample by 2.
        down: Down-sample by 2.
        resample_filter: FIR taps ``k`` (even length), e.g. ``(1, 1)`` (box) or ``(1, 3, 3, 1)``.
        fused_resample: Resample after (down) or before with less padding (up), see above.
        init_mode: Weight initialisation.
        init_weight: Multiplier of the initial weight.
        init_bias: Multiplier of the initial bias (0 = zero bias).

    Shape:
        ``[B, in_channels, H, W] -> [B, out_channels, H', W']`` with ``H' = 2H``, ``H/2`` or ``H``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[int | float] = (1, 1),
        fused_resample: bool = False,
        init_mode: InitMode = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        if kernel == 0 and in_channels != out_channels:
            raise ValueError(f"a resampler (kernel=0) keeps channels: got {in_channels} -> {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        if self.weight is not None:
            init_weight_(self.weight, init_mode, fan_in, fan_out, init_weight)
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        if self.bias is not None:
            _init_bias_(self.bias, init_mode, fan_in, fan_out, init_bias)
        self.register_buffer("resample_filter", _fir_filter(resample_filter) if up or down else None)
        # A two-tap box filter is 2x2 average pooling down and nearest-neighbour up-sampling: the same values
        # through much faster kernels than a depthwise convolution (ADM and DDPM++ use it).
        self._box = len(resample_filter) == 2 and resample_filter[0] == resample_filter[1]

    def extra_repr(self) -> str:
        kernel = self.weight.shape[-1] if self.weight is not None else 0
        mode = "up" if self.up else "down" if self.down else "none"
        return f"{self.in_channels}, {self.out_channels}, kernel={kernel}, resample={mode}"

    use_kernels: bool | None = None
    """``None``: box resampling of channels_last tensors through Triton kernels on CUDA; ``False``: native ops."""

    precast_parameters = ("weight", "bias")
    """The parameters read through `matmul_parameter` or `cast_parameter` (a `PreCast` holds copies of these)."""

    def _down(self, x: Tensor, f: Tensor, padding: int) -> Tensor:
        if self._box and padding == 0:
            if kernels.fused_resample_available(x, self.use_kernels):
                from ..kernels.resample_triton import box_down

                return box_down(x)
            return F.avg_pool2d(x, 2)
        return F.conv2d(x, f.expand(x.shape[1], 1, -1, -1), groups=x.shape[1], stride=2, padding=padding)

    def _up(self, x: Tensor, f: Tensor, padding: int) -> Tensor:
        if self._box and padding == 0:
            if kernels.fused_resample_available(x, self.use_kernels):
                from ..kernels.resample_triton import box_up

                return box_up(x)
            return F.interpolate(x, scale_factor=2, mode="nearest")
        w = (f * 4).expand(x.shape[1], 1, -1, -1)
        return F.conv_transpose2d(x, w, groups=x.shape[1], stride=2, padding=padding)

    def forward(self, x: Tensor, *, bias: bool = True) -> Tensor:
        """The convolution; ``bias=False`` leaves the bias out, for a caller that adds it later (fused)."""
        w = matmul_parameter(self.weight, x) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        b = matmul_parameter(self.bias, x) if self.bias is not None and bias else None

        # Resample and convolve. When the convolution comes last its bias is passed to it (the same sum; the
        # backend decides whether to fuse it: cuDNN's NHWC kernels still add it as a separate broadcast).
        if f is not None and w is not None and self.fused_resample and self.up:
            x = self._up(x, f, max(f_pad - w_pad, 0))
            return conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if f is not None and w is not None and self.fused_resample and self.down:
            x = self._down(conv2d(x, w, padding=w_pad + f_pad), f, 0)
            return x if b is None else x + b.reshape(1, -1, 1, 1)
        if f is not None:
            x = self._up(x, f, f_pad) if self.up else self._down(x, f, f_pad)
        return conv2d(x, w, b, padding=w_pad) if w is not None else x


def group_norm_act(
    x: Tensor,
    num_groups: int,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    *,
    add: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    silu: bool = False,
) -> Tensor:
    """``silu((group_norm(x + add) * weight + bias) * scale + shift)``: a UNet block's norm and conditioning.

    The reference composition of native ops; `scoredistill.kernels.groupnorm_triton` fuses it on CUDA.

    Args:
        x: ``[B, C, H, W]``.
        num_groups: Groups of the normalisation.
        weight: ``[C]`` affine weight (in ``x``'s dtype).
        bias: ``[C]`` affine bias (in ``x``'s dtype).
        eps: Variance floor.
        add: Optional ``[B, C, 1, 1]`` added to ``x`` before the normalisation (DDPM++'s noise embedding).
        scale: Optional ``[B, C, 1, 1]`` multiplier after it (ADM: ``1 + s``).
        shift: Optional ``[B, C, 1, 1]`` added after it (ADM: ``t``).
        silu: Apply SiLU last.

    Returns:
        A tensor like ``x``.
    """
    if add is not None:
        x = x + add
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None:
        y = y * scale if shift is None else torch.addcmul(shift, y, scale)
    elif shift is not None:
        y = y + shift
    return F.silu(y) if silu else y


def residual_add(
    h: Tensor, x: Tensor | None, bias: Tensor, scale: float = 1.0, *, use_kernels: bool | None = None
) -> Tensor:
    """``(h + x + bias) * scale``: a residual sum with the branch's convolution bias folded in.

    On CUDA this runs as one fused pass (`scoredistill.kernels.residual_triton`), saving the separate
    broadcast pass that adds a convolution's bias; elsewhere (or with ``use_kernels=False``) as native ops.

    Args:
        h: ``[B, C, H, W]``, a convolution's output computed without its bias.
        x: The residual, like ``h``, or ``None`` for none.
        bias: ``[C]``, the convolution's bias (and any other per-channel term of the sum).
        scale: Multiplier of the sum (DDPM++'s ``skip_scale``).
        use_kernels: ``False``: always the native ops.

    Returns:
        A tensor like ``h``.
    """
    if kernels.fused_residual_available(h, x, bias, use_kernels):
        from ..kernels.residual_triton import residual_add as fused

        return fused(h, x, bias, scale)
    y = h + bias.to(h.dtype).reshape(1, -1, 1, 1)
    if x is not None:
        y = y + x
    return y if scale == 1 else y * scale


def cat_channels(a: Tensor, b: Tensor, *, use_kernels: bool | None = None) -> Tensor:
    """``torch.cat([a, b], dim=1)``, the decoders' skip concatenation.

    On CUDA with channels_last operands (and the switch `scoredistill.kernels.concat_triton` ``FUSED_CAT`` on, its
    default), a Triton copy kernel does it; otherwise ``torch.cat``. The result is the same either way, bit for bit.

    Args:
        a: ``[B, Ca, H, W]``, the decoder's input.
        b: ``[B, Cb, H, W]``, the encoder's skip, of ``a``'s dtype and device.
        use_kernels: ``False``: always ``torch.cat``.

    Returns:
        ``[B, Ca + Cb, H, W]``.
    """
    if kernels.fused_cat_available(a, b, use_kernels):
        from ..kernels.concat_triton import cat_channels as fused

        return fused(a, b)
    return torch.cat([a, b], dim=1)


class GroupNorm(nn.Module):
    """Group normalisation with at most 32 groups and at least 4 channels per group.

    The forward pass optionally folds in the conditioning and activation around the norm (see
    [`group_norm_act`][scoredistill.networks.layers.group_norm_act]); on CUDA that whole expression runs as fused Triton
    kernels (set ``use_kernels = False`` on the module, or ``SCOREDISTILL_KERNELS=0``, for the native ops).

    Args:
        num_channels: Channels to normalise.
        num_groups: Upper bound on the number of groups.
        min_channels_per_group: Lower bound on the channels per group.
        eps: Variance floor.

    Shape:
        ``[B, C, H, W] -> [B, C, H, W]``.
    """

    use_kernels: bool | None = None
    """``None``: fused kernels on CUDA when available; ``False``: always the native ops."""

    _kernel_strategy: str | None = None

    @property
    def kernel_strategy(self) -> str | None:
        """The fused kernels' launch strategy this layer prefers: ``"tiles"``, ``"one_pass"``, ``"hybrid"`` or
        ``None`` (the tiles); see ``scoredistill.kernels.groupnorm_triton.set_strategy``, whose default
        (``"auto"``) follows it. The same maths whatever it is; a network sets it where one strategy measured
        faster on whole iterations (`SongUNet` prefers ``"hybrid"``)."""
        return self._kernel_strategy

    @kernel_strategy.setter
    def kernel_strategy(self, value: str | None) -> None:
        if value is not None and value not in kernels.GROUP_NORM_STRATEGIES:
            raise ValueError(f"kernel_strategy must be None or one of {kernels.GROUP_NORM_STRATEGIES}, got {value!r}")
        self._kernel_strategy = value

    def __init__(self, num_channels: int, *, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        if num_channels % self.num_groups:
            raise ValueError(
                f"GroupNorm over {num_channels} channels uses {self.num_groups} groups, which do not divide it: "
                "pick model_channels / channel_mult so every width is a multiple of 32 (or below 128 and of 4)"
            )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, groups={self.num_groups}, eps={self.eps}"

    def forward(
        self,
        x: Tensor,
        *,
        add: Tensor | None = None,
        scale: Tensor | None = None,
        shift: Tensor | None = None,
        silu: bool = False,
    ) -> Tensor:
        """``silu((norm(x + add)) * scale + shift)`` with each part optional; see
        [`group_norm_act`][scoredistill.networks.layers.group_norm_act]."""
        kwargs = {"add": add, "scale": scale, "shift": shift, "silu": silu}
        with _keep_half(x):
            if self._fused(x):
                from ..kernels.groupnorm_triton import group_norm_act as fused  # imports Triton: only when used

                return fused(
                    x, self.num_groups, self.weight, self.bias, self.eps, **kwargs, prefer=self.kernel_strategy
                )
            weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
            return group_norm_act(x, self.num_groups, weight, bias, self.eps, **kwargs)

    def forward_with_input(self, x: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(self(x, **kwargs), x)``, for a second use of ``x`` such as a residual block's skip path.

        On the fused path the returned ``x`` is routed through the norm's backward, which adds the gradient of
        that second use to its own input gradient in the same kernel (autograd would otherwise sum the two in a
        pass of its own). The values are ``x``'s; the gradient is the same up to the sum's rounding.

        Args:
            x: ``[B, C, H, W]``.
            **kwargs: [`forward`][scoredistill.networks.layers.GroupNorm.forward]'s keywords.
        """
        if not self._fused(x):
            return self(x, **kwargs), x
        from ..kernels.groupnorm_triton import group_norm_act_with_input as fused

        with _keep_half(x):
            return fused(x, self.num_groups, self.weight, self.bias, self.eps, **kwargs, prefer=self.kernel_strategy)

    def _fused(self, x: Tensor) -> bool:
        return kernels.fused_group_norm_available(x, self.num_groups, self.use_kernels)


def _keep_half(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off around a norm of a half-precision ``x``: autocast would promote group_norm to float32 and store
    float32 activations; both paths keep them in x's half dtype (the statistics are float32 either way)."""
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(x w_i), sin(x w_i)]`` with ``w_i = (1 / max_positions)^(i / n)``.

    Args:
        num_channels: Output size (even); ``num_channels / 2`` frequencies.
        max_positions: The longest period.
        endpoint: Whether the frequency exponents reach 1 (``n = num_channels/2 - 1``) or stop short of it
            (``n = num_channels/2``).

    Shape:
        ``[B] -> [B, num_channels]``: cosines, then sines.
    """

    def __init__(self, num_channels: int, *, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        if num_channels % 2 or num_channels < 2 + 2 * endpoint:
            raise ValueError(f"num_channels must be even and at least {2 + 2 * endpoint}, got {num_channels}")
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def extra_repr(self) -> str:
        return f"{self.num_channels}, max_positions={self.max_positions}, endpoint={self.endpoint}"

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        freqs = (1.0 / self.max_positions) ** exponents
        angles = torch.outer(x.float(), freqs)
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(x.dtype)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f_i), sin(2 pi x f_i)]``, ``f_i ~ N(0, scale^2)`` (NCSN++).

    Args:
        num_channels: Output size (even).
        scale: Standard deviation of the frequencies.

    Shape:
        ``[B] -> [B, num_channels]``: cosines, then sines.
    """

    def __init__(self, num_channels: int, *, scale: float = 16.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = torch.outer(x.float(), (2 * math.pi) * self.freqs.float())
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(x.dtype)


class UNetBlock(nn.Module):
    """Pre-activation residual block with noise conditioning and optional self-attention.

    ``h = conv0(silu(norm0(x)))`` (with up/down-sampling), then the embedding enters either additively,
    ``silu(norm1(h + affine(emb)))`` (DDPM++), or as scale-shift, ``silu(norm1(h) * (1 + s) + t)`` (ADM);
    ``h = conv1(dropout(h))``; ``x = (h + skip(x)) * skip_scale``. With attention, multi-head self-attention
    over the pixels follows: ``x = (proj(attn(qkv(norm2(x)))) + x) * skip_scale``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        emb_channels: Size of the conditioning embedding.
        up: Up-sample by 2 in ``conv0`` and ``skip``.
        down: Down-sample by 2 in ``conv0`` and ``skip``.
        attention: Append self-attention.
        num_heads: Attention heads; ``None`` derives them as ``out_channels // channels_per_head``.
        channels_per_head: Used when ``num_heads`` is ``None``.
        dropout: Dropout probability before ``conv1``.
        skip_scale: Multiplier after each residual sum (DDPM++: sqrt(0.5); ADM: 1).
        eps: GroupNorm epsilon.
        resample_filter: FIR taps for up/down-sampling.
        resample_proj: Give the resampling skip branch a 1x1 convolution even when channels match.
        adaptive_scale: Scale-shift (ADM) instead of additive (DDPM++) conditioning.
        init: Initialisation of ``conv0``, ``affine`` and ``skip``.
        init_zero: Initialisation of the last layer of each branch (``conv1``, ``proj``).
        init_attn: Initialisation of ``qkv`` (``init`` when ``None``).

    Shape:
        x: ``[B, in_channels, H, W]``; emb: ``[B, emb_channels]``; returns ``[B, out_channels, H', W']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[int | float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0.0}
        self.in_channels = in_channels
        self.out_channels = out_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        if attention and (self.num_heads < 1 or out_channels % self.num_heads):
            raise ValueError(f"attention over {out_channels} channels cannot use {self.num_heads} heads")
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = {"up": up, "down": down, "resample_filter": resample_filter}

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, dropout={self.dropout}, skip_scale={self.skip_scale:g}"

    def _attention(self, xn: Tensor, *, proj_bias: bool = True) -> Tensor:
        # The qkv channels are laid out as [head, channel, (q, k, v)], as in EDM's checkpoints. SDPA's fused kernels
        # need unit stride in the last dimension of q, k and v (otherwise SDPA silently materialises the HW x HW
        # scores). Contiguous maps: q, k and v are copied to [B, heads, HW, head_channels], and the output back.
        # channels_last maps: the pixels are rows of a [B * HW, C] matrix, so the two 1x1 convolutions are GEMMs
        # (cuBLAS can add qkv's bias in the GEMM's epilogue); qkv's output channels are reordered to [(q, k, v), head,
        # channel] (the same products), so that q, k and v are column blocks that SDPA reads in place. No copies
        # in either direction, except the one SDPA's backward makes to stack the three input gradients.
        b, h = xn.shape[0], xn.shape[2]
        heads = self.num_heads
        if kernels.channels_last(xn):
            # Output channels [head, channel, (q, k, v)] -> [(q, k, v), head, channel]: the same products, reordered.
            qkv_order = "(heads d three) c 1 1 -> (three heads d) c"
            weight = rearrange(cast_parameter(self.qkv.weight, xn.dtype), qkv_order, heads=heads, three=3)
            bias = self.qkv.bias
            if bias is not None:
                bias = rearrange(
                    cast_parameter(bias, xn.dtype), "(heads d three) -> (three heads d)", heads=heads, three=3
                )
            rows = rearrange(xn, "b c h w -> (b h w) c")  # a view: channels_last is [B, H, W, C] in memory
            if self.split_qkv:
                # One [B * HW, C] GEMM each: SDPA's backward can then hand back each gradient in its input's layout,
                # which the linear's backward reads in place (no stacking of the three, no layout copy).
                biases = (None,) * 3 if bias is None else bias.chunk(3)
                q, k, v = (
                    rearrange(linear(rows, w, b_), "(b n) (heads d) -> b heads n d", b=b, heads=heads)
                    for w, b_ in zip(weight.chunk(3), biases, strict=True)
                )
            else:
                qkv = linear(rows, weight, bias)
                # Column blocks of the [B * HW, 3C] product, read in place: [B, heads, HW, head_channels], strided.
                q, k, v = rearrange(qkv, "(b n) (three heads d) -> three b heads n d", b=b, three=3, heads=heads)
            a = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> (b n) (heads d)")
            proj_b = cast_parameter(self.proj.bias, a.dtype) if proj_bias and self.proj.bias is not None else None
            out = linear(a, rearrange(cast_parameter(self.proj.weight, a.dtype), "o c 1 1 -> o c"), proj_b)
            return rearrange(out, "(b h w) c -> b c h w", b=b, h=h)
        qkv = rearrange(self.qkv(xn), "b (heads d three) h w -> three b heads (h w) d", heads=heads, three=3)
        q, k, v = qkv.contiguous().unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, head_channels]
        return self.proj(rearrange(a, "b heads (h w) d -> b (heads d) h w", h=h), bias=proj_bias)

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The block on ``x`` ``[B, C_in, H, W]`` conditioned on ``emb`` ``[B, emb_channels]``.

        ``cond``: this block's conditioning computed ahead by
        [`block_conditioning`][scoredistill.networks.layers.block_conditioning] (``emb`` is then not read): the
        additive ``affine(emb) + conv0.bias`` ``[B, C_out]``, or the scale-shift pair ``(s, t)``.
        """
        # Where the fused norms run, every convolution bias is added by the fused kernel that follows its convolution
        # instead of a separate broadcast pass: conv0's enters norm1 with the conditioning (norm1(h + b0)), conv1's
        # and the skip's the residual sum, proj's the attention's residual sum. The same block up to rounding.
        fold = self._fold_biases(x)

        # Residual branch with noise conditioning.
        h, x = self._norm_and_input(self.norm0, x, fold, silu=True)
        bias_in_cond = cond is not None and not self.adaptive_scale  # block_conditioning added conv0's bias
        h = self.conv0(h, bias=not (fold or bias_in_cond))
        b0 = cast_parameter(self.conv0.bias, h.dtype).reshape(1, -1, 1, 1) if fold and not bias_in_cond else None
        if cond is None:
            cond = self.affine(emb)
            cond = cond.chunk(2, dim=1) if self.adaptive_scale else cond
        # (cast to conv0's output dtype, not to the block input's: under CPU autocast the two can differ)
        if self.adaptive_scale:
            scale, shift = (c[:, :, None, None].to(h.dtype) for c in cond)
            add = None if b0 is None else b0.expand(h.shape[0], -1, -1, -1)
            h = self.norm1(h, add=add, scale=scale + 1, shift=shift, silu=True)
        else:
            params = cond[:, :, None, None].to(h.dtype)
            h = self.norm1(h, add=params if b0 is None else params + b0, silu=True)
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training), bias=not fold)
        bias = self.conv1.bias if fold else None
        if self.skip is None:
            skip = x
        elif fold and self.skip.bias is not None:
            skip, bias = self.skip(x, bias=False), bias + self.skip.bias
        else:
            skip = self.skip(x)
        x = self._residual(h, skip, bias)

        # Self-attention over the pixels.
        if self.num_heads:
            xn, x = self._norm_and_input(self.norm2, x, fold)
            x = self._residual(self._attention(xn, proj_bias=not fold), x, self.proj.bias if fold else None)
        return x

    def _norm_and_input(self, norm: GroupNorm, x: Tensor, fold: bool, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(norm(x), x)`` for a norm whose input also feeds the residual sum; with `skip_grad_in_norm` (on the
        fused path, outside torch.compile) the two gradients of ``x`` are summed in the norm's backward kernel."""
        if fold and self.skip_grad_in_norm and not torch.compiler.is_compiling():
            return norm.forward_with_input(x, **kwargs)
        return norm(x, **kwargs), x

    fold_biases: bool = True
    """Fold the convolution biases into the fused kernels that follow them when those run (see ``forward``)."""

    split_qkv: bool = False
    """The channels_last attention's q, k and v by three GEMMs instead of one, so that SDPA's backward need not stack
    their gradients and copy them into the qkv product's layout (on ImageNet-64 those two copies took about 12 ms of
    a 273 ms step on an H100). The same products. Whole SiDA iterations at batch 32: +1.4% (H100) and +1.9% (H200)
    on ImageNet-64's ADM, -1.2% on CIFAR-10's DDPM++ (one head at 16x16; H200). `DhariwalUNet` turns it on in its
    attention blocks; off elsewhere."""

    skip_grad_in_norm: bool = True
    """Sum the two gradients of a norm's input that also feeds the residual sum (the block's input: ``norm0`` and
    the skip path; the attention's input: ``norm2`` and its residual) in the fused norm's backward kernel, instead
    of autograd's separate addition of the two (a read of both and a write, per block). Only where the biases fold
    (the fused kernels run) and outside ``torch.compile`` (not yet tested on a GPU there); the same gradients up to
    the sum's rounding."""

    def _fold_biases(self, x: Tensor) -> bool:
        convs = (self.conv0, self.conv1, self.proj) if self.num_heads else (self.conv0, self.conv1)
        return (
            self.fold_biases
            and all(conv.bias is not None for conv in convs)
            and kernels.fused_group_norm_available(x, self.norm0.num_groups, self.norm1.use_kernels)
        )

    def _residual(self, h: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``(h + x) * skip_scale``, or with a folded convolution bias the fused
        [`residual_add`][scoredistill.networks.layers.residual_add]."""
        if bias is not None:
            return residual_add(h, x, bias, self.skip_scale, use_kernels=self.norm1.use_kernels)
        return h + x if self.skip_scale == 1 else (h + x) * self.skip_scale


def block_conditioning(blocks: Sequence[UNetBlock], emb: Tensor) -> list[Tensor | tuple[Tensor, Tensor]] | None:
    """Every block's conditioning from one GEMM: the ``cond`` that each of ``blocks`` takes in its forward pass.

    Every residual block maps the same embedding through an ``affine`` layer of its own: one small GEMM per block
    and network pass, and in the backward pass per block one for the input's gradient, one for the weight's, a
    reduction for the bias and an addition into the embedding's gradient. Here the blocks' weights are stacked and
    the GEMM runs once; its output is split into the blocks' parts (one autograd node, so the backward gathers the
    parts' gradients in one copy). With additive conditioning (DDPM++) each block's ``conv0`` bias joins the stacked
    bias, so the block adds ``affine(emb) + conv0.bias`` before its norm (the same sum; the block's own addition
    of the two goes). The same products as the blocks' own layers, up to rounding.

    Args:
        blocks: The blocks, in any order; all additive or all scale-shift.
        emb: The embedding ``[B, emb_channels]`` they all read.

    Returns:
        One ``cond`` per block: ``[B, C_out]`` (additive) or the pair ``(s, t)`` of ``[B, C_out]`` (scale-shift,
        ``norm1(h) * (1 + s) + t``); ``None`` where the blocks do not allow it (mixed conditioning, a layer
        without its bias), for the blocks to compute their own.
    """
    if not blocks:
        return []
    adaptive = blocks[0].adaptive_scale
    for block in blocks:
        if block.adaptive_scale != adaptive or block.affine.bias is None or block.conv0.bias is None:
            return None
    weight = torch.cat([matmul_parameter(block.affine.weight, emb) for block in blocks])
    bias = torch.cat([matmul_parameter(block.affine.bias, emb) for block in blocks])
    if not adaptive:
        bias = bias + torch.cat([matmul_parameter(block.conv0.bias, emb) for block in blocks])
    parts = linear(emb, weight, bias).split([n for b in blocks for n in _cond_widths(b)], dim=1)
    return list(zip(parts[0::2], parts[1::2], strict=True)) if adaptive else list(parts)


def _cond_widths(block: UNetBlock) -> tuple[int, ...]:
    """The widths of ``block``'s conditioning: ``(C_out,)``, or ``(C_out, C_out)`` for scale and shift."""
    return (block.out_channels,) * (2 if block.adaptive_scale else 1)


def channel_mean_logits(x: Tensor) -> Tensor:
    """SiDA's discriminator logit map: the channel mean of an encoder feature map, in float32.

    Shape:
        ``[B, C, h, w] -> [B, 1, h, w]``.
    """
    return x.float().mean(dim=1, keepdim=True)


class EncoderDecoderUNet(nn.Module):
    """The entry points shared by the EDM UNets; subclasses define ``_embed``, ``_encode`` and ``_decode``.

    ``_encode`` returns every encoder block's output (the decoder's skips); the last one is the
    lowest-resolution map whose channel mean is SiDA's discriminator logit map.

    Subclasses take one config dataclass (``config_class``); `to_config` and `from_config` are the
    JSON form that ``config.json`` records.
    """

    config_class: type
    config: Any

    batch_conditioning: bool = True
    """Compute the residual blocks' conditioning with one GEMM per encoder and decoder pass
    ([`block_conditioning`][scoredistill.networks.layers.block_conditioning]) instead of one per block. The same
    products up to rounding. Whole SiDA iterations on an H100 (2026-12-07): +3.1% at CIFAR-10 batch 32, +0.5% on
    ImageNet-64, +0.7% at CIFAR-10 batch 128. ``False``: each block's own ``affine`` layer
    (``benchmarks/bench_step.py`` setting ``graphs-cl-nobcond``)."""

    def _block_conditions(self, stage: Iterable[nn.Module], emb: Tensor) -> Iterator[Any]:
        """Each `UNetBlock` of ``stage``'s ``cond`` in order: from one GEMM under `batch_conditioning`, else ``None``
        (the blocks compute their own)."""
        conds = None
        if self.batch_conditioning:
            conds = block_conditioning([m for m in stage if isinstance(m, UNetBlock)], emb)
        return iter(conds) if conds is not None else itertools.repeat(None)

    def to_config(self) -> dict[str, Any]:
        """The backbone's config as JSON-ready values; `from_config` inverts it."""
        return self.config.to_dict()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EncoderDecoderUNet:
        """A freshly initialised backbone for a `to_config` dict (unknown keys raise ``ValueError``)."""
        return cls(cls.config_class.from_dict(config))

    @classmethod
    def config_facts(cls, config: Mapping[str, Any]) -> BackboneFacts:
        """Check a `to_config` dict with the config dataclass (nothing is built) and bound the network's size.

        The bound counts only each residual block's tensors and second 3x3 convolution: per level,
        ``num_blocks`` encoder and ``num_blocks + 1`` decoder blocks, each with at least eight tensors (two norms,
        two convolutions and the embedding affine, weights and biases) and ``out_channels^2 * 9`` weights.
        """
        c = cls.config_class.from_dict(config)
        blocks = 2 * c.num_blocks + 1
        elements = sum(blocks * 9 * (c.model_channels * mult) ** 2 for mult in c.channel_mult)
        return BackboneFacts(
            label_dim=c.label_dim,
            augment_dim=c.augment_dim,
            sample_shape=(c.img_channels, c.img_resolution, c.img_resolution),
            min_tensors=8 * blocks * len(c.channel_mult),
            min_elements=elements,
        )

    def forward_with_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One pass returning ``(F(x), logits)``; logits are float32 ``[B, 1, r, r]``."""
        emb = self._embed(noise_labels, class_labels, augment_labels)
        skips = self._encode(x, emb)
        logits = channel_mean_logits(skips[-1])
        return self._decode(skips, emb), logits

    def forward_with_logits_shared(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        decode: int,
    ) -> tuple[Tensor, Tensor]:
        """One encoder pass over the whole batch and the decoder over its first ``decode`` samples: returns
        ``(F(x[:decode]), logits)``, the logits float32 ``[B, 1, r, r]`` for every sample.

        What [`forward_with_logits`][scoredistill.networks.layers.EncoderDecoderUNet.forward_with_logits] and
        [`encoder_logits`][scoredistill.networks.layers.EncoderDecoderUNet.encoder_logits] give on the two parts
        of the batch, from one encoder pass twice as large (SiDA's fake-score phase: generator samples and real
        images). Every layer acts per sample, so only dropout's random draws differ.
        """
        emb = self._embed(noise_labels, class_labels, augment_labels)
        skips = self._encode(x, emb)
        logits = channel_mean_logits(skips[-1])
        return self._decode([skip[:decode] for skip in skips], emb[:decode]), logits

    def encoder_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """SiDA's logit map alone (the channel mean of the last encoder block); the decoder is skipped."""
        emb = self._embed(noise_labels, class_labels, augment_labels)
        return channel_mean_logits(self._encode(x, emb)[-1])

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """``F(x, noise_labels, class_labels, augment_labels)``, shape of ``x``."""
        emb = self._embed(noise_labels, class_labels, augment_labels)
        return self._decode(self._encode(x, emb), emb)
