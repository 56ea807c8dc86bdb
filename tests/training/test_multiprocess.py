"""Two processes (gloo, CPU): identical replicas, bucketed gradient averaging, per-process adversarial
normalisation, and resuming with another number of processes. ``test_gpu_fastpath.py`` repeats the replica check
on two GPUs with NCCL and CUDA graphs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scoredistill import AdversarialEncoderLoss, DistillConfig, Distiller, DSMLoss, FakeScore, OneStepGenerator, SiDLoss
from scoredistill.data.augment import AUGMENT_DIM, AugmentPipe
from scoredistill.losses.functional import adversarial_discriminator_loss
from scoredistill.networks.toy import TinyUNet
from scoredistill.roles.precond import Precond
from scoredistill.roles.teacher import Teacher

WORLD, BATCH, MICRO = 2, 4, 2  # per process: two accumulation rounds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingAdv(AdversarialEncoderLoss):
    """SiDA's adversarial loss, keeping its fake-score-phase inputs and output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records: list[dict[str, torch.Tensor]] = []

    def fake_score_loss(self, ev):
        out = super().fake_score_loss(ev)
        keep = {"real": ev.logits_real, "fake": ev.logits_fake, "sigma": ev.fake.sigma, "loss": out.loss}
        self.records.append({k: v.detach().float().cpu().clone() for k, v in keep.items()})
        return out


def _stream(batch: int, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1
        y = torch.nn.functional.one_hot(torch.randint(3, (batch,), generator=g), 3).float()
        yield x.to(device), y.to(device)


def build(init_seed: int, batch: int = BATCH, data_seed: int = 0, device: str = "cpu", **cfg) -> Distiller:
    """A conditional, augmented SiDA distiller on 8x8 images; ``init_seed`` sets its random initialisation."""
    torch.manual_seed(init_seed)
    net = TinyUNet(img_channels=1, channels=8, label_dim=3, augment_dim=AUGMENT_DIM)
    teacher = Teacher(Precond(net, label_dim=3, augment_dim=AUGMENT_DIM).to(device), sample_shape=(1, 8, 8))
    G, fake = OneStepGenerator.from_teacher(teacher), FakeScore.from_teacher(teacher)
    losses = [SiDLoss(alpha=1.0), DSMLoss(), RecordingAdv(generator_start_nimg=0)]
    config = DistillConfig.sida(batch_size=batch, micro_batch=MICRO, generator_start_nimg=0, total_nimg=10**6, **cfg)
    data = _stream(MICRO, data_seed, device)
    return Distiller(teacher, G, fake, losses, config, data=data, augment=AugmentPipe(p=0.5))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared machine: threads would oversubscribe the cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        d = build(init_seed=rank, data_seed=100 + rank)  # different initialisations: rank 0's is broadcast
        grads = []
        finish = d.averagers["f"].finish

        def spy():  # the fake-score gradients before and after averaging
            before = [p.grad.clone() for p in d.f_params]
            finish()
            grads.append((before, [p.grad.clone() for p in d.f_params]))

        d.averagers["f"].finish = spy
        for _ in range(3):
            d.step()
        d.check_replicas()
        with torch.no_grad():  # the check can fail: one differing bit on one rank
            p = next(d.fake_score.parameters())
            p.view(torch.int32).flatten()[0] ^= rank
        try:
            d.check_replicas()
            tamper_caught = False
        except RuntimeError as e:
            tamper_caught = "fake_score." in str(e)
        with torch.no_grad():
            p.view(torch.int32).flatten()[0] ^= rank
        if rank == 0:
            d.save(Path(out) / "ckpt")
        params = {name: [t.clone() for t in m.parameters()] for name, m in d._modules().items()}
        records = d.losses[2].records
        torch.save({"grads": grads, "params": params, "records": records, "caught": tamper_caught, "nimg": d.nimg},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster than contended ones
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp")
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_replicas_stay_bit_identical_and_the_check_can_fail(two_process_run):
    _, ranks = two_process_run
    for name in ranks[0]["params"]:  # generator, generator_ema, fake_score (each rank started from other weights)
        for a, b in zip(ranks[0]["params"][name], ranks[1]["params"][name]):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name
    assert all(r["caught"] for r in ranks)  # rank 1 flipped one bit; every rank sees it (a collective check)


def test_bucketed_averaging_is_the_mean_of_the_ranks_gradients(two_process_run):
    _, ranks = two_process_run
    for step in range(3):
        (before0, after0), (before1, after1) = ranks[0]["grads"][step], ranks[1]["grads"][step]
        for b0, b1, a0, a1 in zip(before0, before1, after0, after1):
            assert torch.equal(a0, a1)
            torch.testing.assert_close(a0, (b0 + b1) / 2, rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(b0, b1) for b0, b1 in zip(before0, before1))  # the ranks' batches differ


def test_adversarial_term_is_normalised_over_each_process_batch(two_process_run):
    # SiDA-2: l_D is one scalar per process, the mean over that process's own (micro-)batch; not over all ranks.
    _, ranks = two_process_run
    for r0, r1 in zip(ranks[0]["records"], ranks[1]["records"]):
        for own, other in ((r0, r1), (r1, r0)):
            assert own["real"].shape[0] == MICRO
            expected = adversarial_discriminator_loss(own["real"], own["fake"], own["sigma"])
            torch.testing.assert_close(own["loss"], expected)
            pooled = adversarial_discriminator_loss(
                torch.cat([own["real"], other["real"]]),
                torch.cat([own["fake"], other["fake"]]),
                torch.cat([own["sigma"], other["sigma"]]),
            )[:MICRO]
            assert not torch.allclose(own["loss"], pooled)  # normalising over both processes would differ


def test_resume_on_one_process_from_a_two_process_checkpoint(two_process_run):
    out, ranks = two_process_run
    d = build(init_seed=7, batch=WORLD * BATCH)  # same global batch, one process
    d.load(out / "ckpt")
    assert d.nimg == ranks[0]["nimg"]
    for a, b in zip(d.generator.parameters(), ranks[0]["params"]["generator"]):
        assert torch.equal(a, b)
    logs = d.step()
    assert all(torch.isfinite(v) for v in logs.values())


def test_resume_with_another_global_batch_is_refused(two_process_run):
    out, _ = two_process_run
    d = build(init_seed=7, batch=BATCH)  # one process x 4 images, the checkpoint had 2 x 4
    with pytest.raises(ValueError, match=r"global batch of 8.*1 x 4"):
        d.load(out / "ckpt")
