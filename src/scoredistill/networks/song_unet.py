"""DDPM++ / NCSN++ UNet (Song et al. 2021) with EDM's parameter names, plus SiDA's encoder logits.

A clean-room implementation from the papers: Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations" (App. H: DDPM++ and NCSN++), with the EDM settings of Karras et al. 2022
(App. F.2: additive embedding, sqrt(0.5) skip scaling, xavier-uniform initialisation, near-zero last layers).
State-dict keys match EDM's ``SongUNet`` so published teachers load unchanged; see
[`scoredistill.networks.load_edm_state_dict`][scoredistill.networks.load_edm_state_dict].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    Conv2d,
    EncoderDecoderUNet,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    cat_channels,
)

__all__ = ["SongUNet", "SongUNetConfig"]

_TUPLE_FIELDS = ("channel_mult", "attn_resolutions", "resample_filter")


def _as_tuples(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, (list, tuple)):
            object.__setattr__(config, name, tuple(value))
        else:
            raise TypeError(f"{name} must be a tuple of numbers, e.g. {name}=(1, 2), got {value!r}")


def _check_common(config: Any) -> None:
    """Checks shared by the UNet configs; raise ValueError naming what to pass instead."""
    c = config
    for name in ("img_resolution", "img_channels", "model_channels", "channel_mult_emb", "num_blocks"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 1:
            raise ValueError(f"{name} must be a positive int, got {getattr(c, name)!r}")
    for name in ("label_dim", "augment_dim"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 = none), got {getattr(c, name)!r}")
    if not c.channel_mult or any(not isinstance(m, int) or m < 1 for m in c.channel_mult):
        raise ValueError(
            f"channel_mult must be a non-empty tuple of positive ints, e.g. (1, 2, 2), got {c.channel_mult}"
        )
    levels = len(c.channel_mult)
    if c.img_resolution % (1 << (levels - 1)):
        raise ValueError(
            f"img_resolution {c.img_resolution} must be divisible by 2^(len(channel_mult) - 1) = {1 << (levels - 1)}: "
            "pass fewer channel_mult levels or a larger resolution"
        )
    resolutions = [c.img_resolution >> level for level in range(levels)]
    bad = [r for r in c.attn_resolutions if r not in resolutions]
    if bad:
        raise ValueError(f"attn_resolutions {bad} are not resolutions of this UNet: pick from {resolutions}")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {c.dropout}")
    if not 0.0 <= c.label_dropout <= 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1], got {c.label_dropout}")
    if c.label_dropout > 0 and c.label_dim == 0:
        raise ValueError("label_dropout needs a class-conditional network: set label_dim > 0 or label_dropout=0")


def _from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True, kw_only=True)
class SongUNetConfig:
    """Constructor arguments of [`SongUNet`][scoredistill.networks.SongUNet], under EDM's names
    (``SongUNet``/``EDMPrecond`` kwargs).

    Defaults are EDM's DDPM++ at 64x64 (channel_mult 1,2,2,2); see `.presets` for the published teachers.
    """

    # fmt: off
    img_resolution: int                                                 # Image height = width, in pixels.
    img_channels: int = 3                                               # Channels in = channels out.
    label_dim: int = 0                                                  # Number of classes, 0 = unconditional.
    augment_dim: int = 0                                                # Augmentation label size, 0 = none (EDM: 9).
    model_channels: int = 128                                           # Base channel count.
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)                        # Channel multiplier per resolution level.
    channel_mult_emb: int = 4                                           # Embedding width = model_channels * this.
    num_blocks: int = 4                                                 # Residual blocks per resolution (decoder: +1).
    attn_resolutions: tuple[int, ...] = (16,)                           # Resolutions with self-attention.
    dropout: float = 0.10                                               # Dropout before each block's second conv.
    label_dropout: float = 0.0                                          # Train-time class-label drop rate (CFG).
    embedding_type: Literal["positional", "fourier"] = "positional"     # Noise embedding: DDPM++ / NCSN++.
    channel_mult_noise: int = 1                                         # Noise embedding width = model_channels * this.
    encoder_type: Literal["standard", "skip", "residual"] = "standard"  # Input branch: none / skip / residual.
    decoder_type: Literal["standard", "skip"] = "standard"              # Output branch: last level / every level.
    resample_filter: tuple[int, ...] = (1, 1)                           # FIR taps: (1, 1) DDPM++, (1, 3, 3, 1) NCSN++.
    # fmt: on

    def __post_init__(self) -> None:
        _as_tuples(self, _TUPLE_FIELDS)
        _check_common(self)
        if self.embedding_type not in ("positional", "fourier"):
            raise ValueError(
                f"embedding_type must be 'positional' (DDPM++) or 'fourier' (NCSN++), got {self.embedding_type!r}"
            )
        if self.encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {self.encoder_type!r}")
        if self.decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {self.decoder_type!r}")
        if not isinstance(self.channel_mult_noise, int) or self.channel_mult_noise < 1:
            raise ValueError(f"channel_mult_noise must be a positive int, got {self.channel_mult_noise!r}")
        if not self.resample_filter or len(self.resample_filter) % 2 or sum(self.resample_filter) <= 0:
            raise ValueError(
                f"resample_filter must have an even number of taps with a positive sum, e.g. (1, 1) or (1, 3, 3, 1), "
                f"got {self.resample_filter}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of
        [`from_dict`][scoredistill.networks.SongUNetConfig.from_dict]."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SongUNetConfig:
        """Build from [`to_dict`][scoredistill.networks.SongUNetConfig.to_dict] output (lists become tuples); unknown
        keys raise ``ValueError``."""
        return _from_dict(cls, data)


class SongUNet(EncoderDecoderUNet):
    """DDPM++ / NCSN++ backbone ``F(x, noise_labels, class_labels, augment_labels)`` with SiDA's encoder logits.

    The mapping network embeds the noise label (sinusoidal or random Fourier features, sin/cos halves swapped
    as in EDM), adds the class (one-hot scaled by sqrt(label_dim)) and augmentation embeddings, and applies two
    Linear+SiLU layers. The encoder is ``enc`` (input conv, then per level a down-sampling block and
    ``num_blocks`` blocks, optionally with NCSN++'s skip/residual input branch); the decoder is ``dec`` (two
    middle blocks ``in0``/``in1`` at the lowest level, then per level an up-sampling block and
    ``num_blocks + 1`` blocks on concatenated skips, and a GroupNorm+SiLU+conv output head on the last level
    or on every level for ``decoder_type='skip'``).

    Args:
        config: Architecture; see [`SongUNetConfig`][scoredistill.networks.SongUNetConfig].

    Its group norms prefer the fused kernels' ``"hybrid"`` launch strategy (`GroupNorm.kernel_strategy`): the
    same maths, measured faster on this network.

    Shape:
        x: ``[B, C, R, R]``; noise_labels: ``[B]``; class_labels: ``[B, label_dim]`` or ``None``;
        augment_labels: ``[B, augment_dim]`` or ``None``; returns ``[B, C, R, R]``; logits: ``[B, 1, r, r]``
        with ``r = R / 2^(len(channel_mult) - 1)``.

    References:
        Song et al. 2021 (ICLR), App. H; Karras et al. 2022 (EDM), App. F.2; Zhou et al. 2025 (SiDA), Sec. 3.
    """

    config_class = SongUNetConfig

    def __init__(self, config: SongUNetConfig):
        super().__init__()
        if not isinstance(config, SongUNetConfig):
            raise TypeError(f"SongUNet takes a SongUNetConfig, got {type(config).__name__}")
        self.config = c = config
        emb_channels = c.model_channels * c.channel_mult_emb
        noise_channels = c.model_channels * c.channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        block_kwargs = {
            "emb_channels": emb_channels,
            "num_heads": 1,
            "dropout": c.dropout,
            "skip_scale": math.sqrt(0.5),
            "eps": 1e-6,
            "resample_filter": c.resample_filter,
            "resample_proj": True,
            "adaptive_scale": False,
            "init": init,
            "init_zero": init_zero,
            "init_attn": init_attn,
        }

        # Mapping network.
        if c.embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(c.label_dim, noise_channels, **init) if c.label_dim else None
        self.map_augment = Linear(c.augment_dim, noise_channels, bias=False, **init) if c.augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = caux = c.img_channels
        skips: list[int] = []
        for level, mult in enumerate(c.channel_mult):
            res = c.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, c.model_channels, 3, **init)
                cout = c.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if c.encoder_type == "skip":
                    down = {"down": True, "resample_filter": c.resample_filter}
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, **down)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if c.encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=c.resample_filter, fused_resample=True, **init
                    )
                    caux = cout
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
                attn = idx == c.num_blocks and res in c.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if c.decoder_type == "skip" or level == 0:
                if c.decoder_type == "skip" and level < len(c.channel_mult) - 1:
                    up = {"up": True, "resample_filter": c.resample_filter}
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(c.img_channels, c.img_channels, 0, **up)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, c.img_channels, 3, **init_zero)

        # The fused group norms' one-pass kernels on the 16x16 and smaller maps: whole SiDA iterations of the
        # CIFAR-10 DDPM++ ran 1.7% (batch 32) and 0.5% (batch 128) faster so on an H200, and ADM's slower
        # (benchmarks/RESULTS.md, seventh round; with DhariwalUNet's own choice, eighth round).
        for norm in self.modules():
            if isinstance(norm, GroupNorm):
                norm.kernel_strategy = "hybrid"

    def extra_repr(self) -> str:
        return f"config={self.config}"

    def _embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim={self.config.label_dim}): pass labels")
            labels = class_labels.to(emb.dtype)
            if self.training and self.config.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.config.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _encode(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        skips: list[Tensor] = []
        aux = x
        conds = self._block_conditions(self.enc.values(), emb)
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) * math.sqrt(0.5)
            else:
                x = block(x, emb, next(conds)) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return skips

    def _decode(self, skips: list[Tensor], emb: Tensor) -> Tensor:
        x = skips[-1]
        aux: Tensor | None = None
        head: Tensor | None = None
        conds = self._block_conditions(self.dec.values(), emb)
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                head = block(x, silu=True)
            elif "aux_conv" in name:
                head = block(head)
                aux = head if aux is None else head + aux
            else:
                if "_block" in name:
                    x = cat_channels(x, skips.pop())
                x = block(x, emb, next(conds))
        return aux
