"""The loop's settings: [`DistillConfig`][scoredistill.training.config.DistillConfig], checked when it is built.

Beside it, the fields a resumed run may change (``RESUME_MAY_CHANGE``) and ``warn_unreached_warmups``, the
warning for a run too short to leave a warm-up. ``scoredistill.training.distill`` re-exports all three.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .._validate import check_bool, check_choice, check_int, check_real
from .fast import CompileScope

if TYPE_CHECKING:
    from ..losses.base import DistillLoss

__all__ = ["RESUME_MAY_CHANGE", "DistillConfig", "warn_unreached_warmups"]


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Hyperparameters of the loop. Defaults are the reference's CIFAR-10 SiD settings (docs/maths.md).

    Every field is keyword-only and checked when the config is built (and again by
    [`validate`][scoredistill.training.config.DistillConfig.validate] where a `Distiller` is built and saved, since
    ``object.__setattr__`` changes a frozen dataclass unchecked); ``dataclasses.asdict(config)`` is what run
    directories and artefacts record.

    Attributes:
        batch_size: Images per step in this process (the reference's global batch divided by the world size).
        micro_batch: Images per forward pass; ``batch_size / micro_batch`` gradient-accumulation rounds per step.
            ``None``: one pass of ``batch_size``.
        total_nimg: Training length in images, over all processes.
        lr_generator: Adam learning rate of the generator ``G_theta``.
        lr_fake_score: Adam learning rate of the fake score ``f_psi``.
        generator_beta1: Adam beta1 of ``G_theta`` (0.9 for FFHQ SiD).
        fake_score_beta1: Adam beta1 of ``f_psi``.
        beta2: Adam beta2 of both optimisers.
        adam_eps: Adam epsilon of both optimisers (the reference uses 1e-6 for fp16 runs).
        ema_halflife_nimg: Half-life of the generator's EMA, in images (2 Mimg for ImageNet-64).
        ema_rampup_ratio: EDM's EMA ramp-up: the half-life is at most this fraction of the images seen so far;
            ``None`` turns the ramp-up off.
        generator_start_nimg: No generator step before this many images, only fake-score steps (SiDA: 100k, set
            by [`sida`][scoredistill.DistillConfig.sida]). A run shorter than this never trains the generator.
        fake_score_grad_clip: Clip the values of ``f_psi``'s gradients to plus or minus this (SiDA: 1.0);
            ``None``: no clipping.
        precision: Network compute: ``"fp32"``, ``"bf16"`` autocast, or ``"fp16"`` autocast with loss scaling.
        seed: One seed makes a run repeatable: every step's randomness is drawn from ``(seed, step, rank)``.
        use_kernels: Fused loss kernels (and fused group norms under ``cuda_graphs``); ``None``: on when on CUDA.
        channels_last: NHWC weights and activations for the image networks.
        compile: ``torch.compile`` the three networks: ``"off"``, ``"blocks"`` (regional) or ``"network"``.
        compile_mode: The ``torch.compile`` mode, e.g. ``"max-autotune-no-cudagraphs"``; ``None``: torch's default.
        compile_cache_dir: Folder where ``torch.compile`` keeps its compiled artefacts, reused by later runs
            (``None``: torch's default under /tmp).
        cuda_graphs: Capture each regime's whole iteration in a CUDA graph and replay it (CUDA only; not with
            ``"fp16"``).
        overlap_teacher: In the generator phase, run the teacher on a second CUDA stream while the fake score runs
            (same input, same maths), so that small batches fill the GPU. ``None``: on where it has been measured and
            tested, i.e. on a CUDA device in one process without ``torch.compile`` (+1-5% on an H100 for 0.06 GiB
            more peak memory; see docs/performance.md); ``True`` asks for it anywhere on CUDA, ``False`` turns it off.
        share_encoder_pass: In SiDA's fake-score phase, run the fake score's encoder once over the generator samples
            and the real images together (the decoder on the samples only) instead of a full pass and an
            encoder-only pass. Per-sample layers, so the same values up to rounding; dropout draws its masks in
            another order. It pays where the per-GPU batch leaves the GPU underused: on an H100, +1.2% at CIFAR-10
            batch 32 and -3.3% at batch 128 (see docs/performance.md), hence off by default.
        precast_weights: Under ``"bf16"`` or ``"fp16"``, keep a low-precision copy of every convolution and linear
            weight and bias of the three networks, refreshed by one multi-tensor copy per network at the start of
            each iteration (and the fake score's after its update), which the layers read instead of casting at
            every forward. In one process the weight gradients are cast back in one batch too, into one buffer
            that the NaN/Inf rule then sweeps in one pass. The same values (SiD bit for bit; SiDA to float32
            rounding). ``None``: on where it has been measured and tested, i.e. under bf16 on a CUDA device in one
            process without ``torch.compile`` (on an H100 +4.8% at CIFAR-10 batch 32, +1.1% at batch 128,
            +1.4% on ImageNet-64; the copies take less memory than the frozen layers free, see
            docs/performance.md); ``True`` asks for it anywhere under bf16 or fp16 without ``torch.compile``,
            ``False`` turns it off.
    """

    batch_size: int = 256  # images per step in this process (reference: batch / world size)
    micro_batch: int | None = None  # images per forward pass; batch_size / micro_batch accumulation rounds
    total_nimg: int = 500_000_000  # training length in images (all processes)
    lr_generator: float = 1e-5  # Adam learning rate of G
    lr_fake_score: float = 1e-5  # Adam learning rate of f_psi
    generator_beta1: float = 0.0  # Adam beta1 of G (0.9 for FFHQ SiD)
    fake_score_beta1: float = 0.0  # Adam beta1 of f_psi
    beta2: float = 0.999  # Adam beta2 of both
    adam_eps: float = 1e-8  # 1e-6 for fp16 runs in the reference
    ema_halflife_nimg: float = 500_000  # EMA half-life in images (2 Mimg for ImageNet-64)
    ema_rampup_ratio: float | None = 0.05  # EDM's EMA ramp-up; None = off
    generator_start_nimg: int = 0  # no generator step before this many images (SiDA: 100k)
    fake_score_grad_clip: float | None = None  # clip f_psi's gradient values to +-this (SiDA: 1.0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # network compute: fp32, bf16 autocast, fp16 + loss scaling
    seed: int = 0  # one seed makes a run repeatable
    use_kernels: bool | None = None  # fused loss kernels (and group norms under cuda_graphs): None = on CUDA
    channels_last: bool = False  # NHWC weights and activations for the image networks
    compile: CompileScope = "off"  # torch.compile the three networks: "blocks" (regional) or "network"
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    compile_cache_dir: str | None = None
    cuda_graphs: bool = False  # capture each regime's whole iteration in a CUDA graph and replay it (CUDA only)
    overlap_teacher: bool | None = None  # the teacher on a second CUDA stream beside the fake score: None = auto
    share_encoder_pass: bool = False  # SiDA's fake-score phase: one encoder pass over generator and real images
    precast_weights: bool | None = None  # bf16/fp16: the layers read copies cast once per update: None = auto

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types, finiteness, ranges and their combinations); called when the config is built.

        Raises:
            TypeError: A field of the wrong type.
            ValueError: A field out of range, or fields that contradict each other.
        """
        check_int("batch_size", self.batch_size, low=1)
        check_int("micro_batch", self.micro_batch, low=1, optional=True)
        micro = self.micro_batch or self.batch_size
        if self.batch_size % micro:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of micro_batch {micro}")
        check_int("total_nimg", self.total_nimg, low=1, hint=" (training length in images)")
        for name in ("lr_generator", "lr_fake_score", "adam_eps", "ema_halflife_nimg"):
            check_real(name, getattr(self, name), low=0, low_open=True)
        for name in ("generator_beta1", "fake_score_beta1", "beta2"):
            check_real(name, getattr(self, name), low=0, high=1, high_open=True, hint=" (an Adam beta)")
        # ema_rampup_ratio <= 0 would make the half-life 0, i.e. the EMA a copy of G: None is the way to turn it off.
        check_real("ema_rampup_ratio", self.ema_rampup_ratio, low=0, low_open=True, optional=True, hint=" (None: off)")
        check_int("generator_start_nimg", self.generator_start_nimg, low=0)
        # A clip of 0 freezes f_psi and a negative one turns every gradient into -clip: None is "no clipping".
        check_real("fake_score_grad_clip", self.fake_score_grad_clip, low=0, low_open=True, optional=True)
        check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        check_int("seed", self.seed, low=0)
        if self.seed >= 2**32:
            raise ValueError(f"seed must be below 2**32, got {self.seed}")
        check_bool("use_kernels", self.use_kernels, optional=True)
        check_bool("channels_last", self.channels_last)
        check_bool("cuda_graphs", self.cuda_graphs)
        check_bool("overlap_teacher", self.overlap_teacher, optional=True)
        check_bool("share_encoder_pass", self.share_encoder_pass)
        check_bool("precast_weights", self.precast_weights, optional=True)
        if self.precast_weights and self.precision == "fp32":
            raise ValueError("precast_weights keeps bf16 or fp16 copies of the weights: set precision 'bf16' or 'fp16'")
        if self.precast_weights and self.compile != "off":
            raise ValueError("precast_weights has not been tested under torch.compile: use compile='off' with it")
        check_choice("compile", self.compile, ("off", "blocks", "network"))
        if self.compile_mode is not None and not isinstance(self.compile_mode, str):
            raise TypeError(f"compile_mode must be a torch.compile mode string or None, got {self.compile_mode!r}")
        if self.cuda_graphs and self.precision == "fp16":
            raise ValueError("cuda_graphs needs precision 'bf16' or 'fp32': fp16 loss scaling checks on the host")
        if self.compile_cache_dir is not None and not isinstance(self.compile_cache_dir, str | os.PathLike):
            raise TypeError(f"compile_cache_dir must be a folder path, got {type(self.compile_cache_dir).__name__}")
        if self.compile_cache_dir is not None and self.compile == "off":
            raise ValueError("compile_cache_dir keeps torch.compile's artefacts: set compile='blocks' or 'network'")

    @classmethod
    def sida(cls, **overrides: object) -> DistillConfig:
        """SiDA's loop settings: no generator step for 100k images, f_psi's gradient values clipped to 1."""
        return cls(**{"generator_start_nimg": 100_000, "fake_score_grad_clip": 1.0, **overrides})  # type: ignore[arg-type]

    @property
    def rounds(self) -> int:
        """Gradient accumulation rounds per step."""
        return self.batch_size // (self.micro_batch or self.batch_size)


# Fields a resumed run may change: the length of the run and the speed switches (they leave the maths alone).
RESUME_MAY_CHANGE = frozenset(
    {
        "total_nimg",
        "use_kernels",
        "channels_last",
        "compile",
        "compile_mode",
        "compile_cache_dir",
        "cuda_graphs",
        "overlap_teacher",
        "share_encoder_pass",
        "precast_weights",
    }
)


def warn_unreached_warmups(config: DistillConfig, losses: Sequence[DistillLoss]) -> list[str]:
    """Warn (``UserWarning``) about each warm-up the run never leaves; returns the messages.

    A run of ``total_nimg`` images whose ``generator_start_nimg`` (100k in
    [`DistillConfig.sida`][scoredistill.training.config.DistillConfig.sida]) is not below it never updates the
    generator,
    and a loss whose own ``generator_start_nimg`` (200k in
    [`AdversarialEncoderLoss`][scoredistill.losses.AdversarialEncoderLoss]) is not below it never joins the
    generator objective.
    """
    messages = []
    if config.generator_start_nimg >= config.total_nimg:
        messages.append(
            f"total_nimg={config.total_nimg} <= generator_start_nimg={config.generator_start_nimg}: the generator "
            "never trains (its EMA stays the initial copy); lengthen the run or lower generator_start_nimg"
        )
    start = max(config.generator_start_nimg, 0)
    for loss in losses:
        own = int(getattr(loss, "generator_start_nimg", 0))
        if own > 0 and max(own, start) >= config.total_nimg and start < config.total_nimg:
            messages.append(
                f"total_nimg={config.total_nimg} <= {type(loss).__name__}'s generator_start_nimg={own}: its "
                "generator loss never starts; lengthen the run or lower that loss's generator_start_nimg"
            )
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
    return messages
