"""In-training evaluation and run logs: stats.jsonl, sample grids, best and last generators, resume."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_image_roles
from scoredistill import DistillConfig, Distiller, DSMLoss, OneStepGenerator, SiDLoss
from scoredistill.training.monitor import GeneratorMetric, RunLog, read_stats


class ScriptedMetric:
    """Returns the next value of a script at each call and records which generator weights it saw."""

    name = "score"

    def __init__(self, values):
        self.values, self.calls, self.seen = list(values), 0, []

    def __call__(self, generator: OneStepGenerator) -> float:
        self.seen.append([p.detach().clone() for p in generator.parameters()])
        value = self.values[self.calls]
        self.calls += 1
        return value


def _distiller(total_nimg=32, seed=0):
    teacher, G, fake = tiny_image_roles(seed=0)
    config = DistillConfig(batch_size=4, total_nimg=total_nimg, seed=seed, lr_generator=1e-3, lr_fake_score=1e-3)
    return Distiller(teacher, G, fake, [SiDLoss(), DSMLoss()], config)


def test_scripted_metric_is_a_generator_metric():
    assert isinstance(ScriptedMetric([1.0]), GeneratorMetric)


def test_run_evaluates_keeps_best_and_last_and_logs(tmp_path):
    d = _distiller(total_nimg=40)
    metric = ScriptedMetric([7.0, 5.0, 3.0, 4.0, 6.0, 9.0])
    d.run(run_dir=tmp_path, log_every_nimg=8, metric=metric, eval_every_nimg=12, progress=False)
    # Evaluations at the start, at 12, 24, 36 images (the first step past each multiple) and at the end (40).
    assert metric.calls == 5
    records = read_stats(tmp_path / "stats.jsonl")
    evals = [r for r in records if "score" in r]
    assert [r["nimg"] for r in evals] == [0, 12, 24, 36, 40]
    assert [r["score"] for r in evals] == [7.0, 5.0, 3.0, 4.0, 6.0]
    assert [r["score_best"] for r in evals] == [7.0, 5.0, 3.0, 3.0, 3.0]
    assert all(r["eval_s"] >= 0 for r in evals[1:])
    logs = [r for r in records if "images_per_s" in r]
    assert [r["nimg"] for r in logs] == [8, 16, 24, 32, 40]
    assert all("sid/generator_loss" in r and r["images_per_s"] > 0 for r in logs)
    # The best generator is the EMA as it was at the second evaluation, the last one as it is now.
    best = OneStepGenerator.from_pretrained(tmp_path / "generator_best")
    last = OneStepGenerator.from_pretrained(tmp_path / "generator_last")
    for p, q in zip(best.parameters(), metric.seen[2]):
        assert torch.equal(p, q)
    for p, q in zip(last.parameters(), d.ema.module.parameters()):
        assert torch.equal(p, q)
    assert json.loads((tmp_path / "generator_best" / "config.json").read_text())["training"]["nimg"] == 24
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["000000kimg.png"]  # named by kimg


def test_sample_grids_use_fixed_seeds(tmp_path):
    d = _distiller(total_nimg=2000)
    d.nimg = 1000
    d.evaluate(ScriptedMetric([1.0]), tmp_path)
    first = (tmp_path / "samples" / "000001kimg.png").read_bytes()
    d.nimg = 2000
    d.evaluate(ScriptedMetric([2.0]), tmp_path)
    assert (tmp_path / "samples" / "000002kimg.png").read_bytes() == first  # same EMA, same seeds, same picture
    assert d.best == (1000, 1.0)


def test_best_survives_resume(tmp_path):
    d = _distiller(total_nimg=24)
    d.run(run_dir=tmp_path, metric=ScriptedMetric([3.0, 2.0, 1.0]), eval_every_nimg=12, progress=False)
    assert d.best == (24, 1.0)
    resumed = _distiller(total_nimg=48)
    resumed.load(tmp_path / "training_state")
    assert resumed.best == (24, 1.0)
    # A worse value after the resume keeps the best artefact from before it.
    resumed.run(run_dir=tmp_path, metric=ScriptedMetric([1.5, 1.7]), eval_every_nimg=12, progress=False)
    assert resumed.best == (24, 1.0)
    config = json.loads((tmp_path / "generator_best" / "config.json").read_text())
    assert config["training"]["nimg"] == 24 and config["training"]["score"] == 1.0
    evals = [r for r in read_stats(tmp_path / "stats.jsonl") if "score" in r]
    assert [r["nimg"] for r in evals] == [0, 12, 24, 36, 48]  # no second start-of-run evaluation on resume
    times = [r["time_s"] for r in read_stats(tmp_path / "stats.jsonl")]
    assert times == sorted(times)  # the clock continues across the resume


def test_non_finite_metric_is_never_best(tmp_path):
    d = _distiller()
    assert d.evaluate(ScriptedMetric([float("nan")]), tmp_path)["score_best"] != 0.0
    assert d.best is None and not (tmp_path / "generator_best").exists()
    assert (tmp_path / "generator_last").is_dir()


def test_metric_needs_an_interval():
    with pytest.raises(ValueError, match="eval_every_nimg"):
        _distiller().run(metric=ScriptedMetric([1.0]), progress=False)


def test_run_log_writes_strict_json_and_skips_a_cut_line(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.write(10, {"a": 1.0, "b": float("inf")})
    log.close()
    with (tmp_path / "stats.jsonl").open("a") as f:
        f.write('{"nimg": 20, "a"')  # a kill during a write
    records = read_stats(tmp_path / "stats.jsonl")
    assert records == [{"nimg": 10, "time_s": records[0]["time_s"], "a": 1.0, "b": None}]
    (tmp_path / "bad.jsonl").write_text('{"nimg": 1}\nnot json\n{"nimg": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_stats(tmp_path / "bad.jsonl")


def test_run_log_writes_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard scalars need the tensorboard package")
    log = RunLog(tmp_path, tensorboard=True)
    log.write(5, {"loss": 0.5})
    log.close()
    assert any((tmp_path / "tensorboard").iterdir())


def test_fid_metric_in_training_with_a_stand_in_extractor(tmp_path):
    """FIDMetric scores the EMA against reference statistics; the best artefact is kept and survives a resume."""
    from scoredistill.metrics import FeatureStats, FIDMetric

    projection = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))

    def extractor(images: torch.Tensor) -> torch.Tensor:  # uint8 [B, 3, 8, 8] -> [B, 16]
        return (images[:, :1].float() / 127.5 - 1).flatten(1) @ projection

    reference = FeatureStats()
    reference.update(extractor((torch.rand(256, 3, 8, 8) * 255).to(torch.uint8)))
    metric = FIDMetric(reference, n=64, extractor=extractor, batch_size=32)
    assert metric.name == "fid64" and isinstance(metric, GeneratorMetric)
    d = _distiller(total_nimg=16)
    d.run(run_dir=tmp_path, metric=metric, eval_every_nimg=8, progress=False)
    evals = [r for r in read_stats(tmp_path / "stats.jsonl") if "fid64" in r]
    assert [r["nimg"] for r in evals] == [0, 8, 16] and all(r["fid64"] > 0 for r in evals)
    assert metric(d.ema.module) == evals[-1]["fid64"]  # same seeds, same generator: same value
    assert d.best[1] == min(r["fid64"] for r in evals)
    resumed = _distiller(total_nimg=24)
    resumed.load(tmp_path / "training_state")
    assert resumed.best == d.best
    assert OneStepGenerator.from_pretrained(tmp_path / "generator_best").sample_shape == (1, 8, 8)


def test_fid_against_a_second_reference_shares_the_samples(tmp_path):
    """metric.against(other): the same samples' FID against a held-out set, their features computed once per
    evaluation; a changed generator (an in-place update) is sampled afresh."""
    from scoredistill.metrics import FeatureStats, FIDMetric, frechet_distance

    projection = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    calls = []

    def extractor(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return (images[:, :1].float() / 127.5 - 1).flatten(1) @ projection

    refs = []
    for seed in (1, 2):
        ref = FeatureStats()
        ref.update(torch.randn(256, 16, generator=torch.Generator().manual_seed(seed)) * 3)
        refs.append(ref)
    metric = FIDMetric(refs[0], n=64, extractor=extractor, batch_size=32)
    held_out = metric.against(refs[1], name="fid64_test")
    with pytest.raises(ValueError, match="a name of its own"):
        metric.against(refs[1], name="fid64")
    d = _distiller(total_nimg=16)
    d.run(run_dir=tmp_path, metrics=[metric, held_out], eval_every_nimg=8, progress=False)
    evals = [r for r in read_stats(tmp_path / "stats.jsonl") if "fid64" in r]
    assert [r["nimg"] for r in evals] == [0, 8, 16] and all(r["fid64"] != r["fid64_test"] for r in evals)
    assert calls == [32, 32] * 3  # one set of samples per evaluation, for both references
    generator = d.ema.module
    stats = metric._samples(generator)
    assert held_out(generator) == pytest.approx(frechet_distance(stats, refs[1])) and calls == [32, 32] * 3
    with torch.no_grad():
        next(generator.parameters()).add_(0.5)  # an in-place update: a new state
    assert held_out(generator) != evals[-1]["fid64_test"] and calls == [32, 32] * 4
    # A write that leaves the version counter alone (as a CUDA graph's replayed update does) is a new state too.
    version = next(generator.parameters())._version
    next(generator.parameters()).data.mul_(0.5)
    assert next(generator.parameters())._version == version
    assert metric(generator) != pytest.approx(frechet_distance(stats, refs[0])) and calls == [32, 32] * 5
    assert held_out(generator) == pytest.approx(frechet_distance(metric._samples(generator), refs[1]))
    assert calls == [32, 32] * 5


def test_a_metric_that_repeats_itself_after_training_is_warned_about(tmp_path):
    """A value identical to the previous evaluation's after the generator trained is a stale cache's signature."""
    d = _distiller(total_nimg=24)
    with pytest.warns(RuntimeWarning, match=r"score returned exactly the value of the evaluation at 12 images"):
        d.run(run_dir=tmp_path, metric=ScriptedMetric([7.0, 5.0, 5.0]), eval_every_nimg=12, progress=False)
    d.evaluate(ScriptedMetric([5.0]))  # the same images again: nothing trained, nothing to warn about
    assert d._last_values == (24, {"score": 5.0})


class HigherIsBetter(ScriptedMetric):
    name, higher_is_better = "recall", True


def test_run_takes_several_metrics_and_keeps_the_best_by_the_first(tmp_path):
    d = _distiller(total_nimg=40)
    recall = HigherIsBetter([0.2, 0.5, 0.4, 0.7, 0.6])
    score = ScriptedMetric([9.0, 1.0, 2.0, 3.0, 4.0])  # would pick the second evaluation if it decided
    d.run(run_dir=tmp_path, log_every_nimg=8, metrics=[recall, score], eval_every_nimg=12, progress=False)
    evals = [r for r in read_stats(tmp_path / "stats.jsonl") if "recall" in r]
    assert [(r["recall"], r["score"]) for r in evals] == [(0.2, 9.0), (0.5, 1.0), (0.4, 2.0), (0.7, 3.0), (0.6, 4.0)]
    assert [r["recall_best"] for r in evals] == [0.2, 0.5, 0.5, 0.7, 0.7]  # higher is better: the first decides
    assert all("score_best" not in r for r in evals)
    assert d.best == (36, 0.7)
    best = OneStepGenerator.from_pretrained(tmp_path / "generator_best")
    for p, q in zip(best.parameters(), recall.seen[3]):
        assert torch.equal(p, q)


def test_run_refuses_ambiguous_metric_arguments():
    d = _distiller()
    with pytest.raises(ValueError, match="not both"):
        d.run(metric=ScriptedMetric([1.0]), metrics=[ScriptedMetric([1.0])], eval_every_nimg=8, progress=False)
    with pytest.raises(ValueError, match="must differ"):
        d.run(metrics=[ScriptedMetric([1.0]), ScriptedMetric([1.0])], eval_every_nimg=8, progress=False)
    with pytest.raises(TypeError, match="not a GeneratorMetric"):
        d.run(metrics=[lambda g: 1.0], eval_every_nimg=8, progress=False)
    with pytest.raises(ValueError, match="eval_every_nimg"):
        d.run(metrics=[ScriptedMetric([1.0])], progress=False)
    assert d.nimg == 0  # refused before any step
