"""The stream hand-offs of ``DistillConfig.overlap_teacher`` (``scoredistill._streams``), with stand-in streams on the
CPU: who waits for whom and which stream each tensor is recorded on, forward and backward. The GPU rows of
``test_gpu_matrix.py`` run the real thing."""

from __future__ import annotations

import torch

from scoredistill import _streams


class StandInStream:
    def __init__(self, name: str, events: list[str]):
        self.name, self.events = name, events

    def wait_stream(self, other: StandInStream) -> None:
        self.events.append(f"{self.name} waits for {other.name}")


def test_fork_and_join_wait_and_record_in_both_directions(monkeypatch):
    events: list[str] = []
    main, side = StandInStream("main", events), StandInStream("side", events)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: events.append(f"kept for {stream.name}"))
    x = torch.randn(3, requires_grad=True)
    forked = _streams.fork(x, side)
    assert events == ["side waits for main", "kept for side"]  # the side stream may read x, which outlives its use
    events.clear()
    y = _streams.join(forked * 2, side)  # "* 2": the side stream's work
    assert events == ["main waits for side", "kept for main"]
    events.clear()
    (y * torch.arange(3.0)).sum().backward()
    # Backward runs the other way: join's gradient goes to the side stream, fork's comes back to this one.
    assert events == ["side waits for main", "kept for side", "main waits for side", "kept for main"]
    assert torch.equal(x.grad, 2 * torch.arange(3.0))  # the hand-offs are identities for the maths
    events.clear()
    assert _streams.lend(None, side) is None and events == []
    cpu = torch.zeros(2)
    assert _streams.lend(cpu, side) is cpu and events == []  # host tensors need no recording
