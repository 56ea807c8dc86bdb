"""Speed switches for the networks: channels_last memory format and torch.compile (whole or regional).

None of them changes the maths: the same modules run the same operations, only fused, re-laid out or
launched differently. Regional compilation compiles each residual block (EDM's ``UNetBlock``) instead of
the whole network, which keeps compile time short because identical blocks share compiled code.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["CompileScope", "speed_up"]

CompileScope = Literal["off", "blocks", "network"]

_BACKBONE_METHODS = ("forward", "forward_with_logits", "encoder_logits")


def speed_up(
    denoiser: nn.Module,
    *,
    channels_last: bool = False,
    compile: CompileScope = "off",
    compile_mode: str | None = None,
) -> nn.Module:
    """Apply speed switches in place to a :class:`~scoredistill.precond.Precond`-wrapped backbone.

    Args:
        denoiser: A denoiser whose backbone is ``denoiser.model`` (or a backbone itself).
        channels_last: Store the backbone's 4-D weights channels-last (NHWC convolutions on tensor cores).
        compile: ``"blocks"`` compiles every residual block (regional compilation: short compile time),
            ``"network"`` compiles the backbone's entry points whole (longest compile, most fusion).
        compile_mode: ``torch.compile`` mode, e.g. ``"max-autotune-no-cudagraphs"``; ``None`` is the default.

    Returns:
        The same module. State-dict keys are unchanged, so checkpoints stay interchangeable.
    """
    if compile not in ("off", "blocks", "network"):
        raise ValueError(f"compile must be 'off', 'blocks' or 'network', got {compile!r}")
    backbone = getattr(denoiser, "model", denoiser)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    if compile == "blocks":
        blocks = [m for m in backbone.modules() if type(m).__name__ == "UNetBlock"]
        if not blocks:
            raise ValueError(f"{type(backbone).__name__} has no UNetBlock to compile: use compile='network'")
        # Blocks differ in channels, resampling and attention: allow one compiled variant per kind.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in blocks:
            block.compile(mode=compile_mode)
    elif compile == "network":
        for name in _BACKBONE_METHODS:
            if hasattr(backbone, name):
                setattr(backbone, name, torch.compile(getattr(backbone, name), mode=compile_mode))
    return denoiser
