"""Hand tensors between two CUDA streams inside autograd, so that independent network evaluations can overlap.

``Evaluation`` runs the teacher on a side stream while the fake score runs on the current one
(``DistillConfig.overlap_teacher``). Autograd runs each backward operation on the stream its forward ran on, so the
two networks' backward passes overlap as well. What crosses between the streams is synchronised here, in both
directions, and recorded with the caching allocator (``Tensor.record_stream``), so that no block is reused by one
stream while the other still reads it. Under CUDA-graph capture the side stream joins the capture at the fork and
rejoins the capturing stream at the join (forward) and at the fork's backward.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Fork(torch.autograd.Function):
    """``x`` (made on the current stream) for use on ``side``; its gradient (made on ``side``) back."""

    @staticmethod
    def forward(ctx, x: Tensor, side: torch.cuda.Stream) -> Tensor:
        ctx.side = side
        side.wait_stream(torch.cuda.current_stream(x.device))
        x.record_stream(side)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        current = torch.cuda.current_stream(grad.device)  # the forward's stream: autograd runs backward there
        current.wait_stream(ctx.side)
        grad.record_stream(current)
        return grad, None


class _Join(torch.autograd.Function):
    """``y`` (made on ``side``) for use on the current stream; its gradient (made here) to ``side``."""

    @staticmethod
    def forward(ctx, y: Tensor, side: torch.cuda.Stream) -> Tensor:
        ctx.side = side
        current = torch.cuda.current_stream(y.device)
        current.wait_stream(side)
        y.record_stream(current)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        ctx.side.wait_stream(torch.cuda.current_stream(grad.device))
        grad.record_stream(ctx.side)
        return grad, None


def fork(x: Tensor, side: torch.cuda.Stream) -> Tensor:
    """``x``, ready to be read on ``side`` (differentiable: its gradient returns to the current stream)."""
    return _Fork.apply(x, side)


def join(y: Tensor, side: torch.cuda.Stream) -> Tensor:
    """``y``, made on ``side``, ready to be read on the current stream (differentiable: its gradient goes to
    ``side``)."""
    return _Join.apply(y, side)


def lend(x: Tensor | None, side: torch.cuda.Stream) -> Tensor | None:
    """A tensor without gradient (a noise level, labels) that ``side`` reads after a ``fork``: recorded with the
    allocator so that its memory outlives the side stream's use."""
    if x is not None and x.is_cuda:
        x.record_stream(side)
    return x
