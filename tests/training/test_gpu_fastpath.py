"""The fast path in real training, on CUDA: CUDA graphs with augmentation and labels from the data, a construction-
time refusal of what cannot be captured, and two GPUs (NCCL) keeping bit-identical replicas under graphs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, FakeScore, OneStepGenerator, SiDLoss
from scoredistill.data.augment import AugmentPipe
from scoredistill.losses.functional import adversarial_discriminator_loss
from scoredistill.roles.precond import edm_precond
from scoredistill.roles.teacher import Teacher
from scoredistill.training.fast import StepGraphs, use_fused_norms

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _labelled_stream(batch: int, seed: int = 0, device: str = "cuda"):
    g = torch.Generator(device).manual_seed(seed)
    while True:
        x = torch.rand(batch, 3, 32, 32, device=device, generator=g) * 2 - 1
        labels = torch.nn.functional.one_hot(torch.randint(10, (batch,), device=device, generator=g), 10).float()
        yield x, labels


def _distiller(
    graphs: bool, *, p: float = 0.5, precision: str = "fp32", device: str = "cuda", losses=None, total_nimg=500_000_000
):
    torch.manual_seed(0)
    teacher = Teacher(edm_precond("cifar10-32x32-cond").to(device))  # conditional, augment_dim = 9
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    losses = losses or [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=48)]
    cfg = DistillConfig.sida(
        batch_size=8,
        micro_batch=4,
        generator_start_nimg=24,
        precision=precision,
        cuda_graphs=graphs,
        total_nimg=total_nimg,
    )
    return Distiller(teacher, G, fake, losses, cfg, data=_labelled_stream(4), augment=AugmentPipe(p=p))


def test_augment_pipe_capture_replays_the_eager_draws(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as the examples: no autotuning inside capture
    pipe = AugmentPipe(p=0.8)
    x = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    rng = torch.Generator("cuda")
    eager = [pipe(x, rng=rng.manual_seed(s)) for s in (1, 2)]
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(rng)
    rng.manual_seed(0)
    with torch.cuda.graph(graph):
        out = pipe(x, rng=rng)
    for s, (ex, elabels) in zip((1, 2), eager):
        rng.manual_seed(s)
        graph.replay()
        assert torch.equal(out[1], elabels)  # the same draws
        torch.testing.assert_close(out[0], ex, atol=1e-4, rtol=0)  # fixed vs batch-sized padding: rounding only
        assert (elabels[:, 2:] != 0).any()


def test_graphs_with_augmentation_and_data_labels_repeat_the_eager_trace():
    # Warm-up regime, SiD, SiD + adversarial; labels from the data, augmented fake and real images, two rounds.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    traces = []
    for graphs in (False, True):
        d = _distiller(graphs)
        if not graphs:
            for role in (d.teacher, d.generator, d.fake_score):
                use_fused_norms(role, None)
        # Three steps per regime (nimg 0-16, 24-40, 48-72): two eager warm-ups, then the capture and replays.
        traces.append([{k: float(v) for k, v in d.step().items()} for _ in range(10)])
        if graphs:
            assert len(d.graphs.entries) == 3  # one graph per regime, all captured with augmentation on
    for step, (a, b) in enumerate(zip(*traces)):
        assert a.keys() == b.keys(), step
        for k in a:
            tol = {"abs": 5e-3} if "acc" in k or "frac" in k else {"rel": 2e-3, "abs": 1e-5}
            assert a[k] == pytest.approx(b[k], **tol), (step, k)


def test_bf16_graphs_with_recipe_augmentation_are_finite():
    d = _distiller(True, p=0.12, precision="bf16")
    logs = [d.step() for _ in range(6)]
    assert all(torch.isfinite(v) for log in logs for v in log.values())


class _SyncingAugment:
    """An augmentation that reads a value on the host: it cannot be captured."""

    def __call__(self, x, rng=None):
        if float(x.abs().max()) > 1e9:
            x = x.clamp(-1, 1)
        return x, torch.zeros(x.shape[0], 9, device=x.device)


def test_uncapturable_augmentation_is_refused_at_construction():
    torch.manual_seed(0)
    teacher = Teacher(edm_precond("cifar10-32x32-cond").cuda())
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    cfg = DistillConfig.sida(batch_size=4, generator_start_nimg=0, precision="bf16", cuda_graphs=True)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), AdversarialEncoderLoss(generator_start_nimg=0)]
    with pytest.raises(ValueError, match="cannot be captured in a CUDA graph"):
        Distiller(teacher, G, fake, losses, cfg, data=_labelled_stream(4), augment=_SyncingAugment())
    # The failed probe leaves the process's random generators usable: eager draws and a later graphed run work
    # (a failed capture used to leave the default generator mid-capture: "Offset increment outside graph capture").
    assert torch.isfinite(torch.rand(4, device="cuda")).all()
    d = _distiller(True, p=0.12, precision="bf16")
    assert all(torch.isfinite(v).all() for _ in range(4) for v in d.step().values())


def test_in_training_fid_of_a_captured_run_samples_every_evaluation_afresh(tmp_path):
    """FIDMetric and its held-out companion share one set of samples per evaluation, and every evaluation of a
    captured run samples the generator as it is then (a cache keyed by version counters, which a graph's replayed
    update leaves alone, gave the first evaluation's value at every later one)."""
    from scoredistill.metrics import FeatureStats, FIDMetric
    from scoredistill.training.monitor import read_stats

    projection = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0)).cuda()
    calls = []

    def extractor(images: torch.Tensor) -> torch.Tensor:  # uint8 [B, 3, 32, 32] -> [B, 16]
        calls.append(images.shape[0])
        return torch.nn.functional.avg_pool2d(images.float() / 127.5 - 1, 4).flatten(1) @ projection

    refs = []
    for seed in (1, 2):
        ref = FeatureStats()
        ref.update(torch.randn(256, 16, generator=torch.Generator().manual_seed(seed)))
        refs.append(ref)
    metric = FIDMetric(refs[0], n=64, extractor=extractor, batch_size=64, name="fid")
    d = _distiller(True, p=0.12, precision="bf16", total_nimg=96)
    d.run(run_dir=tmp_path, metrics=[metric, metric.against(refs[1], name="fid_test")], eval_every_nimg=32,
          progress=False)  # fmt: skip
    evals = [r for r in read_stats(tmp_path / "stats.jsonl") if "fid" in r]
    assert [r["nimg"] for r in evals] == [0, 32, 64, 96] and calls == [64] * 4
    assert len({r["fid"] for r in evals}) == 4 and len({r["fid_test"] for r in evals}) == 4


def test_failed_step_capture_leaves_generators_usable():
    rng = torch.Generator("cuda").manual_seed(0)
    graphs = StepGraphs([rng], warmup=0)

    def syncing(inputs):
        x = torch.randn(8, device="cuda", generator=rng) + torch.rand(8, device="cuda")
        return {"x": x * float(x.sum())}  # a host read: cannot be captured

    with pytest.raises(RuntimeError, match="capturing the iteration"):
        graphs.run("regime", syncing, [], lambda: None)
    assert torch.isfinite(torch.rand(4, device="cuda")).all()
    assert torch.isfinite(torch.randn(4, device="cuda", generator=rng)).all()


# -- two GPUs -----------------------------------------------------------------------------------------------------


class _RecordingAdv(AdversarialEncoderLoss):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records: list[dict] = []

    def fake_score_loss(self, ev):
        out = super().fake_score_loss(ev)
        # Under graphs these are the captured buffers: clone their values right after each replay instead.
        self.records.append({"real": ev.logits_real, "fake": ev.logits_fake, "sigma": ev.fake.sigma, "loss": out.loss})
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initialisations: the Distiller broadcasts rank 0's
        teacher = Teacher(edm_precond("cifar10-32x32-cond").cuda())
        G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
        adv = _RecordingAdv(generator_start_nimg=0)
        losses = [SiDLoss(alpha=1.0), DSMLoss(), adv]
        cfg = DistillConfig.sida(
            batch_size=8, micro_batch=4, generator_start_nimg=0, precision="bf16", cuda_graphs=True, channels_last=True
        )
        d = Distiller(teacher, G, fake, losses, cfg, data=_labelled_stream(4, seed=rank), augment=AugmentPipe(p=0.12))
        checks = []
        for _ in range(6):
            d.step()
            r = adv.records[-2:]  # this step's two rounds (the captured buffers hold the last replay's values)
            for rec in r:
                own = adversarial_discriminator_loss(rec["real"], rec["fake"], rec["sigma"])
                checks.append(bool(torch.allclose(rec["loss"], own, rtol=1e-4, atol=1e-6)))
        torch.cuda.synchronize()
        d.check_replicas()
        params = {name: [t.detach().cpu().clone() for t in m.parameters()] for name, m in d._modules().items()}
        torch.save({"params": params, "checks": checks, "graphs": len(d.graphs.entries)}, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_graphs_keep_bit_identical_replicas(tmp_path):
    torch.multiprocessing.spawn(_nccl_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["graphs"] == 1  # the whole SiDA iteration, all-reduces included, ran as a captured graph
    for name in ("generator", "generator_ema", "fake_score"):
        for a, b in zip(ranks[0]["params"][name], ranks[1]["params"][name]):
            assert torch.equal(a, b), name
    assert all(ranks[0]["checks"]) and all(ranks[1]["checks"])  # l_D over each process's own batch
