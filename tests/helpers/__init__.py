"""Helpers shared by the test modules: fixture paths and tiny roles on the CPU.

Test modules import them as ``from helpers import ...`` (``tests/`` is on ``pythonpath``, see pyproject.toml);
fixtures that pytest injects by name live in ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scoredistill import (
    DistillConfig,
    Distiller,
    DSMLoss,
    FakeScore,
    GaussianMixture,
    OneStepGenerator,
    Precond,
    SiDLoss,
    Teacher,
)
from scoredistill.networks import MLP, TinyUNet

__all__ = [
    "FIXTURES",
    "NCSNPP_SKIP",
    "REPO_ROOT",
    "TINY_ADM",
    "TINY_SONG",
    "TINY_ZIP",
    "OpCounter",
    "ResumableStream",
    "autograd_nodes",
    "randomise",
    "saved_tiny_distiller",
    "tiny_image_roles",
    "tiny_vector_distiller",
    "tiny_vector_roles",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
TINY_ZIP = FIXTURES / "cifar10-tiny.zip"
"""A few hundred labelled CIFAR-10 images as an EDM-style dataset zip (see ``fixtures/README.md``)."""

TINY_UNET = {"img_resolution": 8, "channel_mult": (1, 2), "num_blocks": 1, "attn_resolutions": (4,)}
TINY_SONG = {**TINY_UNET, "model_channels": 16}
"""`SongUNetConfig` fields of an 8x8 DDPM++ with two levels, one block each and attention at 4x4."""
TINY_ADM = {**TINY_UNET, "model_channels": 64, "channel_mult": (1, 1)}
"""`DhariwalUNetConfig` fields of an 8x8 ADM of the same shape (64 channels: ADM's heads are 64 wide)."""
NCSNPP_SKIP = {
    "embedding_type": "fourier",
    "encoder_type": "skip",
    "decoder_type": "skip",
    "resample_filter": (1, 3, 3, 1),
}
"""The `SongUNetConfig` fields that make DDPM++ into NCSN++ with skip encoder and decoder."""


def tiny_image_roles(label_dim: int = 0, seed: int = 0) -> tuple[Teacher, OneStepGenerator, FakeScore]:
    """An 8x8 TinyUNet teacher and copies of it as generator and fake score (the SiD initialisation)."""
    torch.manual_seed(seed)
    net = Precond(TinyUNet(img_channels=1, channels=8, label_dim=label_dim), label_dim=label_dim)
    teacher = Teacher(net, sample_shape=(1, 8, 8))
    return teacher, OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)


def tiny_vector_roles(dim: int = 2, seed: int = 0) -> tuple[Teacher, OneStepGenerator, FakeScore]:
    """The analytic 8-mode ring as teacher, and fresh MLPs as generator and fake score."""
    torch.manual_seed(seed)
    teacher = Teacher(GaussianMixture.ring(8))
    G = OneStepGenerator(Precond(MLP(dim, 32, depth=2)), sample_shape=(dim,))
    return teacher, G, FakeScore(Precond(MLP(dim, 32, depth=2)))


def tiny_vector_distiller(**cfg) -> Distiller:
    """SiD + DSM on :func:`tiny_vector_roles`, batch 4, real data from a :class:`ResumableStream`; ``cfg`` overrides."""
    teacher, G, fake = tiny_vector_roles()
    config = DistillConfig(batch_size=4, total_nimg=1000, **cfg)
    return Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config, data=ResumableStream(4, (2,)))


def saved_tiny_distiller(tmp_path: Path, steps: int = 1) -> tuple[Distiller, Path]:
    """A :func:`tiny_vector_distiller` after ``steps`` steps, and the checkpoint it saved at ``tmp_path / "ckpt"``."""
    d = tiny_vector_distiller()
    for _ in range(steps):
        d.step()
    d.save(tmp_path / "ckpt")
    return d, tmp_path / "ckpt"


class ResumableStream:
    """A real-data stream with state, like ``scoredistill.data``'s: batch ``i`` is uniform in [-1, 1], seeded by i."""

    def __init__(self, batch: int, shape: tuple[int, ...]):
        self.batch, self.shape, self.index = batch, shape, 0

    def __iter__(self) -> ResumableStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, None]:
        g = torch.Generator().manual_seed(self.index)
        self.index += 1
        return torch.rand(self.batch, *self.shape, generator=g) * 2 - 1, None

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = state["index"]


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: EDM zero-initialises every residual branch's last layer and the output layer,
    which would make a freshly built network blind to its norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def autograd_nodes(t: torch.Tensor) -> list[str]:
    """The class names of the autograd nodes behind ``t`` (each node once, a name once per node)."""
    seen, names, stack = set(), [], [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(fn for fn, _ in node.next_functions)
    return names


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched inside the block for which ``which(func, args)`` holds."""

    def __init__(self, which) -> None:
        super().__init__()
        self.which, self.count = which, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.which(func, args):
            self.count += 1
        return func(*args, **(kwargs or {}))
