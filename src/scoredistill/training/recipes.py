"""The paper's recipes: hyperparameters of the published SiD / SiDA / SiD²A runs (docs/maths.md) and their wiring.

``make_distiller`` turns a recipe, a teacher and (for SiDA) a real-data stream into a ready
[`Distiller`][scoredistill.training.distill.Distiller]. The example scripts are thin command lines around it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .._validate import check_int, check_real
from ..data.augment import AugmentPipe
from ..losses import AdversarialEncoderLoss, DSMLoss, SiDLoss
from ..networks.layers import UNetBlock
from ..roles.fake_score import FakeScore
from ..roles.generator import OneStepGenerator
from ..roles.precond import Precond
from ..roles.teacher import Teacher
from .distill import Batch, DistillConfig, Distiller

__all__ = ["RECIPES", "Method", "Recipe", "load_teacher", "make_distiller", "set_dropout"]

Method = Literal["sid", "sida", "sid2a"]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One dataset's published settings (``run_sid.sh`` / ``run_sida.sh`` / ``run_sid_sida.sh``).

    Attributes:
        preset: Network preset of the EDM teacher, a key of `scoredistill.networks.PRESETS`.
        lr: Adam learning rate of the generator and the fake score.
        batch_size: Global batch over all processes (each process gets ``batch_size / world_size``).
        ema_halflife_nimg: Half-life of the generator's EMA, in images.
        dropout: Dropout of all three networks.
        augment_p: Probability of EDM's AugmentPipe on the fake score's inputs (0: off).
        sid_alpha: SiD's alpha in plain SiD (SiDA and SiD²A use 1.0).
        sid_generator_beta1: Adam beta1 of the generator in plain SiD.
        total_nimg: Images per method, ``{"sid": ..., "sida": ..., "sid2a": ...}``; ``None`` (or a missing method):
            100M.
    """

    preset: str  # network preset of the EDM teacher (scoredistill.networks.PRESETS)
    lr: float  # Adam learning rate of the generator and the fake score
    batch_size: int  # global batch over all GPUs
    ema_halflife_nimg: float  # EMA half-life in images
    dropout: float  # dropout of all three networks
    augment_p: float  # EDM AugmentPipe probability on f_psi's inputs (0 = off)
    sid_alpha: float = 1.2  # alpha of plain SiD (SiDA and SiD²A use 1.0)
    sid_generator_beta1: float = 0.0  # Adam beta1 of G in plain SiD
    total_nimg: dict[str, int] | None = None  # images per method: {"sid": ..., "sida": ..., "sid2a": ...}

    def __post_init__(self) -> None:
        check_real("lr", self.lr, low=0, low_open=True)
        check_int("batch_size", self.batch_size, low=1)
        check_real("ema_halflife_nimg", self.ema_halflife_nimg, low=0, low_open=True)
        check_real("dropout", self.dropout, low=0, high=1, high_open=True)
        check_real("augment_p", self.augment_p, low=0, high=1)
        check_real("sid_alpha", self.sid_alpha, low=0, low_open=True)
        check_real("sid_generator_beta1", self.sid_generator_beta1, low=0, high=1, high_open=True)
        for method, nimg in (self.total_nimg or {}).items():
            if method not in ("sid", "sida", "sid2a"):
                raise ValueError(f"total_nimg keys are 'sid', 'sida' and 'sid2a', got {method!r}")
            check_int(f"total_nimg[{method!r}]", nimg, low=1)

    def config(self, method: Method, *, world_size: int = 1, **overrides: Any) -> DistillConfig:
        """The loop settings for ``method`` on ``world_size`` processes (per-process batch = global / world)."""
        if method not in ("sid", "sida", "sid2a"):
            raise ValueError(f"method must be 'sid', 'sida' or 'sid2a', got {method!r}")
        if self.batch_size % world_size:
            raise ValueError(f"global batch {self.batch_size} is not divisible by {world_size} processes")
        base = {
            "batch_size": self.batch_size // world_size,
            "lr_generator": self.lr,
            "lr_fake_score": self.lr,
            "ema_halflife_nimg": self.ema_halflife_nimg,
            "total_nimg": (self.total_nimg or {}).get(method, 100_000_000),
            "generator_beta1": self.sid_generator_beta1 if method == "sid" else 0.0,
        }
        base.update(overrides)
        return DistillConfig(**base) if method == "sid" else DistillConfig.sida(**base)

    def losses(self, method: Method, *, adversarial_start_nimg: int | None = None) -> list:
        """SiD: ``[SiDLoss(alpha), DSMLoss()]``; SiDA and SiD²A add the adversarial encoder loss, alpha 1.

        Args:
            method: ``"sid"``, ``"sida"`` or ``"sid2a"``.
            adversarial_start_nimg: Images before the adversarial term joins the generator's objective (``None``:
                [`AdversarialEncoderLoss`][scoredistill.losses.AdversarialEncoderLoss]'s 200k); ignored by SiD.
        """
        if method == "sid":
            return [SiDLoss(alpha=self.sid_alpha), DSMLoss()]
        start = {} if adversarial_start_nimg is None else {"generator_start_nimg": adversarial_start_nimg}
        return [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(**start)]


_M = 1_000_000
RECIPES: dict[str, Recipe] = {
    "cifar10-uncond": Recipe(
        preset="cifar10-32x32-uncond",
        lr=1e-5,
        batch_size=256,
        ema_halflife_nimg=0.5 * _M,
        dropout=0.13,
        augment_p=0.12,
        total_nimg={"sid": 500 * _M, "sida": 300 * _M, "sid2a": 100 * _M},
    ),
    "cifar10-cond": Recipe(
        preset="cifar10-32x32-cond",
        lr=1e-5,
        batch_size=256,
        ema_halflife_nimg=0.5 * _M,
        dropout=0.13,
        augment_p=0.12,
        total_nimg={"sid": 800 * _M, "sida": 300 * _M, "sid2a": 100 * _M},
    ),
    "imagenet64": Recipe(
        preset="imagenet-64x64",
        lr=4e-6,
        batch_size=8192,
        ema_halflife_nimg=2 * _M,
        dropout=0.10,
        augment_p=0.0,
        total_nimg={"sid": 1000 * _M, "sida": 300 * _M, "sid2a": 100 * _M},
    ),
    "ffhq64": Recipe(
        preset="ffhq-64x64",
        lr=1e-5,
        batch_size=512,
        ema_halflife_nimg=0.5 * _M,
        dropout=0.05,
        augment_p=0.15,
        sid_generator_beta1=0.9,
        total_nimg={"sid": 500 * _M, "sida": 200 * _M, "sid2a": 100 * _M},
    ),
    "afhqv2-64": Recipe(
        preset="afhqv2-64x64",
        lr=5e-6,
        batch_size=512,
        ema_halflife_nimg=0.5 * _M,
        dropout=0.05,
        augment_p=0.15,
        sid_alpha=1.0,
        total_nimg={"sid": 500 * _M, "sida": 200 * _M, "sid2a": 100 * _M},
    ),
}
"""The published recipes by name, as the example scripts' ``--recipe`` takes them.

- ``"cifar10-uncond"``: CIFAR-10 32x32, unconditional (EDM's VP teacher).
- ``"cifar10-cond"``: CIFAR-10 32x32, class-conditional.
- ``"imagenet64"``: ImageNet 64x64, class-conditional (EDM's ADM teacher).
- ``"ffhq64"``: FFHQ 64x64, unconditional.
- ``"afhqv2-64"``: AFHQv2 64x64, unconditional.

Example:
    >>> from scoredistill.training.recipes import RECIPES
    >>> sorted(RECIPES)
    ['afhqv2-64', 'cifar10-cond', 'cifar10-uncond', 'ffhq64', 'imagenet64']
    >>> RECIPES["cifar10-uncond"].config("sida").generator_start_nimg
    100000
"""


def load_teacher(
    source: str | os.PathLike | None, *, preset: str, random_init: bool = False, **overrides: Any
) -> Precond:
    """The teacher network: an EDM ``.pkl`` (read without running its code), or a scoredistill directory / Hub id.

    Args:
        source: ``*.pkl`` (EDM/SiD pickle, restricted unpickler), a directory or Hub repo id written by
            [`scoredistill.io.hub.save_pretrained`][scoredistill.io.hub.save_pretrained], or ``None`` together with
            ``random_init=True``.
        preset: Network preset; a random teacher is built from it, and a loaded one must match it.
        random_init: Build a randomly initialised teacher (smoke tests and benchmarks only).
        **overrides: Config fields to replace, e.g. ``dropout=0.13`` (EDM pickles store the teacher's dropout).
    """
    from ..networks import PRESETS
    from ..roles.precond import edm_precond

    if source is None:
        if not random_init:
            raise ValueError("pass a teacher (an EDM .pkl or a scoredistill directory / Hub id) or random_init=True")
        return edm_precond(preset, **overrides)
    if str(source).endswith(".pkl"):
        from ..convert import load_edm_pickle

        net = load_edm_pickle(source, **overrides)
    else:
        from ..io.hub import from_pretrained

        net = from_pretrained(source, expected_class=Precond)
        if overrides:
            raise ValueError("config overrides apply to EDM pickles only; save the network with the settings you want")
    expected = PRESETS[preset]
    got = net.model.config
    if (got.img_resolution, got.img_channels, got.label_dim) != (
        expected.img_resolution,
        expected.img_channels,
        expected.label_dim,
    ):
        raise ValueError(
            f"teacher {source} ({got.img_resolution}px, {got.img_channels} channels, {got.label_dim} "
            f"classes) does not match preset {preset!r} ({expected.img_resolution}px, "
            f"{expected.img_channels} channels, {expected.label_dim} classes)"
        )
    return net


def make_distiller(
    recipe: Recipe,
    teacher: Precond,
    method: Method,
    *,
    data: Iterator[Batch] | None = None,
    generator_init: OneStepGenerator | str | Path | None = None,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    adversarial_start_nimg: int | None = None,
    **overrides: Any,
) -> Distiller:
    """Wire the roles, losses, augmentation and loop for ``method`` as the paper ran it.

    Args:
        recipe: Dataset settings (see [`RECIPES`][scoredistill.training.recipes.RECIPES]).
        teacher: The teacher network (copied into the generator and the fake score).
        method: ``"sid"`` (data-free), ``"sida"`` or ``"sid2a"`` (both need ``data``).
        data: Real batches ``(x, one-hot labels)`` of the per-process micro-batch, on ``device``.
        generator_init: SiD²A: the SiD generator to fine-tune (a module, or a directory / Hub id).
        world_size: Number of processes (the per-process batch is the global batch divided by it).
        device: Where the networks live.
        adversarial_start_nimg: SiDA and SiD²A: images before the adversarial term joins the generator's objective
            (``None``: the paper's 200k; see [`Recipe.losses`][scoredistill.training.recipes.Recipe.losses]).
        **overrides: [`DistillConfig`][scoredistill.training.config.DistillConfig] fields to replace (precision,
            micro_batch,
            ...).
    """
    if method != "sid" and data is None:
        raise ValueError(f"{method} trains a discriminator on real images: pass data=...")
    if method == "sid2a" and generator_init is None:
        raise ValueError("sid2a fine-tunes a SiD generator: pass generator_init=...")
    t = Teacher(teacher.to(device))
    if isinstance(generator_init, (str, Path)):
        from ..io.hub import from_pretrained

        generator_init = from_pretrained(generator_init, expected_class=OneStepGenerator, device=device)
    G = OneStepGenerator.from_teacher(t) if generator_init is None else generator_init.to(device).train()
    if G.sample_shape != t.sample_shape or G.label_dim != t.label_dim:
        raise ValueError(f"generator {G.sample_shape}/{G.label_dim} classes does not match the teacher's")
    G.requires_grad_(True)
    for role in (G, fake := FakeScore.from_teacher(t)):
        set_dropout(role, recipe.dropout)
    augment = AugmentPipe(p=recipe.augment_p) if recipe.augment_p > 0 and teacher.augment_dim else None
    config = recipe.config(method, world_size=world_size, **overrides)
    losses = recipe.losses(method, adversarial_start_nimg=adversarial_start_nimg)
    return Distiller(t, G, fake, losses, config, data=data, augment=augment)


def set_dropout(module: torch.nn.Module, p: float) -> None:
    """Set the dropout probability of every EDM block in ``module`` (the networks keep it as ``.dropout``)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {p}")
    for m in module.modules():
        if isinstance(m, UNetBlock):
            m.dropout = p
