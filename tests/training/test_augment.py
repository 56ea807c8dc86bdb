"""Tests for scoredistill.data.augment.AugmentPipe (Karras et al. 2020, StyleGAN2-ADA; Karras et al. 2022, EDM)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import TINY_ZIP
from scoredistill.data.augment import AUGMENT_DIM, SYM6, AugmentPipe

FIXTURE = TINY_ZIP
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
OFF = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def only(**multipliers: float) -> dict[str, float]:
    """Multipliers with every transform off except the given ones."""
    return {**OFF, **multipliers}


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    """16 real CIFAR-10 images in [-1, 1] (falls back to smooth noise without Pillow)."""
    try:
        from scoredistill.data import ImageZipDataset

        ds = ImageZipDataset(FIXTURE, normalize=True, max_size=16)
        return torch.stack([ds[i][0] for i in range(len(ds))])
    except ImportError:
        noise = torch.rand(16, 3, 8, 8, generator=rng(1)) * 2 - 1
        return torch.nn.functional.interpolate(noise, size=32, mode="bicubic", align_corners=False).clamp(-1, 1)


def blob(centre_x: float, centre_y: float, size: int = 32, width: float = 1.5) -> torch.Tensor:
    """A Gaussian spot ``[size, size]`` centred at pixel coordinates (x right, y down, pixel centres at k + 0.5)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-((x - centre_x) ** 2 + (y - centre_y) ** 2) / (2 * width**2))


def centroid(images: torch.Tensor, near: torch.Tensor, radius: float = 5) -> torch.Tensor:
    """Intensity centroid ``[B, 2]`` (x, y) of ``[B, 1, H, W]`` images within ``radius`` pixels of ``near`` ``[B, 2]``.

    The window ignores mirrored copies of the spot that reflect padding brings into view.
    """
    height, width = images.shape[-2:]
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    window = (x - near[:, 0, None, None]) ** 2 + (y - near[:, 1, None, None]) ** 2 <= radius**2
    weights = images[:, 0].clamp(min=0) * window
    weights = weights / weights.sum(dim=(1, 2), keepdim=True)
    return torch.stack([(weights * x).sum((1, 2)), (weights * y).sum((1, 2))], 1)


def test_sym6_is_orthonormal() -> None:
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-12)
    assert (h * h).sum().item() == pytest.approx(1, abs=1e-9)
    for shift in range(1, 6):
        assert (h[: -2 * shift] * h[2 * shift :]).sum().item() == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtype_device(cifar: torch.Tensor, device: str) -> None:
    pipe = AugmentPipe(p=0.5).to(device)
    out, labels = pipe(cifar.to(device), rng=rng())
    assert out.shape == cifar.shape and out.dtype == cifar.dtype and out.device.type == device
    assert labels.shape == (16, AUGMENT_DIM) and labels.dtype == torch.float32 and labels.device.type == device
    half, _ = pipe(cifar.to(device, torch.bfloat16), rng=rng())
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("multipliers", "columns"),
    [
        (only(xflip=1), [0]),
        (only(yflip=1), [1]),
        (only(scale=1), [2]),
        (only(rotate_frac=1), [3, 4]),
        (only(aniso=1), [5, 6]),
        (only(translate_frac=1), [7, 8]),
    ],
)
def test_label_layout(multipliers: dict[str, float], columns: list[int]) -> None:
    images = torch.zeros(64, 1, 8, 8)
    _, labels = AugmentPipe(p=1, **multipliers)(images, rng=rng())
    others = [c for c in range(AUGMENT_DIM) if c not in columns]
    assert torch.all(labels[:, others] == 0)
    assert torch.all(labels[:, columns].abs().sum(1) > 0) or columns in ([0], [1])
    if columns == [3, 4]:  # (cos - 1, sin) lies on the unit circle shifted by -1
        torch.testing.assert_close((labels[:, 3] + 1) ** 2 + labels[:, 4] ** 2, torch.ones(64))
    if columns in ([0], [1]):
        assert set(labels[:, columns[0]].tolist()) == {0.0, 1.0}


def test_p_zero_is_identity(cifar: torch.Tensor) -> None:
    out, labels = AugmentPipe(p=0)(cifar, rng=rng())
    assert out is cifar and torch.equal(labels, torch.zeros(16, AUGMENT_DIM))


def test_all_multipliers_zero_is_identity(cifar: torch.Tensor) -> None:
    out, labels = AugmentPipe(p=0.5, **OFF)(cifar, rng=rng())
    assert out is cifar and not labels.any()


def test_unaugmented_images_are_bit_exact(cifar: torch.Tensor) -> None:
    out, labels = AugmentPipe(p=0.3, xflip=1)(cifar, rng=rng(3))
    kept = ~labels.any(1)
    assert 0 < kept.sum() < 16
    assert torch.equal(out[kept], cifar[kept]) and not torch.equal(out[~kept], cifar[~kept])


def test_flips_equal_torch_flip(cifar: torch.Tensor) -> None:
    cifar = cifar.repeat(4, 1, 1, 1)
    out, labels = AugmentPipe(p=1, **only(xflip=1, yflip=1))(cifar, rng=rng(2))
    for flip_x in (0, 1):
        for flip_y in (0, 1):
            rows = (labels[:, 0] == flip_x) & (labels[:, 1] == flip_y)
            dims = [d for d, on in ((3, flip_x), (2, flip_y)) if on]
            expected = cifar[rows].flip(dims) if dims else cifar[rows]
            assert rows.any() and torch.equal(out[rows], expected)


def test_identity_matrix_path_reproduces_image(cifar: torch.Tensor) -> None:
    # Every continuous transform is applied (non-zero labels) but with zero strength, so the full
    # pad -> 2x upsample -> grid_sample -> downsample -> crop path runs with the identity matrix.
    pipe = AugmentPipe(p=1, **only(scale=1, aniso=1, translate_frac=1), scale_std=0, aniso_std=0, translate_frac_std=0)
    out, labels = pipe(cifar, rng=rng())
    assert labels[:, 2].ne(0).all() and labels[:, 7].ne(0).all()
    torch.testing.assert_close(out, cifar, atol=2e-5, rtol=0)


def test_determinism(cifar: torch.Tensor) -> None:
    pipe = AugmentPipe(p=0.5)
    a, la = pipe(cifar, rng=rng(11))
    b, lb = pipe(cifar, rng=rng(11))
    _, lc = pipe(cifar, rng=rng(12))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)
    torch.manual_seed(0)
    d, _ = pipe(cifar)  # global RNG when rng is None
    torch.manual_seed(0)
    e, _ = pipe(cifar)
    assert torch.equal(d, e)


def test_frequencies_match_probabilities() -> None:
    # Zero strengths keep the warp cheap; rotation keeps its angle so that its label is non-zero.
    p, n = 0.12, 20_000
    pipe = AugmentPipe(p=p, scale_std=0, aniso_std=0, translate_frac_std=0)
    _, labels = pipe(torch.zeros(n, 1, 4, 4), rng=rng(5))
    applied = labels != 0
    tol = 5 * math.sqrt(0.25 / n)
    assert labels[:, 0].mean().item() == pytest.approx(0.5, abs=tol)  # xflip: min(p * 1e8, 1) = 1, then a coin
    assert labels[:, 1].mean().item() == pytest.approx(p / 2, abs=tol)  # yflip: p, then a coin
    assert applied[:, 2].float().mean().item() == pytest.approx(p, abs=tol)
    assert applied[:, 3:5].any(1).float().mean().item() == pytest.approx(p, abs=tol)
    assert applied[:, 5:7].any(1).float().mean().item() == pytest.approx(p, abs=tol)
    assert applied[:, 7:9].any(1).float().mean().item() == pytest.approx(p, abs=tol)
    # Decisions are independent across transforms.
    both = (applied[:, 2] & applied[:, 7]).float().mean().item()
    assert both == pytest.approx(p * p, abs=tol)
    # Aniso direction is random for half of the applied images and 0 (sin label 0) for the rest.
    aniso = applied[:, 5]
    assert (labels[aniso, 6] != 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    # Scale and translation draws are standard normal when applied.
    for column in (2, 7, 8):
        values = labels[applied[:, column], column]
        assert values.mean().item() == pytest.approx(0, abs=0.1) and values.std().item() == pytest.approx(1, abs=0.1)


def test_translation_moves_content_by_label() -> None:
    images = blob(16, 16)[None, None].repeat(64, 1, 1, 1)
    out, labels = AugmentPipe(p=1, **only(translate_frac=1))(images, rng=rng(4))
    expected = torch.tensor([16.0, 16.0]) + labels[:, 7:9] * 0.125 * 32  # +x right, +y down
    inside = labels[:, 7:9].abs().amax(1) < 2  # keep the spot away from the reflected border
    torch.testing.assert_close(centroid(out, expected)[inside], expected[inside], atol=0.05, rtol=0)


def test_rotation_and_scale_geometry() -> None:
    # A spot 6 pixels right of the centre goes to centre + s R(theta) (6, 0) (x right, y down).
    images = blob(22, 16)[None, None].repeat(32, 1, 1, 1)
    out, labels = AugmentPipe(p=1, **only(rotate_frac=1, scale=1))(images, rng=rng(6))
    cos, sin = labels[:, 3] + 1, labels[:, 4]
    s = torch.exp2(0.2 * labels[:, 2])
    expected = torch.stack([16 + 6 * s * cos, 16 + 6 * s * sin], 1)
    torch.testing.assert_close(centroid(out, expected), expected, atol=0.1, rtol=0)


def test_anisotropic_scale_stretches_along_direction() -> None:
    # Label (w cos r, w sin r): scale 2^(0.2 w) along r. A spot on the x axis with r = 0 moves by 2^(0.2 w).
    images = blob(22, 16)[None, None].repeat(256, 1, 1, 1)
    out, labels = AugmentPipe(p=1, **only(aniso=1))(images, rng=rng(8))
    axis_aligned = labels[:, 6] == 0
    expected = torch.stack([16 + 6 * torch.exp2(0.2 * labels[:, 5]), torch.full((256,), 16.0)], 1)
    torch.testing.assert_close(centroid(out, expected)[axis_aligned], expected[axis_aligned], atol=0.1, rtol=0)


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="p must be"):
        AugmentPipe(p=1.5)
    with pytest.raises(ValueError, match="yflip"):
        AugmentPipe(yflip=-1)
    with pytest.raises(TypeError, match="floating"):
        AugmentPipe()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        AugmentPipe()(torch.zeros(3, 8, 8))
    assert "p=0.12" in repr(AugmentPipe())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed", [False, True])
def test_upsampling_by_matrices_equals_the_padded_image_filtered(
    cifar: torch.Tensor, device: str, fixed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padding and upsampling each axis by one matrix (two GEMMs) is the same maths as reflect-padding the image and
    running the transposed convolutions over it: equal to float rounding, with draws that sample far outside."""
    images = cifar.to(device)
    if device == "cuda":  # full fp32 on both sides (TF32 rounds to 10 mantissa bits)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    outputs = []
    for by_matmul in (True, False):
        pipe = AugmentPipe(p=1.0, scale_std=1.0, translate_frac_std=0.5, fixed_padding=fixed)
        pipe._upsample_by_matmul = by_matmul
        x, labels = pipe(images, rng=rng(3))
        outputs.append((x, labels))
        if by_matmul:  # again: with the fixed padding, from the matrices kept by the first call
            assert len(pipe._fixed_matrices) == (1 if fixed else 0)
            assert torch.equal(pipe(images, rng=rng(3))[0], x)
    (a, labels_a), (b, labels_b) = outputs
    assert torch.equal(labels_a, labels_b)
    assert (labels_a[:, 2:] != 0).any(dim=1).all()  # every image warped
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    assert not torch.equal(a, images)
