"""EDM preconditioning: the one place where a raw backbone becomes a denoiser ``D(x, sigma, labels)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Self, override

from .._types import ScoreOutput, as_sigma, expand_as
from ..io.hub import HubMixin
from ..networks.presets import PRESETS, EDMUNetConfig
from ..networks.registry import backbone_from_config, backbone_to_config, build_backbone

__all__ = ["Precond", "edm_precond", "edm_scalings"]

_PRECOND_ARGS = ("label_dim", "augment_dim", "sigma_data")


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's preconditioning coefficients (EDM-1).

    Args:
        sigma: Noise levels, any shape.
        sigma_data: Standard deviation of the data.

    Returns:
        ``(c_skip, c_out, c_in, c_noise)``, each of ``sigma``'s shape: ``sigma_d^2 / (sigma^2 + sigma_d^2)``,
        ``sigma sigma_d / sqrt(sigma^2 + sigma_d^2)``, ``1 / sqrt(sigma^2 + sigma_d^2)`` and ``ln(sigma) / 4``.

    References:
        Karras et al. 2022, Table 1; docs/maths.md, (EDM-1).
    """
    sigma = sigma.float()
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class Precond(nn.Module, HubMixin):
    """EDM preconditioning around a backbone: ``D(x; sigma, c) = c_skip x + c_out F(c_in x, c_noise, c)`` (EDM-2).

    The scalings and the skip connection run in float32; the backbone runs in whatever precision the caller
    asks for (for example under ``torch.autocast``), and its output is cast back to float32. The backbone is
    stored as ``self.model`` so that state-dict keys match EDM's ``EDMPrecond`` (``model.enc...``).

    Args:
        model: The backbone ``F(x, noise_labels, class_labels, augment_labels)``.
        label_dim: Number of classes (0 for unconditional); labels are one-hot ``[B, label_dim]``.
        augment_dim: Size of the augmentation conditioning vector the backbone takes (EDM: 9, or 0).
        sigma_data: Standard deviation of the data.

    Example:
        >>> import torch
        >>> from scoredistill.networks.toy import MLP
        >>> D = Precond(MLP(dim=2, hidden=32))
        >>> D(torch.zeros(4, 2), torch.full((4,), 2.5)).shape
        torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, *, label_dim: int = 0, augment_dim: int = 0, sigma_data: float = 0.5):
        super().__init__()
        if label_dim < 0 or augment_dim < 0:
            raise ValueError(f"label_dim and augment_dim must be >= 0, got {label_dim}, {augment_dim}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.model = model
        self.label_dim = label_dim
        self.augment_dim = augment_dim
        self.sigma_data = sigma_data

    @override
    def to_config(self) -> dict[str, Any]:
        """``{"precond": <init args>, "backbone": <registered backbone>}``, what ``config.json`` records."""
        precond = {name: getattr(self, name) for name in _PRECOND_ARGS}
        return {"precond": precond, "backbone": backbone_to_config(self.model)}

    @classmethod
    @override
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A freshly initialised Precond (and backbone) from [`to_config`][scoredistill.Precond.to_config] output;
        unknown keys raise."""
        _check_keys(config, required=("precond", "backbone"), where="the config")
        precond = config["precond"]
        if not isinstance(precond, Mapping):
            raise ValueError(f"'precond' must be an object, got {type(precond).__name__}")
        _check_keys(precond, allowed=_PRECOND_ARGS, where="'precond'")
        return cls(backbone_from_config(config["backbone"]), **precond)

    @property
    def has_encoder(self) -> bool:
        """Whether the backbone exposes SiDA's encoder logits."""
        return hasattr(self.model, "forward_with_logits") and hasattr(self.model, "encoder_logits")

    @property
    def can_share_encoder(self) -> bool:
        """Whether the backbone runs one encoder pass over two batches (``forward_with_logits_shared``), which
        [`score_and_logits`][scoredistill.Precond.score_and_logits] needs."""
        return self.has_encoder and hasattr(self.model, "forward_with_logits_shared")

    def extra_repr(self) -> str:
        return f"label_dim={self.label_dim}, augment_dim={self.augment_dim}, sigma_data={self.sigma_data}"

    def _inputs(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None, augment_labels: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        x = x.float()
        sigma = as_sigma(sigma, x.shape[0], x.device)
        return x, sigma, self.check_labels(labels, x.shape[0]), self._check_augment(augment_labels, x)

    def check_labels(self, labels: Tensor | None, batch: int) -> Tensor | None:
        """Validate class labels: one-hot ``[B, label_dim]`` floats, or integer class indices ``[B]``."""
        if self.label_dim == 0:
            if labels is not None and labels.numel() > 0:
                raise ValueError("this network is unconditional (label_dim=0) but labels were given")
            return None
        if labels is None:
            raise ValueError(f"this network is class-conditional (label_dim={self.label_dim}): pass labels")
        if labels.ndim == 1 and not labels.is_floating_point():
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
                raise ValueError(f"class indices must lie in [0, {self.label_dim}), got {labels.tolist()[:8]}...")
            labels = torch.nn.functional.one_hot(labels.long(), self.label_dim)
        if labels.shape != (batch, self.label_dim):
            raise ValueError(f"labels must be [B, L] = [{batch}, {self.label_dim}], got {tuple(labels.shape)}")
        return labels.float()

    def _check_augment(self, augment_labels: Tensor | None, x: Tensor) -> Tensor | None:
        if self.augment_dim == 0:
            if augment_labels is not None and augment_labels.numel() > 0:
                raise ValueError("this network takes no augmentation conditioning (augment_dim=0): pass None")
            return None
        if augment_labels is None:
            return torch.zeros(x.shape[0], self.augment_dim, device=x.device)
        if augment_labels.shape != (x.shape[0], self.augment_dim):
            raise ValueError(
                f"augment_labels must be [B, A] = [{x.shape[0]}, {self.augment_dim}], got {tuple(augment_labels.shape)}"
            )
        return augment_labels.float()

    def forward(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """Denoise: returns ``D(x; sigma, labels)`` as float32 of ``x``'s shape."""
        x, sigma, labels, augment_labels = self._inputs(x, sigma, labels, augment_labels)
        c_skip, c_out, c_in, c_noise = (expand_as(c, x) for c in edm_scalings(sigma, self.sigma_data))
        F_x = self.model(c_in * x, c_noise.flatten(), labels, augment_labels)
        return c_skip * x + c_out * F_x.float()

    def score(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> ScoreOutput:
        """Denoised output and, when the backbone has an encoder, SiDA's logit map, from one forward pass."""
        if not self.has_encoder:
            return ScoreOutput(self(x, sigma, labels, augment_labels), None)
        x, sigma, labels, augment_labels = self._inputs(x, sigma, labels, augment_labels)
        c_skip, c_out, c_in, c_noise = (expand_as(c, x) for c in edm_scalings(sigma, self.sigma_data))
        F_x, logits = self.model.forward_with_logits(c_in * x, c_noise.flatten(), labels, augment_labels)
        return ScoreOutput(c_skip * x + c_out * F_x.float(), logits.float())

    def score_and_logits(
        self,
        x: Tensor,
        sigma: Tensor | float,
        labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
        *,
        other: Tensor,
        other_augment_labels: Tensor | None = None,
    ) -> tuple[ScoreOutput, Tensor]:
        """`score` of ``x`` and `logits` of ``other`` (same sigma and labels) from one encoder pass over both.

        The backbone's ``forward_with_logits_shared`` runs the encoder on the two batches stacked and the decoder
        on ``x``'s half (SiDA's fake-score phase, where the generator samples and the real images share sigma,
        noise and labels). The same values as the two calls, up to float rounding and dropout's draws.

        Raises:
            TypeError: The backbone has no ``forward_with_logits_shared``.
        """
        if not self.can_share_encoder:
            raise TypeError(
                f"{type(self.model).__name__} has no forward_with_logits_shared, so it cannot share one encoder pass "
                "between two batches: call score and logits apart"
            )
        x, sigma, labels, augment_labels = self._inputs(x, sigma, labels, augment_labels)
        other = other.float()
        if other.shape != x.shape:
            raise ValueError(f"other {tuple(other.shape)} must match x {tuple(x.shape)}")
        other_augment_labels = self._check_augment(other_augment_labels, other)
        c_skip, c_out, c_in, c_noise = (expand_as(c, x) for c in edm_scalings(sigma, self.sigma_data))
        n = x.shape[0]
        F_x, logits = self.model.forward_with_logits_shared(
            torch.cat([c_in * x, c_in * other]),
            c_noise.flatten().repeat(2),
            None if labels is None else labels.repeat(2, 1),
            None if augment_labels is None else torch.cat([augment_labels, other_augment_labels]),
            decode=n,
        )
        logits = logits.float()
        return ScoreOutput(c_skip * x + c_out * F_x.float(), logits[:n]), logits[n:]

    def logits(
        self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """SiDA's discriminator logits alone (``[B, 1, h, w]``, float32); the decoder is skipped."""
        if not self.has_encoder:
            raise TypeError(f"{type(self.model).__name__} exposes no encoder: it cannot act as SiDA's discriminator")
        x, sigma, labels, augment_labels = self._inputs(x, sigma, labels, augment_labels)
        _, _, c_in, c_noise = (expand_as(c, x) for c in edm_scalings(sigma, self.sigma_data))
        return self.model.encoder_logits(c_in * x, c_noise.flatten(), labels, augment_labels).float()


def edm_precond(config: EDMUNetConfig | str, *, sigma_data: float = 0.5, **overrides: Any) -> Precond:
    """Build an EDM denoiser ``Precond(SongUNet | DhariwalUNet)`` whose state-dict keys are EDM's.

    Args:
        config: A backbone config or a name from `PRESETS`.
        sigma_data: Standard deviation of the data (EDM: 0.5).
        **overrides: Config fields to replace, e.g. ``dropout=0.0`` or ``label_dropout=0.1``.

    Returns:
        The preconditioned network, randomly initialised, in training mode, on the default device
        (build under ``with torch.device("meta"):`` to skip allocation).

    Example:
        >>> import torch
        >>> D = edm_precond("cifar10-32x32-uncond", model_channels=32, channel_mult=(1, 2), num_blocks=1)
        >>> D(torch.zeros(2, 3, 32, 32), torch.full((2,), 2.5)).shape
        torch.Size([2, 3, 32, 32])
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}: pick one of {sorted(PRESETS)}")
        config = PRESETS[config]
    if overrides:
        valid = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown {type(config).__name__} fields {unknown}; valid fields: {sorted(valid)}")
        config = dataclasses.replace(config, **overrides)
    backbone = build_backbone(config)
    return Precond(backbone, label_dim=config.label_dim, augment_dim=config.augment_dim, sigma_data=sigma_data)


def _saved_precond(role: nn.Module, denoiser: nn.Module) -> Precond:
    """A role's denoiser, if the role can be saved as a public artefact: a Precond around a registered backbone."""
    if type(denoiser) is not Precond:
        raise TypeError(
            f"cannot save a {type(role).__name__} around a {type(denoiser).__name__}: public artefacts hold a "
            "Precond around a registered backbone (see scoredistill.networks.registry.BACKBONES)"
        )
    return denoiser


def _check_keys(
    config: Mapping[str, Any], *, required: tuple[str, ...] = (), allowed: tuple[str, ...] = (), where: str
) -> None:
    """Fail fast on a config with missing or unknown keys; shared by the roles' ``from_config``."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be an object, got {type(config).__name__}")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    unknown = sorted(set(config) - set(required) - set(allowed))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {where}; it may hold {sorted({*required, *allowed})}")
