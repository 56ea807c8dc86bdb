"""Tiny backbones for tests, docs and the analytic demo.

``MLP`` works on vectors ``[B, D]``; ``TinyUNet`` on small images ``[B, C, H, W]`` and exposes SiDA's encoder
logits like the EDM backbones do. Both speak the backbone contract
``F(x, noise_labels, class_labels, augment_labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .facts import BackboneFacts, config_ints

__all__ = ["MLP", "TinyUNet", "fourier_features"]


def fourier_features(noise_labels: Tensor, dim: int) -> Tensor:
    """``[B] -> [B, dim]`` sin/cos features of the noise level at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=noise_labels.device) / max(half - 1, 1))
    angles = noise_labels.float()[:, None] * freqs[None] * 16
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class MLP(nn.Module):
    """A residual MLP backbone for vector data ``[B, dim]`` (the analytic demo's generator and fake score).

    Like the EDM UNets it exposes SiDA's encoder: the first ``depth // 2`` blocks are the encoder and the
    logits are the mean over hidden units of their output, shape ``[B, 1]``.

    Args:
        dim: Data dimension.
        hidden: Width of the hidden layers.
        depth: Number of residual blocks.
        label_dim: Number of classes (0 for unconditional).
        emb_dim: Size of the noise embedding.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, label_dim: int = 0, emb_dim: int = 32):
        super().__init__()
        if dim <= 0 or hidden <= 0 or depth <= 0:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        # The constructor arguments: what to_config returns.
        self.init_kwargs = {"dim": dim, "hidden": hidden, "depth": depth, "label_dim": label_dim, "emb_dim": emb_dim}
        self.dim, self.emb_dim = dim, emb_dim
        self.sample_shape = (dim,)  # what the roles read to infer their sample shape
        self.inp = nn.Linear(dim, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.label = nn.Linear(label_dim, hidden, bias=False) if label_dim else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments (what ``config.json`` records);
        [`from_config`][scoredistill.networks.toy.MLP.from_config] inverts it."""
        return dict(self.init_kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLP:
        """A freshly initialised network from [`to_config`][scoredistill.networks.toy.MLP.to_config] output."""
        return cls(**config)

    @classmethod
    def config_facts(cls, config: Mapping[str, Any]) -> BackboneFacts:
        """Check a [`to_config`][scoredistill.networks.toy.MLP.to_config] dict without building; its exact size."""
        defaults = {"dim": None, "hidden": 128, "depth": 3, "label_dim": 0, "emb_dim": 32}
        c = config_ints(config, defaults, zero_ok=("label_dim",))
        dim, hidden, depth, label_dim = c["dim"], c["hidden"], c["depth"], c["label_dim"]
        tensors = 2 + 2 + (1 if label_dim else 0) + 4 * depth + 2
        elements = (dim + 1) * hidden + (c["emb_dim"] + 1) * hidden + label_dim * hidden
        elements += depth * 2 * (hidden + 1) * hidden + (hidden + 1) * dim
        return BackboneFacts(label_dim=label_dim, sample_shape=(dim,), min_tensors=tensors, min_elements=elements)

    def _encode(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        h = self.inp(x) + self.emb(fourier_features(noise_labels, self.emb_dim))
        if self.label is not None and class_labels is not None:
            h = h + self.label(class_labels)
        for block in self.blocks[: len(self.blocks) // 2]:
            h = h + block(h)
        return h

    def forward_with_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One pass returning ``(F(x), logits [B, 1])``."""
        h = self._encode(x, noise_labels, class_labels)
        logits = h.float().mean(dim=1, keepdim=True)
        for block in self.blocks[len(self.blocks) // 2 :]:
            h = h + block(h)
        return self.out(h), logits

    def encoder_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """The logits alone; the rest of the network is skipped."""
        return self._encode(x, noise_labels, class_labels).float().mean(dim=1, keepdim=True)

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        return self.forward_with_logits(x, noise_labels, class_labels, augment_labels)[0]


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm0 = nn.GroupNorm(min(4, cin), cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = nn.GroupNorm(min(4, cout), cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(nn.functional.silu(self.norm0(x))) + self.affine(emb)[:, :, None, None]
        h = self.conv1(nn.functional.silu(self.norm1(h)))
        return (h + self.skip(x)) * math.sqrt(0.5)


class TinyUNet(nn.Module):
    """A two-level UNet (about 10k parameters at the defaults) with SiDA's encoder logits.

    The encoder is ``enc0`` at full resolution and ``enc1`` at half resolution; the logit map is the channel
    mean of ``enc1``'s output, ``[B, 1, H/2, W/2]``.

    Args:
        img_channels: Channels of the images.
        channels: Base width.
        label_dim: Number of classes (0 for unconditional).
        augment_dim: Size of the augmentation conditioning (0 for none).
    """

    def __init__(self, img_channels: int = 1, channels: int = 16, label_dim: int = 0, augment_dim: int = 0):
        super().__init__()
        # The constructor arguments: what to_config returns.
        self.init_kwargs = {
            "img_channels": img_channels,
            "channels": channels,
            "label_dim": label_dim,
            "augment_dim": augment_dim,
        }
        self.emb_dim = 4 * channels
        self.map_noise = nn.Linear(channels, self.emb_dim)
        self.map_label = nn.Linear(label_dim, self.emb_dim, bias=False) if label_dim else None
        self.map_augment = nn.Linear(augment_dim, self.emb_dim, bias=False) if augment_dim else None
        self.noise_features = channels
        self.conv_in = nn.Conv2d(img_channels, channels, 3, padding=1)
        self.enc0 = _Res(channels, channels, self.emb_dim)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.enc1 = _Res(channels, 2 * channels, self.emb_dim)
        self.mid = _Res(2 * channels, 2 * channels, self.emb_dim)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = _Res(3 * channels, channels, self.emb_dim)
        self.conv_out = nn.Conv2d(channels, img_channels, 3, padding=1)

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments (what ``config.json`` records);
        [`from_config`][scoredistill.networks.toy.TinyUNet.from_config] inverts it."""
        return dict(self.init_kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TinyUNet:
        """A freshly initialised network from [`to_config`][scoredistill.networks.toy.TinyUNet.to_config] output."""
        return cls(**config)

    @classmethod
    def config_facts(cls, config: Mapping[str, Any]) -> BackboneFacts:
        """Check a [`to_config`][scoredistill.networks.toy.TinyUNet.to_config] dict without building; a size bound
        (mid's two 3x3 convolutions, 2c -> 2c each)."""
        defaults = {"img_channels": 1, "channels": 16, "label_dim": 0, "augment_dim": 0}
        c = config_ints(config, defaults, zero_ok=("label_dim", "augment_dim"))
        return BackboneFacts(
            label_dim=c["label_dim"],
            augment_dim=c["augment_dim"],
            sample_shape=(c["img_channels"], None, None),
            size_multiple=2,
            min_tensors=8,
            min_elements=2 * 9 * (2 * c["channels"]) ** 2,
        )

    def _embed(self, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None) -> Tensor:
        emb = self.map_noise(fourier_features(noise_labels, self.noise_features))
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return nn.functional.silu(emb)

    def _encode(self, x: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        h0 = self.enc0(self.conv_in(x), emb)
        return h0, self.enc1(self.down(h0), emb)

    def forward_with_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One pass returning ``(F(x), logits)``."""
        return self.forward_with_logits_shared(x, noise_labels, class_labels, augment_labels, decode=x.shape[0])

    def forward_with_logits_shared(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        decode: int,
    ) -> tuple[Tensor, Tensor]:
        """One encoder pass over the batch, the decoder over its first ``decode`` samples: ``(F(x[:decode]),
        logits)`` with every sample's logits."""
        emb = self._embed(noise_labels, class_labels, augment_labels)
        h0, h1 = self._encode(x, emb)
        logits = h1.float().mean(dim=1, keepdim=True)
        h0, h1, emb = h0[:decode], h1[:decode], emb[:decode]
        h = self.up(self.mid(h1, emb))
        h = self.dec(torch.cat([h, h0], dim=1), emb)
        return self.conv_out(nn.functional.silu(h)), logits

    def encoder_logits(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """The logit map alone; the decoder is skipped."""
        _, h1 = self._encode(x, self._embed(noise_labels, class_labels, augment_labels))
        return h1.float().mean(dim=1, keepdim=True)

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        return self.forward_with_logits(x, noise_labels, class_labels, augment_labels)[0]
