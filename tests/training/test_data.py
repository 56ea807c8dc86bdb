"""Tests for scoredistill.data: EDM-style dataset zips, the resumable real-batch iterator, teacher pairing."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="Pillow (the 'data' extra) is needed to decode images")
from PIL import Image

from helpers import REPO_ROOT, TINY_ZIP
from scoredistill.data import DatasetError, ImageZipDataset, check_compatible, real_batches

FIXTURE = TINY_ZIP
DATA_DIR = Path(os.environ.get("SCOREDISTILL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, images: dict[str, bytes], labels: object = "absent") -> Path:
    """Write an EDM-style zip; ``labels`` is a list of pairs, ``None`` (JSON null) or ``"absent"`` (no json)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in images.items():
            archive.writestr(name, data)
        if labels != "absent":
            archive.writestr("dataset.json", json.dumps({"labels": labels}))
    return path


def rgb(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> ImageZipDataset:
    return ImageZipDataset(FIXTURE)


# ImageZipDataset on the committed CIFAR-10 fixture.
def test_fixture_metadata(tiny: ImageZipDataset) -> None:
    assert len(tiny) == 200
    assert tiny.image_shape == (3, 32, 32) and tiny.resolution == 32 and tiny.num_channels == 3
    assert tiny.label_dim == 10 and tiny.has_labels
    with zipfile.ZipFile(FIXTURE) as archive:
        expected = dict(json.loads(archive.read("dataset.json"))["labels"])
    assert tiny.labels.tolist() == [expected[name] for name in tiny.names]
    assert tiny.labels[0].item() == 3  # the first CIFAR-10 test image is a cat


def test_fixture_pixels_exact(tiny: ImageZipDataset) -> None:
    image, label = tiny[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and isinstance(label, int)
    with zipfile.ZipFile(FIXTURE) as archive:
        reference = np.array(Image.open(io.BytesIO(archive.read(tiny.names[5]))).convert("RGB"))
    assert torch.equal(image, torch.from_numpy(reference).permute(2, 0, 1))


def test_normalize_maps_to_minus_one_one(tiny: ImageZipDataset) -> None:
    normalized = ImageZipDataset(FIXTURE, normalize=True)
    x, _ = normalized[0]
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, tiny[0][0].float() / 127.5 - 1)


def test_max_size_and_use_labels() -> None:
    ds = ImageZipDataset(FIXTURE, max_size=10, use_labels=False)
    assert len(ds) == 10 and ds.label_dim == 0 and not ds.has_labels and ds.labels is None
    assert ds[3][1] == -1
    assert ImageZipDataset(FIXTURE, max_size=10).label_dim == 10  # classes counted over the whole archive
    with pytest.raises(ValueError, match="max_size"):
        ImageZipDataset(FIXTURE, max_size=0)


def test_label_dim_override() -> None:
    assert ImageZipDataset(FIXTURE, label_dim=12).label_dim == 12
    with pytest.raises(DatasetError, match="class indices up to 9"):
        ImageZipDataset(FIXTURE, label_dim=5)


def test_pickle_and_threads_read_the_same(tiny: ImageZipDataset) -> None:
    clone = pickle.loads(pickle.dumps(tiny))
    assert torch.equal(clone[7][0], tiny[7][0])
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda i: tiny[i][0], range(64)))
    assert all(torch.equal(a, tiny[i][0]) for i, a in enumerate(threaded))


def test_missing_pillow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install Pillow .*pip install -e '\.\[data\]'"):
        ImageZipDataset(FIXTURE)


# Validation on archives built in tmp_path.
def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.zip"
    with pytest.raises(FileNotFoundError, match=r"nope\.zip"):
        ImageZipDataset(missing)


def test_corrupt_zip(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.zip"
    path.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(DatasetError, match="not a readable zip"):
        ImageZipDataset(path)


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "d.zip", {"a.png": _png(rgb(0)), "b.png": b"garbage"})
    ds = ImageZipDataset(path)
    with pytest.raises(DatasetError, match=r"b\.png"):
        ds[1]
    with pytest.raises(DatasetError, match=r"b\.png"):
        ds.verify()


def test_no_images(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "d.zip", {"readme.txt": b"hi"}, labels=None)
    with pytest.raises(DatasetError, match="no image files"):
        ImageZipDataset(path)


def test_labels_missing_for_some_files(tmp_path: Path) -> None:
    images = {f"{i:02d}.png": _png(rgb(i)) for i in range(3)}
    path = make_zip(tmp_path / "d.zip", images, labels=[["00.png", 0], ["01.png", 1]])
    with pytest.raises(DatasetError, match=r"no label for 1 of 3 images.*02\.png"):
        ImageZipDataset(path)
    assert ImageZipDataset(path, use_labels=False).label_dim == 0


def test_labels_for_files_not_in_archive(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "d.zip", {"0.png": _png(rgb(0))}, labels=[["0.png", 0], ["ghost.png", 1]])
    with pytest.raises(DatasetError, match=r"ghost\.png"):
        ImageZipDataset(path)


@pytest.mark.parametrize("labels", [None, "absent"])
def test_unconditional(tmp_path: Path, labels: object) -> None:
    path = make_zip(tmp_path / "d.zip", {"0.png": _png(rgb(0)), "1.png": _png(rgb(1))}, labels=labels)
    ds = ImageZipDataset(path)
    assert ds.label_dim == 0 and not ds.has_labels and ds[1][1] == -1


@pytest.mark.parametrize(
    ("content", "match"),
    [("{", "not valid JSON"), ('{"labels": [["0.png", -1]]}', "non-negative"), ('{"labels": 3}', "list")],
)
def test_malformed_dataset_json(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("0.png", _png(rgb(0)))
        archive.writestr("dataset.json", content)
    with pytest.raises(DatasetError, match=match):
        ImageZipDataset(path)


def test_mixed_sizes_name_the_file(tmp_path: Path) -> None:
    images = {"a.png": _png(rgb(0)), "b.png": _png(rgb(1, (8, 16))), "c.png": _png(rgb(2))}
    path = make_zip(tmp_path / "d.zip", images)
    ds = ImageZipDataset(path)
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(DatasetError, match=r"b\.png is 16x8"):
        ds[1]
    with pytest.raises(DatasetError, match=r"b\.png"):
        ImageZipDataset(path, verify=True)


def test_mixed_channels_name_the_file(tmp_path: Path) -> None:
    grey = np.zeros((8, 8), dtype=np.uint8)
    path = make_zip(tmp_path / "d.zip", {"a.png": _png(rgb(0)), "b.png": _png(grey)})
    with pytest.raises(DatasetError, match=r"b\.png .*1 channel"):
        ImageZipDataset(path, verify=True)


def test_greyscale_is_one_channel(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = make_zip(tmp_path / "d.zip", {"a.png": _png(grey)}, labels=[["a.png", 4]])
    ds = ImageZipDataset(path)
    image, label = ds[0]
    assert image.shape == (1, 8, 8) and label == 4 and ds.label_dim == 5
    assert torch.equal(image[0], torch.from_numpy(grey))


def test_non_square_resolution(tmp_path: Path) -> None:
    ds = ImageZipDataset(make_zip(tmp_path / "d.zip", {"a.png": _png(rgb(0, (8, 16)))}))
    assert ds.image_shape == (3, 8, 16)
    with pytest.raises(DatasetError, match="non-square"):
        _ = ds.resolution


# check_compatible.
def test_check_compatible(tiny: ImageZipDataset, tmp_path: Path) -> None:
    check_compatible(tiny, resolution=32, channels=3, label_dim=10)
    check_compatible(tiny, resolution=(32, 32), channels=3, label_dim=0)  # labels ignored by an uncond teacher
    with pytest.raises(ValueError, match=r"resolution: dataset images are 32x32, the teacher expects 64x64"):
        check_compatible(tiny, resolution=64, channels=3, label_dim=10)
    with pytest.raises(ValueError, match=r"channels.*3.*1") as info:
        check_compatible(tiny, resolution=28, channels=1, label_dim=1000)
    assert "resolution" in str(info.value) and "labels" not in str(info.value)  # 10 classes fit in 1000
    with pytest.raises(ValueError, match=r"labels: the dataset has class indices up to 9, beyond the teacher's 5"):
        check_compatible(tiny, resolution=32, channels=3, label_dim=5)
    uncond = ImageZipDataset(FIXTURE, use_labels=False)
    with pytest.raises(ValueError, match="no labels"):
        check_compatible(uncond, resolution=32, channels=3, label_dim=10)


# real_batches.
def test_real_batches_shapes_and_range(tiny: ImageZipDataset) -> None:
    x_real, labels = next(real_batches(tiny, 16, seed=0))
    assert x_real.shape == (16, 3, 32, 32) and x_real.dtype == torch.float32
    assert x_real.min() >= -1 and x_real.max() <= 1
    assert labels.shape == (16, 10) and labels.dtype == torch.float32
    assert torch.equal(labels.sum(1), torch.ones(16))
    x_uncond, none = next(real_batches(tiny, 4, label_dim=0))
    assert none is None and x_uncond.shape == (4, 3, 32, 32)


def test_real_batches_epoch_is_a_permutation(tiny: ImageZipDataset) -> None:
    batches = real_batches(tiny, 50, seed=3)
    every = torch.stack([tiny[i][0] for i in range(len(tiny))]).flatten(1)
    seen = []
    for _ in range(4):
        x_real, labels = next(batches)
        as_uint8 = ((x_real + 1) * 127.5).round().to(torch.uint8).flatten(1)
        index = (as_uint8[:, None] == every[None]).all(-1).int().argmax(1)
        assert torch.equal(labels.argmax(1), tiny.labels[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(200))
    assert batches.state_dict()["epoch"] == 1 and batches.state_dict()["position"] == 0


def test_real_batches_deterministic_and_seeded(tiny: ImageZipDataset) -> None:
    a, b, c = (real_batches(tiny, 8, seed=s) for s in (1, 1, 2))
    xa, xb, xc = next(a)[0], next(b)[0], next(c)[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)


def test_real_batches_resume(tiny: ImageZipDataset) -> None:
    reference = real_batches(tiny, 64, seed=5)
    trace = [next(reference) for _ in range(7)]  # crosses two epoch boundaries (3 batches per epoch)
    first = real_batches(tiny, 64, seed=5)
    for _ in range(4):
        next(first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert state == {"seed": 5, "epoch": 1, "position": 64, "num_images": 200}
    resumed = real_batches(tiny, 64, seed=0)
    resumed.load_state_dict(state)
    for expected_x, expected_labels in trace[4:]:
        x_real, labels = next(resumed)
        assert torch.equal(x_real, expected_x) and torch.equal(labels, expected_labels)
    with pytest.raises(ValueError, match="200 images"):
        real_batches(ImageZipDataset(FIXTURE, max_size=100), 8).load_state_dict(state)


def test_real_batches_workers_match_main_process(tiny: ImageZipDataset) -> None:
    main = real_batches(tiny, 32, seed=7)
    workers = real_batches(tiny, 32, seed=7, num_workers=2)
    for _ in range(3):
        assert torch.equal(next(main)[0], next(workers)[0])
    assert workers.state_dict() == main.state_dict()  # prefetching does not advance the state
    workers.close()


def test_real_batches_leave_global_rng_alone(tiny: ImageZipDataset) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(real_batches(tiny, 8))
    assert torch.equal(torch.rand(3), expected)


def test_real_batches_drop_last_false(tiny: ImageZipDataset) -> None:
    batches = real_batches(tiny, 64, seed=0, drop_last=False)
    sizes = [next(batches)[0].shape[0] for _ in range(5)]
    assert sizes == [64, 64, 64, 8, 64]


def test_real_batches_argument_checks(tiny: ImageZipDataset) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        real_batches(tiny, 500)
    with pytest.raises(ValueError, match="no labels"):
        real_batches(ImageZipDataset(FIXTURE, use_labels=False), 8, label_dim=10)
    with pytest.raises(ValueError, match="label_dim=5"):
        next(real_batches(tiny, 200, label_dim=5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_batches_cuda(tiny: ImageZipDataset) -> None:
    x_real, labels = next(real_batches(tiny, 8, device="cuda"))
    assert x_real.is_cuda and labels.is_cuda


# The large archives in ../shared/data (or $SCOREDISTILL_DATA_DIR).
def _archive(name: str) -> Path:
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"{name} not found in {DATA_DIR} (set SCOREDISTILL_DATA_DIR to the shared data directory)")
    return path


@pytest.mark.data
def test_cifar10_train_jpeg_archive() -> None:
    ds = ImageZipDataset(_archive("cifar10-train-jpeg75.zip"), verify=True)
    assert len(ds) == 50_000 and ds.image_shape == (3, 32, 32) and ds.label_dim == 10
    assert torch.bincount(ds.labels).tolist() == [5000] * 10
    check_compatible(ds, resolution=32, channels=3, label_dim=10)
    x_real, labels = next(real_batches(ds, 256, seed=0))
    assert x_real.shape == (256, 3, 32, 32) and labels.shape == (256, 10)


@pytest.mark.data
def test_cifar10_exact_archive_matches_fixture(tiny: ImageZipDataset) -> None:
    ds = ImageZipDataset(_archive("cifar10-test1000-exact.zip"))
    assert len(ds) == 1000 and ds.names[:200] == tiny.names
    assert torch.equal(ds.labels[:200], tiny.labels)
    assert all(torch.equal(ds[i][0], tiny[i][0]) for i in (0, 99, 199))


@pytest.mark.data
def test_mnist_archive_is_greyscale() -> None:
    ds = ImageZipDataset(_archive("mnist-test.zip"))
    assert len(ds) == 10_000 and ds.image_shape == (1, 28, 28) and ds.label_dim == 10
    with pytest.raises(ValueError, match="channels"):
        check_compatible(ds, resolution=28, channels=3, label_dim=10)


def test_image_folder_dataset_reads_images_under_the_zip_limits(tmp_path):
    from PIL import Image

    from scoredistill.data import ImageFolderDataset

    with pytest.raises(DatasetError, match="holds no image files"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "b").mkdir()
    for name, value in (("b/2.png", 200), ("a.png", 10)):
        Image.new("RGB", (8, 6), (value, 0, 0)).save(tmp_path / name)
    folder = ImageFolderDataset(tmp_path)
    assert len(folder) == 2 and folder.shape == (3, 6, 8)
    image, label = folder[0]  # sorted by relative path: a.png first
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 8) and int(image[0, 0, 0]) == 10 and label == -1
    assert len(ImageFolderDataset(tmp_path, max_images=1)) == 1


def test_max_size_draws_a_seeded_subset_not_the_first_images(tmp_path):
    """A class-sorted archive (10 images of each of 5 classes): the first 10 images are all class 0, a subset drawn
    as EDM draws one (fixed seed, name order kept) has several classes, the same ones every time."""
    images = {f"img{i:03d}.png": _png(rgb(i)) for i in range(50)}
    labels = [[name, i // 10] for i, name in enumerate(images)]
    path = make_zip(tmp_path / "sorted.zip", images, labels)
    subset = ImageZipDataset(path, max_size=10)
    assert len(subset) == 10 and len(set(subset._labels.tolist())) >= 3
    assert list(subset._names) == sorted(subset._names)  # name order kept
    assert ImageZipDataset(path, max_size=10)._names == subset._names  # the same subset every time
    assert len(ImageZipDataset(path, max_size=100)) == 50
