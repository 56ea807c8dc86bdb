"""The stream hand-offs of ``DistillConfig.overlap_teacher`` and ``overlap_real`` (``scoredistill._streams``), with
stand-in streams on the CPU: who waits for whom and which stream each tensor is recorded on, forward and backward.
The GPU rows of ``test_gpu_matrix.py`` run the real thing."""

from __future__ import annotations

import torch
from torch import Tensor

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


def test_real_images_encoder_pass_runs_on_the_side_stream_after_the_fakes_pass(monkeypatch):
    """``DistillConfig.overlap_real``: in the fake-score phase, ``Evaluation`` hands the real input to the side
    stream before it issues the fake score's pass over the fakes on this one (so the side stream need not wait for
    that pass), then issues the real images' encoder pass on the side stream (so dropout draws its masks in the
    serial order) whichever a loss asks for first; the losses and weight gradients are the serial ones."""
    from contextlib import contextmanager

    from helpers import tiny_image_roles
    from scoredistill import AdversarialEncoderLoss, DSMLoss
    from scoredistill._types import Noised
    from scoredistill.losses.base import Evaluation

    events: list[str] = []
    main, side = StandInStream("main", events), StandInStream("side", events)
    on = ["main"]

    @contextmanager
    def stream(s):
        on.append(s.name)
        yield
        on.pop()

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    _, G, fake = tiny_image_roles()
    calls: list[tuple[str, str]] = []
    score, logits = fake.score, fake.logits
    fake.score = lambda *a, **k: calls.append(("score", on[-1])) or events.append("score") or score(*a, **k)
    fake.logits = lambda *a, **k: calls.append(("logits", on[-1])) or events.append("logits") or logits(*a, **k)
    x_g = G.sample(4, rng=torch.Generator().manual_seed(0)).detach()
    noised = Noised(x_g, torch.randn_like(x_g), torch.full((4,), 0.7))
    real = noised.with_x0(torch.rand_like(x_g) * 2 - 1)

    def run(overlap: bool, first: str) -> tuple[Tensor, list[Tensor]]:
        fake.zero_grad(set_to_none=True)
        ev = Evaluation(noised, fake_score=fake, real=real)
        if overlap:  # what the constructor sets for a CUDA stream on a GPU (it refuses a stream for CPU samples)
            ev._side, ev._real_on_side = side, True
        getattr(ev, first)
        total = sum(loss.fake_score_loss(ev).loss for loss in (DSMLoss(), AdversarialEncoderLoss()))
        total.sum().backward()
        return total.detach(), [p.grad.clone() for p in fake.parameters()]

    serial, serial_grads = run(False, "fake_out")
    assert calls == [("score", "main"), ("logits", "main")]
    for first in ("logits_real", "fake_out"):
        calls.clear()
        events.clear()
        total, grads = run(True, first)
        assert calls == [("score", "main"), ("logits", "side")], first
        # The fork before both passes, the join after them.
        assert events[:4] == ["side waits for main", "score", "logits", "main waits for side"], first
        assert torch.equal(total, serial)
        for g, s in zip(grads, serial_grads, strict=True):
            torch.testing.assert_close(g, s)
