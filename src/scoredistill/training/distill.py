"""The distillation loop: fake-score step, generator step, EMA (docs/maths.md).

One ``Distiller.step()`` is one reference iteration. Everything stochastic in it is drawn from a generator
seeded by ``(seed, step, rank)``, so a run is repeatable and a resumed run continues the same loss trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.profiler import record_function

from .. import kernels
from .._types import Noised, expand_as
from ..io.artefact import CheckpointError
from ..losses.base import DistillLoss, Evaluation, LossModule, LossOutput
from ..metrics.base import GeneratorMetric, is_better
from ..networks._precast import PreCast
from ..roles.fake_score import FakeScore
from ..roles.generator import OneStepGenerator
from ..roles.teacher import Teacher
from ..schedules import SigmaSampler
from ._progress import Progress
from ._resume import check_resume
from .checkpoint import apply_networks, read_training_state, save_training_state
from .config import RESUME_MAY_CHANGE, DistillConfig, warn_unreached_warmups
from .ema import EMA
from .fast import StepGraphs, capture, speed_up, use_compile_cache, use_fused_norms
from .monitor import RunLog
from .parallel import GradientAverager, assert_replicas_identical, broadcast_modules, copy_from_flat, flat_cat

__all__ = ["DistillConfig", "Distiller", "NonFiniteTrainingError", "NonFiniteWarning"]

_NO_GENERATOR_LOSS = LossModule.generator_loss  # what a plug-in without a generator term inherits
NONFINITE_WARN_FRACTION = 0.1  # warn when more than this fraction of an interval's samples is non-finite


class NonFiniteWarning(RuntimeWarning):
    """More than a tenth of a log interval's samples were non-finite (and dropped from the losses)."""


class NonFiniteTrainingError(FloatingPointError):
    """Every sample of a log interval was non-finite: the run stopped (its state is written beside the last
    good checkpoint)."""


Batch = tuple[Tensor, Tensor | None]  # (x_real [B, ...] in [-1, 1], one-hot labels [B, L] or None)
Augment = Callable[..., tuple[Tensor, Tensor]]  # augment(x, rng=generator) -> (x_aug, augment_labels)


def _phase_sampler(losses: Sequence[DistillLoss], attr: str) -> SigmaSampler:
    samplers = {getattr(loss, attr) for loss in losses if getattr(loss, attr, None) is not None}
    if len(samplers) != 1:
        raise ValueError(f"the losses must declare exactly one {attr} between them, got {samplers or 'none'}")
    return samplers.pop()


def sanitize_grads(
    params: Sequence[nn.Parameter], clip_value: float | None = None, *, use_kernels: bool | None = None
) -> None:
    """Replace NaN gradients by 0 and +-Inf by +-1e5 (the reference's rule), then optionally clip values.

    ``use_kernels``: ``False`` keeps to PyTorch's ops; otherwise CUDA gradients take the one-pass Triton kernel where
    `ONE_PASS_SANITIZE` is on (the default). The values are the same either way."""
    _sanitize([p.grad for p in params if p.grad is not None], clip_value, use_kernels)


SMALL_GRAD = 1 << 16
"""Gradients with fewer elements than this are sanitised together (`_sanitize`)."""
ONE_PASS_SANITIZE = True
"""``True`` (the default): on CUDA with Triton, the rule and the clipping in one pass per gradient
(`kernels.sanitize_triton`). ``False``: ``nan_to_num_`` per gradient, then a multi-tensor clamp; the same values, in
three passes over the gradients instead of one (``benchmarks/bench_step.py`` setting ``graphs-cl-nosan1``)."""


def _sanitize_one(g: Tensor, clip_value: float | None, use_kernels: bool | None) -> bool:
    """The rule and the clipping on ``g`` in one pass, when the fused kernel takes it; ``False`` otherwise."""
    if not (ONE_PASS_SANITIZE and kernels.fused_sanitize_available(g, use_kernels)):
        return False
    from ..kernels.sanitize_triton import sanitize_

    sanitize_(g, clip_value)
    return True


def _sanitize(grads: list[Tensor], clip_value: float | None, use_kernels: bool | None = None) -> None:
    # The small gradients (the norms' weights and biases: a few hundred tensors per network) go through one pass
    # over their concatenation and one multi-tensor copy back, instead of a launch each.
    small = [g for g in grads if g.numel() < SMALL_GRAD]
    batched = len(small) > 1 and len({(g.dtype, g.device) for g in small}) == 1
    flat = flat_cat(small) if batched else None
    targets = [g for g in grads if not (batched and g.numel() < SMALL_GRAD)] + ([flat] if batched else [])
    rest = [g for g in targets if not _sanitize_one(g, clip_value, use_kernels)]  # the one-pass kernel's leftovers
    for g in rest:
        torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
    if clip_value is not None and rest:
        torch._foreach_clamp_min_(rest, -clip_value)
        torch._foreach_clamp_max_(rest, clip_value)
    if batched:
        copy_from_flat(small, flat)


def _measured_setup(config: DistillConfig, device: torch.device, world: int) -> bool:
    """Whether this run is where the automatic speed switches have been measured and tested: a CUDA device, one
    process, no ``torch.compile``."""
    return device.type == "cuda" and world == 1 and config.compile == "off"


def _overlap_teacher(config: DistillConfig, device: torch.device, world: int) -> bool:
    """``config.overlap_teacher`` resolved: ``None`` is on in the measured setup (`_measured_setup`)."""
    if config.overlap_teacher is not None:
        return config.overlap_teacher
    return _measured_setup(config, device, world)


def _precast_weights(config: DistillConfig, device: torch.device, world: int) -> bool:
    """``config.precast_weights`` resolved: ``None`` is on under bf16 in the measured setup (`_measured_setup`)."""
    if config.precast_weights is not None:
        return config.precast_weights
    return config.precision == "bf16" and _measured_setup(config, device, world)


def _drop_nonfinite_samples(grad: Tensor) -> Tensor:
    """Zero the gradient of G's output for samples where it is not finite, keeping the others.

    The losses give a sample with a non-finite teacher or fake-score output zero loss, but the backward pass
    through that network still multiplies the zero by the sample's NaN activations; left alone, that NaN would
    reach every generator weight, where `sanitize_grads` zeroes the whole batch's update.
    """
    return torch.where(expand_as(torch.isfinite(grad).flatten(1).all(1), grad), grad, 0.0)


def _check_capturable(augment: Augment, generator: OneStepGenerator, device: torch.device) -> None:
    """Capture one augmentation call in a scratch CUDA graph, so that a pipe that cannot be captured fails here."""
    x = torch.zeros(2, *generator.sample_shape, device=device)
    rng = torch.Generator(device).manual_seed(0)
    augment(x, rng=rng)  # eagerly first: a pipe may create constants (filters) on its first call
    try:
        with capture(torch.cuda.CUDAGraph(), [rng]):
            augment(x, rng=rng)
    except RuntimeError as e:
        raise ValueError(
            f"cuda_graphs=True but the augmentation {type(augment).__name__} cannot be captured in a CUDA graph "
            f"({e}). Draw its randomness from the rng argument on the device, without .item(), host tensors or "
            "shapes that depend on values; or set cuda_graphs=False (--cuda-graphs off)."
        ) from e


class Distiller:
    """Distil ``teacher`` into ``generator``: one [`step`][scoredistill.Distiller.step] is one SiD/SiDA iteration.

    Args:
        teacher: The frozen teacher ``f_phi``.
        generator: The one-step generator ``G_theta``.
        fake_score: The fake score ``f_psi`` (its encoder is SiDA's discriminator).
        losses: Loss plug-ins, e.g. ``[SiDLoss(), DSMLoss()]`` or ``[SiDLoss(alpha=1.0), DSMLoss(),
            AdversarialEncoderLoss()]``. Their parameters, if any, train with the fake score.
        config: Loop hyperparameters.
        data: Iterator of real batches ``(x_real, labels)`` of ``micro_batch`` images; required by losses
            with ``needs_real_data`` (SiDA), and the source of class labels when given (docs/maths.md, (SiD-1)).
        augment: Optional ``augment(x, rng=...) -> (x_aug, augment_labels)`` for f_psi's inputs (EDM AugmentPipe).
    """

    def __init__(
        self,
        teacher: Teacher,
        generator: OneStepGenerator,
        fake_score: FakeScore,
        losses: Sequence[DistillLoss],
        config: DistillConfig,
        *,
        data: Iterator[Batch] | None = None,
        augment: Augment | None = None,
    ):
        for loss in losses:
            if not isinstance(loss, DistillLoss):
                raise TypeError(f"{type(loss).__name__} does not implement the DistillLoss protocol")
        if not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got a {type(config).__name__}")
        config.validate()  # again: object.__setattr__ changes a frozen config without its checks
        self.needs_real = any(getattr(loss, "needs_real_data", False) for loss in losses)
        if self.needs_real and data is None:
            raise ValueError("a loss needs real images (SiDA's discriminator): pass data=...")
        for name, role in (("teacher", teacher), ("fake score", fake_score)):
            shape = getattr(role, "sample_shape", None)
            if shape is not None and tuple(shape) != generator.sample_shape:
                raise ValueError(f"{name} sample shape {tuple(shape)} != generator's {generator.sample_shape}")
        if teacher.label_dim != generator.label_dim:
            raise ValueError(f"teacher has {teacher.label_dim} classes but the generator {generator.label_dim}")
        self.teacher, self.generator, self.fake_score, self.config = teacher, generator, fake_score, config
        self.losses = list(losses)
        warn_unreached_warmups(config, self.losses)
        self.data, self.augment = data, augment
        self.generator_sigma = _phase_sampler(self.losses, "generator_sigma")
        self.fake_score_sigma = _phase_sampler(self.losses, "fake_score_sigma")
        self.device = next(generator.parameters()).device
        # The fused group norms (6 launches per norm, forward + backward) pay off where launches are free, inside
        # CUDA graphs; small eager steps are host-bound, and under torch.compile the compiler fuses the norms.
        fuse_norms = config.use_kernels is not False and config.cuda_graphs and config.compile == "off"
        for role in (teacher, generator, fake_score):
            use_fused_norms(role, None if fuse_norms else False)
        if config.compile_cache_dir is not None:
            use_compile_cache(config.compile_cache_dir)
        if config.channels_last or config.compile != "off":
            for role in (teacher, generator, fake_score):
                if not hasattr(role.denoiser, "model"):
                    continue  # an analytic or foreign denoiser: nothing to re-lay out or compile
                speed_up(
                    role.denoiser,
                    channels_last=config.channels_last,
                    compile=config.compile,
                    compile_mode=config.compile_mode,
                )
        self.world, self.rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        if config.cuda_graphs and self.world > 1 and dist.get_backend() != "nccl":
            backend = dist.get_backend()
            raise ValueError(f"cuda_graphs with {self.world} processes needs the 'nccl' backend, not {backend!r}")
        if self.world > 1:  # every process starts from rank 0's networks (a random teacher included)
            broadcast_modules([teacher, generator, fake_score, *(m for m in self.losses if isinstance(m, nn.Module))])
        self.ema = EMA(generator, halflife_nimg=config.ema_halflife_nimg, rampup_ratio=config.ema_rampup_ratio)
        for switch in ("cuda_graphs", "overlap_teacher"):  # CUDA graphs; the teacher on a second CUDA stream
            if getattr(config, switch) and self.device.type != "cuda":
                raise ValueError(f"{switch} needs the networks on a CUDA device, not {self.device}")
        if config.share_encoder_pass and not fake_score.can_share_encoder:
            backbone = getattr(fake_score.denoiser, "model", fake_score.denoiser)
            raise ValueError(
                f"share_encoder_pass needs a fake-score backbone with forward_with_logits_shared (SongUNet, "
                f"DhariwalUNet, TinyUNet), not {type(backbone).__name__}"
            )
        # After speed_up (the copies take the parameters' layout) and the broadcast (they copy rank 0's weights).
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        precast = _precast_weights(config, self.device, self.world)
        self.precast = PreCast([teacher, generator, fake_score], dtype) if precast and dtype else None
        # Its weight gradients cast back in one batch after each backward pass: in one process only, since the
        # all-reduce of several hooks each parameter's gradient as autograd accumulates it.
        self._hold_gradients = self.precast is not None and self.world == 1
        self._flat_grads: dict[str, Tensor] = {}  # phase -> the buffer its first round's gradients were released into
        overlap = _overlap_teacher(config, self.device, self.world)
        self.side_stream = torch.cuda.Stream(self.device) if overlap else None  # the teacher runs here
        fused = {"fused": True, "capturable": config.cuda_graphs} if self.device.type == "cuda" else {"foreach": True}
        self.g_params = list(generator.parameters())
        self.f_params = list(fake_score.parameters()) + [
            p for loss in self.losses if isinstance(loss, nn.Module) for p in loss.parameters()
        ]
        self.opt_g = torch.optim.Adam(
            self.g_params,
            lr=config.lr_generator,
            eps=config.adam_eps,
            betas=(config.generator_beta1, config.beta2),
            **fused,
        )
        self.opt_f = torch.optim.Adam(
            self.f_params,
            lr=config.lr_fake_score,
            eps=config.adam_eps,
            betas=(config.fake_score_beta1, config.beta2),
            **fused,
        )
        use_scaler = config.precision == "fp16"
        self.scalers = {p: torch.amp.GradScaler(self.device.type, enabled=use_scaler) for p in ("g", "f")}
        self.rng = torch.Generator(self.device)
        self.nimg = self.step_index = 0
        self.best: tuple[int, float] | None = None  # (nimg, value) of the best evaluation so far
        self._last_values: tuple[int, dict[str, float]] | None = None  # this process's previous evaluation
        self.graphs = StepGraphs([self.rng]) if config.cuda_graphs else None
        self.averagers = (
            {"g": GradientAverager(self.g_params, self.world), "f": GradientAverager(self.f_params, self.world)}
            if self.world > 1
            else None
        )
        if self.graphs is not None and augment is not None:
            _check_capturable(augment, generator, self.device)

    # -- helpers -----------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _fetch(self, gen_on: bool) -> list[Batch | None]:
        """The real micro-batches this step consumes, on the device, drawn before any GPU work is queued."""
        rounds, wants_labels = self.config.rounds, self.data is not None and self.generator.label_dim > 0
        f_rounds = [
            self._next_batch() if (self.data is not None and self.needs_real) or wants_labels else None
            for _ in range(rounds)
        ]
        return f_rounds + [self._next_batch() if wants_labels else None for _ in range(rounds if gen_on else 0)]

    def _next_batch(self) -> Batch:
        micro = self.config.batch_size // self.config.rounds
        x_real, labels = next(self.data)  # type: ignore[arg-type]
        if x_real.shape[0] != micro or tuple(x_real.shape[1:]) != self.generator.sample_shape:
            raise ValueError(
                f"data batch {tuple(x_real.shape)} != [micro_batch={micro}, *{self.generator.sample_shape}]"
            )
        if labels is not None and labels.shape != (micro, self.generator.label_dim):
            hint = (
                "the generator is unconditional, so load the data without labels: "
                "ImageZipDataset(path, use_labels=False) or real_batches(..., label_dim=0)"
                if self.generator.label_dim == 0
                else "one-hot labels must have as many classes as the generator (pass label_dim= to the dataset)"
            )
            raise ValueError(
                f"data labels {tuple(labels.shape)} != [{micro}, label_dim={self.generator.label_dim}]: {hint}"
            )
        labels = None if labels is None else labels.to(self.device, torch.float32, non_blocking=True)
        return x_real.to(self.device, non_blocking=True), labels

    def _labels(self, batch: Batch | None, n: int) -> Tensor | None:
        """Class labels of a micro-batch: the data's when given (docs/maths.md, (SiD-1)), else uniform one-hot."""
        if self.generator.label_dim == 0:
            return None
        if batch is not None and batch[1] is not None:
            return batch[1]
        # One-hot by scatter: F.one_hot would check the indices on the host (a synchronisation).
        index = torch.randint(self.generator.label_dim, (n, 1), generator=self.rng, device=self.device)
        return torch.zeros(n, self.generator.label_dim, device=self.device).scatter_(1, index, 1.0)

    def _noised(self, x0: Tensor, labels: Tensor | None, sampler: SigmaSampler, aug: Tensor | None = None) -> Noised:
        sigma = sampler.sample(x0.shape[0], device=self.device, rng=self.rng)
        return Noised(x0, torch.randn(x0.shape, generator=self.rng, device=self.device), sigma, labels, aug)

    def _backward(self, loss: Tensor, phase: str, *, last_round: bool) -> None:
        if self.averagers is not None and last_round:  # all-reduce the last round's grads during its backward
            self.averagers[phase].arm()
        # Sum over the micro-batch divided by the per-process batch: the reference's `sum / B_gpu`.
        self.scalers[phase].scale(loss.sum() / self.config.batch_size).backward()
        if self._hold_gradients:  # the first round's buffer holds the gradients; later rounds add into them
            flat, _ = self.precast.release_gradients()
            if flat is not None:
                self._flat_grads.setdefault(phase, flat)

    def _optimizer_step(self, phase: str, opt: torch.optim.Optimizer, params: list, clip: float | None) -> None:
        if self.averagers is not None:  # wait for the bucketed averages over the processes
            self.averagers[phase].finish()
        self.scalers[phase].unscale_(opt)
        flat = self._flat_grads.pop(phase, None)
        # One pass over a released buffer instead of one per parameter whose gradient is still a view of it.
        rest = [p.grad for p in params if p.grad is not None and (flat is None or p.grad._base is not flat)]
        _sanitize(rest if flat is None else [flat, *rest], clip, self.config.use_kernels)
        self.scalers[phase].step(opt)
        self.scalers[phase].update()
        opt.zero_grad(set_to_none=True)

    @staticmethod
    def _collect(logs: dict[str, Tensor], name: str, out_logs: dict[str, Tensor], scale: float) -> None:
        for key, value in out_logs.items():
            k = f"{name}/{key}"
            logs[k] = logs.get(k, 0) + value.detach().float() * scale

    # -- one iteration -----------------------------------------------------------------------------------

    def step(self) -> dict[str, Tensor]:
        """Run one iteration and return its logs as detached device tensors (no host synchronisation)."""
        cfg = self.config
        seed = (cfg.seed * 1_000_003 + self.step_index) * max(self.world, 1) + self.rank
        self._seed(seed)
        gen_on = self.nimg >= cfg.generator_start_nimg
        active = self._active_generator_losses()
        with record_function("scoredistill/data"):
            batches = self._fetch(gen_on)
        if self.graphs is None:
            logs = self._iteration(batches, gen_on, active)
        else:  # one CUDA graph per regime of the schedule (warm-up, SiD only, SiD + adversarial)
            key = (gen_on, tuple(loss.name for loss in active))
            logs = self.graphs.run(key, lambda b: self._iteration(b, gen_on, active), batches, lambda: self._seed(seed))

        # Update the EMA and the image counter (only the generator batch counts, as in the reference).
        global_batch = cfg.batch_size * self.world
        with record_function("scoredistill/ema"):
            self.ema.update(self.generator, nimg=self.nimg, batch=global_batch)
        self.nimg += global_batch
        self.step_index += 1
        return logs

    def _active_generator_losses(self) -> tuple[DistillLoss, ...]:
        """The losses whose generator term counts now: the generator is on and each loss's own start is reached."""
        if self.nimg < self.config.generator_start_nimg:
            return ()
        return tuple(loss for loss in self.losses if self.nimg >= loss.generator_start_nimg)

    def _generator_losses(
        self, batch: Batch | None, micro: int, active: tuple[DistillLoss, ...], *, drop_nonfinite: bool = True
    ) -> list[tuple[DistillLoss, LossOutput]]:
        """One generator-phase forward: ``x_g = G(z)``, noised, and every active loss's output on it (autocast).

        ``drop_nonfinite``: zero the gradient of non-finite samples at ``x_g`` (the training step's rule)."""
        labels = self._labels(batch, micro)
        z = torch.randn(micro, *self.generator.sample_shape, generator=self.rng, device=self.device)
        with self._autocast():
            x_g = self.generator(z, labels)
            if drop_nonfinite and self.config.precision != "fp16" and x_g.requires_grad:  # fp16: the scaler sees them
                x_g.register_hook(_drop_nonfinite_samples)
            fake = self._noised(x_g, labels, self.generator_sigma)
            ev = Evaluation(
                fake,
                fake_score=self.fake_score,
                teacher=self.teacher,
                nimg=self.nimg,
                use_kernels=self.config.use_kernels,
                side_stream=self.side_stream,
            )
            return [(loss, out) for loss in active if (out := loss.generator_loss(ev)) is not None]

    def _seed(self, seed: int) -> None:
        self.rng.manual_seed(seed)
        torch.manual_seed(seed)  # dropout inside the networks draws from the global generator

    def _iteration(self, batches: list[Batch | None], gen_on: bool, active: tuple[DistillLoss, ...]) -> dict:
        """One iteration's GPU work: the fake-score step, then (once the generator is on) the generator step."""
        logs: dict[str, Tensor] = {}
        rounds = self.config.rounds
        precast = self.precast
        with precast.active(hold_gradients=self._hold_gradients) if precast else contextlib.nullcontext():
            if precast is not None:  # the copies follow any change since the last iteration (a load, an edit)
                precast.refresh()
                self._flat_grads.clear()  # what an interrupted iteration left
            with record_function("scoredistill/fake_score_step"):
                self._fake_score_step(batches[:rounds], logs)
            if gen_on:
                with record_function("scoredistill/generator_step"):
                    self._generator_step(batches[rounds:] or [None] * rounds, active, logs)
        return logs

    def _fake_score_step(self, batches: list[Batch | None], logs: dict[str, Tensor]) -> None:
        """Fake-score (+ discriminator) step on detached generator samples (DSM-1–SiDA-2)."""
        cfg, micro = self.config, self.config.batch_size // self.config.rounds
        self.generator.eval()
        self.fake_score.train().requires_grad_(True)
        for i, batch in enumerate(batches):
            labels = self._labels(batch, micro)
            z = torch.randn(micro, *self.generator.sample_shape, generator=self.rng, device=self.device)
            with torch.no_grad(), self._autocast():
                x_g = self.generator(z, labels)
            x_g, aug = self.augment(x_g, rng=self.rng) if self.augment else (x_g, None)
            fake = self._noised(x_g, labels, self.fake_score_sigma, aug)
            real = None
            if self.needs_real and batch is not None:
                x_real, aug_real = self.augment(batch[0], rng=self.rng) if self.augment else (batch[0], None)
                real = fake.with_x0(x_real, aug_real)
            with self._autocast():
                ev = Evaluation(
                    fake,
                    fake_score=self.fake_score,
                    real=real,
                    nimg=self.nimg,
                    use_kernels=cfg.use_kernels,
                    share_encoder=cfg.share_encoder_pass,
                )
                total = torch.zeros(micro, device=self.device)
                for loss in self.losses:
                    out = loss.fake_score_loss(ev)
                    if out is not None:
                        total = total + out.loss
                        self._collect(logs, loss.name, {"fake_score_loss": out.loss.mean(), **out.logs}, 1 / cfg.rounds)
            self._backward(total, "f", last_round=i == cfg.rounds - 1)
        self._optimizer_step("f", self.opt_f, self.f_params, cfg.fake_score_grad_clip)
        if self.precast is not None:  # the generator step reads the updated fake score
            self.precast.refresh([self.fake_score])

    def _generator_step(
        self, batches: list[Batch | None], active: tuple[DistillLoss, ...], logs: dict[str, Tensor]
    ) -> None:
        """Generator step: gradients flow through the frozen score networks' inputs (SiD-3–SiD-6, SiDA-3–SiDA-4)."""
        cfg, micro = self.config, self.config.batch_size // self.config.rounds
        self.generator.train()
        self.fake_score.eval().requires_grad_(False)
        for i, batch in enumerate(batches):
            outs = self._generator_losses(batch, micro, active)
            weight_sum = sum(loss.generator_weight for loss, _ in outs)
            total = torch.zeros(micro, device=self.device)
            for loss, out in outs:
                total = total + (loss.generator_weight / weight_sum) * out.loss
                self._collect(logs, loss.name, {"generator_loss": out.loss.mean(), **out.logs}, 1 / cfg.rounds)
            self._backward(total, "g", last_round=i == cfg.rounds - 1)
        self._optimizer_step("g", self.opt_g, self.g_params, None)
        self.fake_score.requires_grad_(True)

    def generator_gradient_norms(self, *, seed: int = 0) -> dict[str, float]:
        """How the active generator losses balance: each one's gradient norm on the generator's parameters and its
        ratio to the first one's (SiD's), on one fresh micro-batch (docs/methods.md, The adversarial weight).

        Each loss is weighted as the loop weighs it (``generator_weight`` over the active losses' sum) and the
        gradients are of the batch-averaged objective, so for SiDA ``adv/generator_grad_ratio`` is
        ``‖∇_θ ½ L_adv‖ / ‖∇_θ ½ L_sid‖``, the balance that ``generator_scale`` sets. ``Distiller.run`` logs it with
        every log record once two generator losses are active. Cost: one generator step's forward and one
        backward per loss, without an optimiser step; the samples, noise levels and classes come from a generator
        seeded by ``(seed, step)``, so training (its parameters, gradients, random streams and counters) is
        unchanged.

        Returns:
            ``{"<name>/generator_grad_norm": ...}`` for every active generator loss and
            ``{"<name>/generator_grad_ratio": ...}`` for each after the first; ``{}`` while fewer than two are
            active.
        """
        cfg = self.config
        active = tuple(
            loss for loss in self._active_generator_losses() if type(loss).generator_loss is not _NO_GENERATOR_LOSS
        )
        if len(active) < 2:  # SiD alone (its DSMLoss has no generator term): nothing to compare, nothing spent
            return {}
        micro, rng = cfg.batch_size // cfg.rounds, self.rng
        modes = (self.generator.training, self.fake_score.training)
        self.rng = torch.Generator(self.device).manual_seed(seed * 1_000_003 + self.step_index)
        self.generator.train()
        self.fake_score.eval().requires_grad_(False)
        try:
            outs = [(loss, out.loss) for loss, out in self._generator_losses(None, micro, active, drop_nonfinite=False)]
            weight_sum = sum(loss.generator_weight for loss, _ in outs)
            norms = {}
            for j, (loss, per_sample) in enumerate(outs):
                objective = (loss.generator_weight / weight_sum) * per_sample.sum() / micro
                if not objective.requires_grad:  # a term that does not depend on the generator
                    norms[loss.name] = 0.0
                    continue
                grads = torch.autograd.grad(objective, self.g_params, retain_graph=j < len(outs) - 1, allow_unused=True)
                per_param = [g.float().norm() for g in grads if g is not None] or [torch.zeros((), device=self.device)]
                norms[loss.name] = float(torch.linalg.vector_norm(torch.stack(per_param)))
        finally:
            self.rng = rng
            self.generator.train(modes[0])
            self.fake_score.train(modes[1]).requires_grad_(True)
        first = next(iter(norms.values()), math.nan)
        logs = {f"{name}/generator_grad_norm": norm for name, norm in norms.items()}
        for name, norm in list(norms.items())[1:]:
            logs[f"{name}/generator_grad_ratio"] = norm / first if first > 0 else (math.inf if norm > 0 else math.nan)
        return logs

    # -- state ---------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a resumable checkpoint atomically (networks as safetensors, the rest ``weights_only``).

        Raises:
            TypeError, ValueError: The config was changed behind its checks since it was built (nothing is written).
        """
        self.config.validate()
        state = {
            "nimg": self.nimg,
            "step_index": self.step_index,
            "config": dataclasses.asdict(self.config),
            "opt_g": self.opt_g.state_dict(),
            "opt_f": self.opt_f.state_dict(),
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "data": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
            "world": self.world,
            "best": list(self.best) if self.best is not None else None,
        }
        return save_training_state(path, modules=self._modules(), state=state)

    def load(self, path: str | Path, *, allow_legacy: bool = False) -> None:
        """Resume from [`save`][scoredistill.Distiller.save]'s checkpoint; the next
        [`step`][scoredistill.Distiller.step] continues the same trace.

        A checkpoint written by a different number of processes resumes when the global batch is unchanged (the
        per-process batch may differ); the noise draws and each rank's shuffle then continue differently from an
        uninterrupted run (they are seeded per rank).

        All or nothing: every file's digest, every network's keys and shapes, the config, the counters and the
        optimiser and loss-scaler states are read and checked before anything here changes, so a refused
        checkpoint leaves this distiller as it was. The checkpoint is untrusted input even when its manifest
        checks out: counters, the best evaluation and the optimisers' hyper-parameters must be what this run's
        config allows (see [`read_training_state`][scoredistill.training.checkpoint.read_training_state] for the rest).

        Args:
            path: The checkpoint directory.
            allow_legacy: Also resume from a checkpoint without ``manifest.json`` (written by scoredistill 0.1),
                with a warning and without the digest check.

        Raises:
            FileNotFoundError: There is no checkpoint at ``path``.
            CheckpointError: The checkpoint is damaged, incomplete, of another run, or its config differs in a
                field a resumed run may not change (the message names the file or the fields).
        """
        modules = self._modules()
        loaded = read_training_state(path, modules=modules, map_location=self.device, allow_legacy=allow_legacy)
        state, file = loaded.state, loaded.path / "state.pt"
        checked = check_resume(
            state,
            file,
            config=dataclasses.asdict(self.config),
            world=self.world,
            optimizers={"opt_g": self.opt_g, "opt_f": self.opt_f},
            scalers=self.scalers,
            device_type=self.device.type,
            may_change=RESUME_MAY_CHANGE,
        )

        # Apply. The data stream first: it is the one part that checks its own state (dataset size).
        if state["data"] is not None and hasattr(self.data, "load_state_dict"):
            data_state = dict(state["data"])
            if self.world > 1 and hasattr(self.data, "state_dict") and "seed" in data_state:
                # Rank 0's position and epoch are every rank's (equal batches), but each rank keeps its own shuffle.
                data_state["seed"] = self.data.state_dict()["seed"]
            try:
                self.data.load_state_dict(data_state)
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{file}: the data stream refused its saved state: {err}") from err
        apply_networks(loaded, modules)
        self.opt_g.load_state_dict(checked.optimizers["opt_g"])
        self.opt_f.load_state_dict(checked.optimizers["opt_f"])
        for k, scaler in self.scalers.items():
            scaler.load_state_dict(checked.scalers[k])
        self.nimg, self.step_index, self.best = checked.nimg, checked.step_index, checked.best

    def _nonfinite_fraction(self, logs: dict[str, float]) -> float:
        """The largest ``*/nonfinite_frac`` of a log record, the same on every process."""
        frac = max((v for k, v in logs.items() if k.endswith("nonfinite_frac")), default=0.0)
        if self.world > 1:
            t = torch.tensor(frac, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            frac = float(t)
        return frac

    def check_replicas(self) -> None:
        """Raise unless the generator, its EMA, the fake score and any trained loss are bit-identical on all
        processes (collective: every rank calls it). A no-op in a single process."""
        if self.world > 1:
            assert_replicas_identical(self._modules())

    def _modules(self) -> dict[str, nn.Module]:
        modules = {"generator": self.generator, "generator_ema": self.ema.module, "fake_score": self.fake_score}
        for i, loss in enumerate(self.losses):
            if isinstance(loss, nn.Module) and any(True for _ in loss.parameters()):
                modules[f"loss{i}_{loss.name}"] = loss
        return modules

    # -- the loop ------------------------------------------------------------------------------------------

    def run(
        self,
        *,
        run_dir: str | Path | None = None,
        log_every_nimg: int = 10_000,
        checkpoint_every_nimg: int | None = None,
        progress: bool = True,
        on_log: Callable[[dict[str, float]], None] | None = None,
        metrics: Sequence[GeneratorMetric] = (),
        eval_every_nimg: int | None = None,
        metric: GeneratorMetric | None = None,
    ) -> dict[str, float]:
        """Step until ``config.total_nimg``; log, evaluate, checkpoint, and checkpoint again on interruption.

        Args:
            run_dir: Where ``stats.jsonl`` (every log and evaluation; TensorBoard scalars too when installed),
                ``training_state/`` and the evaluation artefacts go. ``None`` keeps nothing.
            log_every_nimg: Images between log records (the only host synchronisations of the loop).
            checkpoint_every_nimg: Images between checkpoints (``None``: only at the end and on interruption).
            progress: Show a progress bar on rank 0 (the log records are printed on rank 0 either way).
            on_log: Called with every log record.
            metrics: Evaluate the EMA generator at the start of a fresh run, every ``eval_every_nimg`` images and at
                the end (see [`evaluate`][scoredistill.Distiller.evaluate]), e.g.
                [`scoredistill.metrics.FIDMetric`][scoredistill.metrics.FIDMetric]; the first decides which
                generator is the best so far.
            eval_every_nimg: Images between evaluations (required with ``metrics``).
            metric: One metric: the same as ``metrics=[metric]`` (the 0.1 keyword).

        Returns:
            The last logged averages.

        Raises:
            NonFiniteTrainingError: Every sample of a log interval was non-finite (e.g. a learning rate far too
                high); the state at that point is written to ``training_state_nonfinite/``, leaving the last good
                ``training_state/`` alone. A [`NonFiniteWarning`][scoredistill.training.distill.NonFiniteWarning] is
                issued for an interval with more than 10% non-finite samples.
        """
        metrics = _metric_list(metrics, metric, eval_every_nimg)
        log = RunLog(run_dir) if run_dir is not None and self.rank == 0 else None
        ckpt = Path(run_dir) / "training_state" if run_dir is not None else None
        bar = Progress(self.config.total_nimg, self.nimg, enabled=self.rank == 0, bar=progress)
        interval = _Interval()
        next_log = _Every(log_every_nimg, self.nimg)
        next_ckpt = _Every(checkpoint_every_nimg, self.nimg)
        next_eval = _Every(eval_every_nimg if metrics else None, self.nimg, aligned=True)
        last: dict[str, float] = {}
        try:
            if metrics and self.nimg == 0:  # where a fresh run starts (the teacher's copy, or SiD's result)
                self._evaluate_and_log(metrics, run_dir, bar, log)
                interval = _Interval()
            while self.nimg < self.config.total_nimg:
                interval.add(self.step())
                bar.update(self.config.batch_size * self.world)
                done = self.nimg >= self.config.total_nimg
                if metrics and (next_eval.due(self.nimg) or done):
                    interval.eval_s += self._evaluate_and_log(metrics, run_dir, bar, log)
                if next_log.due(self.nimg) or done:
                    last = self._close_interval(interval, bar, log, on_log, ckpt)
                    interval = _Interval()
                if ckpt is not None and next_ckpt.due(self.nimg):
                    self._save_rank0(ckpt)
        except KeyboardInterrupt:
            if ckpt is not None:
                self._save_rank0(ckpt)
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        if ckpt is not None:
            self._save_rank0(ckpt)
        return last

    def _save_rank0(self, path: Path) -> None:
        if self.rank == 0:
            self.save(path)

    def _evaluate_and_log(
        self, metrics: list[GeneratorMetric], run_dir: str | Path | None, bar: Progress, log: RunLog | None
    ) -> float:
        """Evaluate, print and record the results; returns the seconds it took (not training time)."""
        t0 = time.perf_counter()
        results = self.evaluate(metrics, run_dir)
        seconds = time.perf_counter() - t0
        bar.log(results)
        if log is not None:
            log.write(self.nimg, {**results, "eval_s": seconds})
        return seconds

    def _close_interval(
        self,
        interval: _Interval,
        bar: Progress,
        log: RunLog | None,
        on_log: Callable[[dict[str, float]], None] | None,
        ckpt: Path | None,
    ) -> dict[str, float]:
        """Average the interval's logs (the loop's only host synchronisation), record them, and act on non-finite
        samples: stop when an interval lost them all, warn when it lost more than a tenth."""
        record = interval.averages(self.config.batch_size * self.world)
        record["nimg"] = self.nimg
        record.update(self.generator_gradient_norms(seed=self.config.seed))  # the loss balance; {} for SiD alone
        nonfinite = self._nonfinite_fraction(record)
        bar.log(record)
        if log is not None:
            log.write(self.nimg, record)
        if on_log is not None:
            on_log(record)
        if nonfinite >= 1.0:  # every sample of the interval was dropped: nothing trains any more
            self._stop_nonfinite(record, ckpt)
        if nonfinite > NONFINITE_WARN_FRACTION:
            warnings.warn(
                f"{nonfinite:.0%} of the samples of the last log interval (up to {self.nimg} images) "
                "were non-finite and dropped from the losses; training is diverging (learning rate?)",
                NonFiniteWarning,
                stacklevel=3,
            )
        return record

    def _stop_nonfinite(self, record: dict[str, float], ckpt: Path | None) -> None:
        where = "(no run_dir: nothing written)"
        if ckpt is not None:
            dump = ckpt.with_name(ckpt.name + "_nonfinite")
            self._save_rank0(dump)
            where = f"this state is in {dump}; the last good checkpoint, if any, is {ckpt}"
        fracs = ", ".join(f"{k} {v:.0%}" for k, v in record.items() if k.endswith("nonfinite_frac"))
        raise NonFiniteTrainingError(
            f"a loss dropped every sample of the last log interval (up to {self.nimg} images) as "
            f"non-finite ({fracs}), so its network no longer learns; {where}. Lower the learning "
            f"rates (lr_generator {self.config.lr_generator:g}, lr_fake_score "
            f"{self.config.lr_fake_score:g}) and resume from an earlier checkpoint"
        )

    @torch.no_grad()
    def evaluate(
        self,
        metrics: GeneratorMetric | Sequence[GeneratorMetric],
        run_dir: str | Path | None = None,
        *,
        grid_seed: int = 0,
    ) -> dict:
        """Score the EMA generator with ``metrics``; in ``run_dir`` keep its sample grid and the best and last EMA.

        Every process calls every metric (one may split its work across them). Rank 0 writes
        ``samples/<kimg>kimg.png`` (a grid of the same 64 seeded samples at every evaluation), ``generator_last/``
        and, when the first metric's value is the best so far (by its ``higher_is_better``), ``generator_best/``, as
        public artefacts. The best value and where it was reached are part of the training state, so a resumed run
        keeps comparing against it.

        Returns:
            ``{metric.name: value}`` for every metric, and ``{first.name + "_best": the first's best so far}``.
        """

        metrics = [metrics] if isinstance(metrics, GeneratorMetric) else list(metrics)
        generator = self.ema.module
        values = {m.name: float(m(generator)) for m in metrics}
        self._warn_if_repeated(values)
        first = metrics[0]
        if is_better(first, values[first.name], None if self.best is None else self.best[1]):
            self.best = (self.nimg, values[first.name])
        if run_dir is not None and self.rank == 0:
            self._write_evaluation(Path(run_dir), values, grid_seed)
        best = self.best[1] if self.best is not None else math.nan
        return {**values, f"{first.name}_best": best}

    def _warn_if_repeated(self, values: dict[str, float]) -> None:
        """Warn when a metric returns exactly its previous value although the generator trained in between: a
        metric that caches by generator state and misses the change (as ``FIDMetric``'s cache once did on CUDA,
        where the fused EMA update leaves version counters alone) would otherwise repeat itself silently."""
        last = self._last_values
        if last is not None and last[0] < self.nimg:
            same = [k for k, v in values.items() if math.isfinite(v) and last[1].get(k) == v]
            if same:
                warnings.warn(
                    f"metric(s) {', '.join(same)} returned exactly the value of the evaluation at {last[0]} images "
                    f"after the generator trained to {self.nimg}: a metric that caches its result by generator state "
                    "may be serving a stale value",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._last_values = (self.nimg, values)

    def _write_evaluation(self, run_dir: Path, values: dict[str, float], grid_seed: int) -> None:
        from ..data.imageio import image_grid, write_png
        from ..io.hub import save_pretrained

        generator = self.ema.module
        grid = generator.sample(64, rng=torch.Generator(self.device).manual_seed(grid_seed), device=self.device)
        if grid.ndim == 4:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            write_png(run_dir / "samples" / f"{self.nimg // 1000:06d}kimg.png", image_grid(grid, cols=8))
        scores = {k: v if math.isfinite(v) else None for k, v in values.items()}  # config.json is strict JSON
        training = {"nimg": self.nimg, **scores, **dataclasses.asdict(self.config)}
        save_pretrained(generator, run_dir / "generator_last", training=training)
        if self.best is not None and self.best[0] == self.nimg:
            save_pretrained(generator, run_dir / "generator_best", training=training)


def _metric_list(
    metrics: Sequence[GeneratorMetric], metric: GeneratorMetric | None, eval_every_nimg: int | None
) -> list[GeneratorMetric]:
    """``run``'s metrics as a list, checked."""
    if metric is not None and metrics:
        raise ValueError("pass metric= or metrics=, not both")
    metrics = [metric] if metric is not None else list(metrics)
    for m in metrics:
        if not isinstance(m, GeneratorMetric):
            raise TypeError(f"{type(m).__name__} is not a GeneratorMetric (a callable with a name)")
    if len({m.name for m in metrics}) != len(metrics):
        raise ValueError(f"metric names must differ, got {[m.name for m in metrics]}")
    if metrics and not (eval_every_nimg and eval_every_nimg > 0):
        raise ValueError("a metric needs eval_every_nimg > 0 (images between evaluations)")
    return metrics


class _Every:
    """A schedule in images: due once ``nimg`` reaches the next mark, which then moves on.

    ``aligned``: marks at multiples of ``every`` (evaluations line up across resumes); else ``every`` after the last.
    ``every=None``: never due.
    """

    def __init__(self, every: int | None, nimg: int, *, aligned: bool = False):
        self.every, self.aligned = every, aligned
        self.next = math.inf if not every else self._after(nimg)

    def _after(self, nimg: int) -> int:
        return (nimg // self.every + 1) * self.every if self.aligned else nimg + self.every

    def due(self, nimg: int) -> bool:
        if nimg < self.next:
            return False
        self.next = self._after(nimg)
        return True


class _Interval:
    """One log interval: the summed step logs (device tensors), the steps, and its training time."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps, self.t0, self.eval_s = 0, time.perf_counter(), 0.0

    def add(self, logs: dict[str, Tensor]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.steps += 1

    def averages(self, images_per_step: int) -> dict[str, float]:
        record = {k: float(v) / self.steps for k, v in self.sums.items()}
        train_s = time.perf_counter() - self.t0 - self.eval_s  # evaluations do not count as training time
        record["images_per_s"] = self.steps * images_per_step / train_s
        return record
