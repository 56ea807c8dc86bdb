"""ADM UNet (Dhariwal & Nichol 2021) with EDM's parameter names, plus SiDA's encoder logits.

A clean-room implementation from the paper: Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis" (Sec. 3: multi-head attention with 64 channels per head at 32, 16 and 8 pixels, BigGAN-style
residual up/down-sampling, adaptive group normalisation ``GroupNorm(h) * (1 + s) + t``), with the EDM settings
of Karras et al. 2022 (App. F.2: kaiming-uniform initialisation scaled by sqrt(1/3), zero last layers, class
embedding added after the noise MLP). State-dict keys match EDM's ``DhariwalUNet``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2d, EncoderDecoderUNet, GroupNorm, Linear, PositionalEmbedding, UNetBlock, cat_channels
from .song_unet import _as_tuples, _check_common, _from_dict

__all__ = ["CHANNELS_PER_HEAD", "DhariwalUNet", "DhariwalUNetConfig"]

CHANNELS_PER_HEAD = 64
"""ADM's attention width per head (Dhariwal & Nichol 2021, Sec. 3)."""


@dataclass(frozen=True, kw_only=True)
class DhariwalUNetConfig:
    """Constructor arguments of [`DhariwalUNet`][scoredistill.networks.DhariwalUNet], under EDM's names
    (``DhariwalUNet``/``EDMPrecond`` kwargs).

    Defaults are EDM's ImageNet-64 ADM teacher except ``label_dim`` (0 here, 1000 in the preset).
    """

    # fmt: off
    img_resolution: int                              # Image height = width, in pixels.
    img_channels: int = 3                            # Channels in = channels out.
    label_dim: int = 0                               # Number of classes, 0 = unconditional.
    augment_dim: int = 0                             # Augmentation label size, 0 = none.
    model_channels: int = 192                        # Base channel count.
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)     # Channel multiplier per resolution level.
    channel_mult_emb: int = 4                        # Embedding width = model_channels * this.
    num_blocks: int = 3                              # Residual blocks per resolution (decoder: +1).
    attn_resolutions: tuple[int, ...] = (32, 16, 8)  # Resolutions with self-attention (64 ch per head).
    dropout: float = 0.10                            # Dropout before each block's second conv.
    label_dropout: float = 0.0                       # Train-time class-label drop rate (CFG).
    # fmt: on

    def __post_init__(self) -> None:
        _as_tuples(self, ("channel_mult", "attn_resolutions"))
        _check_common(self)
        levels = len(self.channel_mult)
        for level, mult in enumerate(self.channel_mult):
            res = self.img_resolution >> level
            if res in self.attn_resolutions or level == levels - 1:
                width = self.model_channels * mult
                heads = width // CHANNELS_PER_HEAD
                if heads < 1 or width % heads:
                    raise ValueError(
                        f"ADM attention at {res}x{res} over {width} channels needs a width of at least "
                        f"{CHANNELS_PER_HEAD} divisible by its head count: raise model_channels * channel_mult "
                        f"(the lowest level always has attention) or drop {res} from attn_resolutions"
                    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of
        [`from_dict`][scoredistill.networks.DhariwalUNetConfig.from_dict]."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DhariwalUNetConfig:
        """Build from [`to_dict`][scoredistill.networks.DhariwalUNetConfig.to_dict] output (lists become tuples);
        unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


class DhariwalUNet(EncoderDecoderUNet):
    """ADM backbone ``F(x, noise_labels, class_labels, augment_labels)`` with SiDA's encoder logits.

    The mapping network embeds the noise label (sinusoidal, no endpoint), adds the augmentation embedding,
    applies Linear+SiLU+Linear, adds the class embedding (a bias-free Linear on the one-hot label) and a SiLU.
    Residual blocks use scale-shift conditioning, skip scale 1 and parameter-free resampling skips. The encoder
    is ``enc`` (input conv, then per level a down-sampling block and ``num_blocks`` blocks); the decoder is
    ``dec`` (middle blocks ``in0``/``in1``, then per level an up-sampling block and ``num_blocks + 1`` blocks
    on concatenated skips) followed by ``out_norm`` and ``out_conv``.

    Args:
        config: Architecture; see [`DhariwalUNetConfig`][scoredistill.networks.DhariwalUNetConfig].

    Its attention blocks compute q, k and v by three GEMMs (`UNetBlock.split_qkv`): the same products, measured
    faster on this network.

    Shape:
        x: ``[B, C, R, R]``; noise_labels: ``[B]``; class_labels: ``[B, label_dim]`` or ``None``;
        augment_labels: ``[B, augment_dim]`` or ``None``; returns ``[B, C, R, R]``; logits: ``[B, 1, r, r]``
        with ``r = R / 2^(len(channel_mult) - 1)``.

    References:
        Dhariwal & Nichol 2021, Sec. 3; Karras et al. 2022 (EDM), App. F.2; Zhou et al. 2025 (SiDA), Sec. 3.
    """

    config_class = DhariwalUNetConfig

    def __init__(self, config: DhariwalUNetConfig):
        super().__init__()
        if not isinstance(config, DhariwalUNetConfig):
            raise TypeError(f"DhariwalUNet takes a DhariwalUNetConfig, got {type(config).__name__}")
        self.config = c = config
        emb_channels = c.model_channels * c.channel_mult_emb
        init = {"init_mode": "kaiming_uniform", "init_weight": math.sqrt(1 / 3), "init_bias": math.sqrt(1 / 3)}
        init_zero = {"init_mode": "kaiming_uniform", "init_weight": 0.0, "init_bias": 0.0}
        block_kwargs = {
            "emb_channels": emb_channels,
            "channels_per_head": CHANNELS_PER_HEAD,
            "dropout": c.dropout,
            "init": init,
            "init_zero": init_zero,
        }

        # Mapping network.
        self.map_noise = PositionalEmbedding(c.model_channels)
        self.map_augment = Linear(c.augment_dim, c.model_channels, bias=False, **init_zero) if c.augment_dim else None
        self.map_layer0 = Linear(c.model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(
                c.label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(c.label_dim)
            )
            if c.label_dim
            else None
        )

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = c.img_channels
        skips: list[int] = []
        for level, mult in enumerate(c.channel_mult):
            res = c.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, c.model_channels * mult, 3, **init)
                cout = c.model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            skips.append(cout)
            for idx in range(c.num_blocks):
                cin, cout = cout, c.model_channels * mult
                attn = res in c.attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                skips.append(cout)

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            res = c.img_resolution >> level
            if level == len(c.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(c.num_blocks + 1):
                cin, cout = cout + skips.pop(), c.model_channels * mult
                attn = res in c.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, c.img_channels, 3, **init_zero)

        # q, k and v by three GEMMs in the channels_last attention: whole SiDA iterations of the ImageNet-64 ADM ran
        # 1.4% (H100) and 1.9% (H200) faster so at batch 32, and DDPM++'s slower (benchmarks/RESULTS.md, seventh
        # and eighth rounds).
        for block in self.modules():
            if isinstance(block, UNetBlock) and block.num_heads:
                block.split_qkv = True

    def extra_repr(self) -> str:
        return f"config={self.config}"

    def _embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim={self.config.label_dim}): pass labels")
            labels = class_labels.to(emb.dtype)
            if self.training and self.config.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.config.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        return F.silu(emb)

    def _encode(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        skips: list[Tensor] = []
        conds = self._block_conditions(self.enc.values(), emb)
        for block in self.enc.values():
            x = block(x, emb, next(conds)) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        return skips

    def _decode(self, skips: list[Tensor], emb: Tensor) -> Tensor:
        x = skips[-1]
        conds = self._block_conditions(self.dec.values(), emb)
        for name, block in self.dec.items():
            if "_block" in name:
                x = cat_channels(x, skips.pop())
            x = block(x, emb, next(conds))
        return self.out_conv(self.out_norm(x, silu=True))
