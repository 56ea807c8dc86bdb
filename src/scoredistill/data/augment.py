"""EDM's non-leaking geometric augmentation with 9-dim augment labels (StyleGAN2-ADA; EDM).

EDM teachers for CIFAR-10, FFHQ and AFHQv2 were trained on augmented images and take the pipe's 9-dim label
vector as conditioning (``augment_dim = 9``). SiD/SiDA augment the fake-score and discriminator inputs with
the same pipe (CIFAR-10 ``p = 0.12``, FFHQ/AFHQ ``p = 0.15``) and feed its labels; the generator loss always
passes zeros. This is a clean-room implementation written from the description of the
geometric pipeline in Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data",
Appendix B.

Semantics (each decision is made independently per image and per transform):

* A transform with multiplier ``m`` is *applied* with probability ``min(p * m, 1)``. With ``xflip = 1e8``
  every image gets a flip decision as soon as ``p > 0``.
* Flips, when applied, flip with probability 1/2 (the flip is a random choice, which is what makes it
  non-leaking), so the x-flip label is 1 for about half of the images and the y-flip label for about
  ``p / 2`` of them. Flips are exact pixel permutations and are executed by indexing (bit-exact
  ``torch.flip``), which equals composing them first into the affine matrix.
* The continuous transforms are composed in label order, forward map ``translate · aniso · rotate · scale``
  (scale applied first), into one inverse affine matrix in pixel coordinates centred on the image (x to the
  right, y down) and executed once: reflect pad, 2x upsample with the sym6 low-pass filter, bilinear
  ``grid_sample``, low-pass and 2x downsample, crop.
* Images whose label vector is all zero are returned bit-exactly unchanged; ``p = 0`` returns the input
  tensor itself.

Label layout (``[B, 9]`` float32, in this order):

====  ==================  =======================================================================
 idx   name                value
====  ==================  =======================================================================
 0     xflip               1 when flipped horizontally, else 0
 1     yflip               1 when flipped vertically, else 0
 2     scale               ``w ~ N(0, 1)`` (0 when not applied); isotropic scale ``2^(scale_std w)``
 3     rotation cos        ``cos(theta) - 1`` with ``theta ~ U(-pi, pi) * rotate_frac_max``
 4     rotation sin        ``sin(theta)``
 5     anisotropy cos      ``w cos(r)``; ``w ~ N(0, 1)``, direction ``r ~ U(-pi, pi)`` with probability 1/2, else 0;
                           scale ``2^(aniso_std w)`` along ``r`` and ``2^(-aniso_std w)`` across it
 6     anisotropy sin      ``w sin(r)``
 7     translation x       ``t_x ~ N(0, 1)``; content moves right by ``t_x * translate_frac_std * W`` pixels
 8     translation y       ``t_y ~ N(0, 1)``; content moves down by ``t_y * translate_frac_std * H`` pixels
====  ==================  =======================================================================

References:
    Karras et al. 2020 (StyleGAN2-ADA), Appendix B; Karras et al. 2022 (EDM), Appendix F.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AUGMENT_DIM", "SYM6", "AugmentPipe"]

AUGMENT_DIM = 9
"""Length of the augment label vector (EDM's ``augment_dim``)."""

SYM6: tuple[float, ...] = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)
"""Daubechies symlet-6 low-pass decomposition filter (orthonormal: sum sqrt(2), unit energy, 6 vanishing moments)."""

# Low-frequency group delay of the (nearly linear-phase) symlet, about 5.098 taps. Both 2x grids are placed with
# it, so the filters' sub-pixel shifts cancel in the geometry (rotations, scalings), not only in the identity.
_SYM6_DELAY = sum(i * c for i, c in enumerate(SYM6)) / sum(SYM6)
# Extra input pixels padded beyond the sampled region: the 12-tap upsampling filter needs ~3.25 pixels of real
# (reflected) context on each side before its output is valid, plus one pixel for the bilinear footprint.
_MARGIN = 5.0
# Reflect padding is capped at this many image sizes per side; grid_sample's reflection covers anything beyond.
_MAX_PAD_FACTOR = 4


class AugmentPipe(nn.Module):
    """EDM/ADA geometric augmentation returning ``(augmented, augment_labels)``.

    See the module docstring for the label layout and the exact semantics. The pipe has no parameters; ``p``
    is a plain attribute so that a caller may adapt it during training.

    Args:
        p: Base probability of applying each transform to each image (CIFAR-10 0.12, FFHQ/AFHQ 0.15).
        xflip: Multiplier for the horizontal-flip probability (1e8: a flip choice for every image).
        yflip: Multiplier for the vertical-flip probability.
        scale: Multiplier for the isotropic-scale probability.
        rotate_frac: Multiplier for the fractional-rotation probability.
        aniso: Multiplier for the anisotropic-scale probability.
        translate_frac: Multiplier for the fractional-translation probability.
        scale_std: Standard deviation of ``log2`` of the isotropic scale.
        rotate_frac_max: Largest rotation as a fraction of a half turn (1: ``theta ~ U(-pi, pi)``).
        aniso_std: Standard deviation of ``log2`` of the anisotropic scale.
        translate_frac_std: Standard deviation of the translation as a fraction of the image size.
        fixed_padding: Pad by the largest amount (``4 x`` the image size per side) instead of by what the batch
            needs. More filtering work, but the pipe never waits for the device and its shapes never change, which
            CUDA-graph capture requires (and cuDNN's autotuning, which must see the captured shapes beforehand).
            ``None`` (default): fixed on CUDA, batch-sized on the CPU. The output is the same up to float rounding.

    Capture safety:
        All randomness is drawn on the device of ``rng`` (pass a generator on the images' device), shapes never
        depend on the draws with ``fixed_padding``, and no tensor is built from host values once the filter has
        been created (the first call, which must happen outside a capture).

    Shape:
        images: ``[B, C, H, W]`` floating point (any range; EDM uses [-1, 1]); returns ``[B, C, H, W]`` of the
        same dtype and ``[B, 9]`` float32 labels, both on the images' device.

    Example:
        >>> import torch
        >>> pipe = AugmentPipe(p=0.12)
        >>> x, labels = pipe(torch.zeros(4, 3, 8, 8), rng=torch.Generator().manual_seed(0))
        >>> x.shape, labels.shape
        (torch.Size([4, 3, 8, 8]), torch.Size([4, 9]))
    """

    def __init__(
        self,
        p: float = 0.12,
        *,
        xflip: float = 1e8,
        yflip: float = 1,
        scale: float = 1,
        rotate_frac: float = 1,
        aniso: float = 1,
        translate_frac: float = 1,
        scale_std: float = 0.2,
        rotate_frac_max: float = 1,
        aniso_std: float = 0.2,
        translate_frac_std: float = 0.125,
        fixed_padding: bool | None = None,
    ):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        multipliers = dict(xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso)
        multipliers["translate_frac"] = translate_frac
        for name, value in multipliers.items():
            if value < 0:
                raise ValueError(f"{name} is a probability multiplier and must be >= 0, got {value}")
        for name, value in dict(
            scale_std=scale_std,
            rotate_frac_max=rotate_frac_max,
            aniso_std=aniso_std,
            translate_frac_std=translate_frac_std,
        ).items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.p = float(p)
        self.xflip, self.yflip, self.scale = float(xflip), float(yflip), float(scale)
        self.rotate_frac, self.aniso, self.translate_frac = float(rotate_frac), float(aniso), float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.translate_frac_std = float(aniso_std), float(translate_frac_std)
        self.fixed_padding = fixed_padding
        # Filters per device, kept out of the buffers so that .half() / .to(dtype) cannot round them.
        self._filters: dict[torch.device, Tensor] = {}
        # Pad and upsample as two small GEMMs (True) or as separate ops over the padded image (False, the same
        # maths, but cuDNN runs it as a slow direct convolution). A switch for benchmarks and parity tests.
        self._upsample_by_matmul = True
        # With the fixed padding the matrices depend only on the image size: built once per size and device.
        self._fixed_matrices: dict[tuple[torch.device, int, int], tuple[Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, xflip={self.xflip:g}, yflip={self.yflip:g}, scale={self.scale:g}, "
            f"rotate_frac={self.rotate_frac:g}, aniso={self.aniso:g}, translate_frac={self.translate_frac:g}"
        )

    def probabilities(self) -> dict[str, float]:
        """The probability that each transform is applied to an image, ``min(p * multiplier, 1)``."""
        names = ("xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac")
        return {name: min(self.p * getattr(self, name), 1.0) for name in names}

    def forward(self, images: Tensor, *, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment a batch.

        Args:
            images: Batch to augment.
            rng: Source of randomness. Every call draws the same number of values from it (independent of ``p``),
                on the generator's own device, so a CPU generator gives the same labels for CPU and CUDA images.
                ``None`` uses torch's global RNG on the images' device.

        Returns:
            ``(augmented, labels)``: the augmented batch in the input dtype and the ``[B, 9]`` float32 labels.
        """
        if images.ndim != 4:
            raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (e.g. in [-1, 1]), got {images.dtype}")
        batch, _, height, width = images.shape
        prob = self.probabilities()
        if all(value == 0 for value in prob.values()):
            return images, images.new_zeros(batch, AUGMENT_DIM, dtype=torch.float32)

        # Draw a fixed amount of randomness per image, in a fixed order.
        rng_device = rng.device if rng is not None else images.device
        capturing = images.is_cuda and torch.cuda.is_current_stream_capturing()
        if capturing and torch.device(rng_device).type != images.device.type:
            raise ValueError(
                f"AugmentPipe under CUDA-graph capture needs rng on the images' device {images.device}, "
                f"not {rng_device} (a host-to-device copy cannot be captured)"
            )
        u = torch.rand(batch, 11, generator=rng, device=rng_device, dtype=torch.float32).to(images.device)
        n = torch.randn(batch, 4, generator=rng, device=rng_device, dtype=torch.float32).to(images.device)
        zero = torch.zeros_like(u[:, 0])

        # Decide and parametrise each transform (label order).
        flip_x = (u[:, 0] < prob["xflip"]) & (u[:, 1] < 0.5)
        flip_y = (u[:, 2] < prob["yflip"]) & (u[:, 3] < 0.5)
        w_scale = torch.where(u[:, 4] < prob["scale"], n[:, 0], zero)
        theta = torch.where(u[:, 5] < prob["rotate_frac"], (u[:, 6] * 2 - 1) * math.pi * self.rotate_frac_max, zero)
        w_aniso = torch.where(u[:, 7] < prob["aniso"], n[:, 1], zero)
        r_aniso = torch.where(u[:, 8] < 0.5, (u[:, 9] * 2 - 1) * math.pi, zero)
        translate = torch.where((u[:, 10] < prob["translate_frac"])[:, None], n[:, 2:4], zero[:, None])
        labels = torch.stack(
            [
                flip_x.float(),
                flip_y.float(),
                w_scale,
                torch.cos(theta) - 1,
                torch.sin(theta),
                w_aniso * torch.cos(r_aniso),
                w_aniso * torch.sin(r_aniso),
                translate[:, 0],
                translate[:, 1],
            ],
            dim=1,
        )

        # Flips are exact pixel permutations: blit them (equivalent to composing them first into the matrix).
        x = images
        if prob["xflip"] > 0:
            x = torch.where(flip_x[:, None, None, None], x.flip(3), x)
        if prob["yflip"] > 0:
            x = torch.where(flip_y[:, None, None, None], x.flip(2), x)

        # Compose the continuous transforms into one inverse matrix and execute it once.
        if any(prob[name] > 0 for name in ("scale", "rotate_frac", "aniso", "translate_frac")):
            g_inv = self._inverse_matrix(w_scale, theta, w_aniso, r_aniso, translate, height, width)
            is_warped = (labels[:, 2:] != 0).any(dim=1)
            fixed = images.is_cuda if self.fixed_padding is None else self.fixed_padding
            warped = self._warp(x, g_inv, is_warped, fixed=fixed or capturing)
            if warped is not None:
                x = torch.where(is_warped[:, None, None, None], warped, x)
        return x, labels

    def _inverse_matrix(
        self,
        w_scale: Tensor,
        theta: Tensor,
        w_aniso: Tensor,
        r_aniso: Tensor,
        translate: Tensor,
        height: int,
        width: int,
    ) -> Tensor:
        """``G^-1 = S^-1 R^-1 A^-1 T^-1`` for the forward map ``G = T A R S``, as ``[B, 2, 3]`` in centred pixels."""

        def rotation(angle: Tensor) -> Tensor:
            c, s = torch.cos(angle), torch.sin(angle)
            return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)

        def diag(a: Tensor, b: Tensor) -> Tensor:
            return torch.diag_embed(torch.stack([a, b], -1))

        s = torch.exp2(self.scale_std * w_scale)
        a = torch.exp2(self.aniso_std * w_aniso)
        scale_inv = diag(1 / s, 1 / s)
        rotate_inv = rotation(-theta)
        aniso_inv = rotation(r_aniso) @ diag(1 / a, a) @ rotation(-r_aniso)
        m = scale_inv @ rotate_inv @ aniso_inv
        # Scale the columns by Python numbers: a tensor made from [width, height] would be a host-to-device copy.
        shift = torch.stack([translate[:, 0] * width, translate[:, 1] * height], 1) * self.translate_frac_std
        # Output pixel q samples input pixel p = m (q - shift).
        return torch.cat([m, -(m @ shift[:, :, None])], dim=2)

    def _warp(self, x: Tensor, g_inv: Tensor, is_warped: Tensor, *, fixed: bool = False) -> Tensor | None:
        """Reflect pad, 2x upsample, bilinear resample through ``g_inv``, low-pass, 2x downsample, crop.

        Returns ``None`` (without filtering) when no image in the batch needs it. ``fixed`` pads by the cap
        without looking at the batch (no host synchronisation) and always filters.
        """
        batch, channels, height, width = x.shape
        dtype = x.dtype
        x = x.float()
        h = self._filters.get(x.device)
        if h is None:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("call AugmentPipe once outside CUDA-graph capture first (it creates its filter)")
            h = self._filters[x.device] = torch.tensor(SYM6, dtype=torch.float64, device=x.device)
        taps = h.numel()
        delay = _SYM6_DELAY
        lead = taps // 2 - 1  # 5 for sym6: the 2x-grid samples left of the output that the decimator reads

        # Output 2x-grid indices that the decimation filter reads: i in [-lead, 2W + taps - lead - 2].
        def positions(size: int) -> Tensor:
            i = torch.arange(-lead, 2 * size + taps - lead - 2, device=x.device, dtype=torch.float32)
            return (i + lead + 1 - delay) / 2 - size / 2  # centred input-pixel units

        qx, qy = positions(width), positions(height)

        def pad(lo: float, hi: float, size: int) -> tuple[int, int]:
            cap = _MAX_PAD_FACTOR * size
            before = math.ceil(max(0.0, -(lo + size / 2)) + _MARGIN)
            after = math.ceil(max(0.0, hi + size / 2 - size) + _MARGIN)
            # Beyond the cap grid_sample reflects about the padded edges, which depends on the padded size: pad
            # both sides by the cap then, as fixed padding does, so that both paths sample the same signal.
            return (before, after) if max(before, after) < cap else (cap, cap)

        if fixed:  # the cap on every side: any sampled point inside it sees the same padded values as below
            pad_left = pad_right = _MAX_PAD_FACTOR * width
            pad_top = pad_bottom = _MAX_PAD_FACTOR * height
        else:
            # Size the reflect padding from where the sampled region's corners land (one host sync per call).
            ends = torch.stack([qx[0], qx[-1]]), torch.stack([qy[0], qy[-1]])
            corners = torch.stack(torch.meshgrid(*ends, indexing="xy"), -1).reshape(4, 2)
            p_corners = corners @ g_inv[:, :, :2].transpose(1, 2) + g_inv[:, None, :, 2]  # [B, 4, 2]
            # Un-warped images map the corners to themselves, which the margin covers already.
            stats = torch.cat([p_corners.amin(dim=(0, 1)), p_corners.amax(dim=(0, 1)), is_warped.any().float()[None]])
            min_x, min_y, max_x, max_y, any_warped = stats.tolist()
            if not any_warped:
                return None
            pad_left, pad_right = pad(min_x, max_x, width)
            pad_top, pad_bottom = pad(min_y, max_y, height)
        padded_h, padded_w = height + pad_top + pad_bottom, width + pad_left + pad_right

        # Upsample 2x: u[m] = sum_k x[k] g[m - 2k + lead], g = sqrt(2) h (each polyphase sums to 1).
        g = (h * math.sqrt(2)).float()
        y = x.reshape(batch * channels, height, width)
        if self._upsample_by_matmul:  # pad and upsample each axis as one [size, 2 padded] matrix: 2 small GEMMs
            key = (x.device, height, width)
            matrices = self._fixed_matrices.get(key) if fixed else None
            if matrices is None:
                up_y = _pad_upsample_matrix(height, pad_top, pad_bottom, g, lead)
                matrices = (up_y.T, _pad_upsample_matrix(width, pad_left, pad_right, g, lead))
                if fixed and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
                    self._fixed_matrices[key] = matrices
            y = matrices[0] @ y @ matrices[1]
        else:  # the same maths as separate ops over the padded image (the matrices' definition)
            y = _pad_upsample(y[:, None], 3, pad_left, pad_right, g, lead)
            y = _pad_upsample(y, 2, pad_top, pad_bottom, g, lead)
        y = y.reshape(batch, channels, 2 * padded_h, 2 * padded_w)

        # Bilinear resample: output 2x-grid sample at centred position q reads the input at p = G^-1 q. A 2x-grid
        # index i sits at position (i + lead + 1 - delay) / 2 in both grids, hence the index of p below.
        grid_q = torch.stack(torch.meshgrid(qx, qy, indexing="xy"), -1)  # [Hg, Wg, 2]
        p = torch.einsum("bij,hwj->bhwi", g_inv[:, :, :2], grid_q) + g_inv[:, None, None, :, 2]
        index_x = 2 * (p[..., 0] + width / 2 + pad_left) + delay - lead - 1
        index_y = 2 * (p[..., 1] + height / 2 + pad_top) + delay - lead - 1
        grid = torch.stack([(2 * index_x + 1) / (2 * padded_w) - 1, (2 * index_y + 1) / (2 * padded_h) - 1], -1)
        y = F.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        # Low-pass and downsample 2x: z[j] = sum_n v[2j + n - lead] h[n] / sqrt(2). With the upsampler this is the
        # orthonormal wavelet's perfect-reconstruction pair, so the identity matrix returns the input exactly.
        d = (h / math.sqrt(2)).float()
        grid_h, grid_w = y.shape[2:]
        y = y.reshape(batch * channels, 1, grid_h, grid_w)
        y = F.conv2d(y, d.reshape(1, 1, 1, taps), stride=(1, 2))
        y = F.conv2d(y, d.reshape(1, 1, taps, 1), stride=(2, 1))
        return y.reshape(batch, channels, height, width).to(dtype)


def _pad_upsample(x: Tensor, dim: int, before: int, after: int, g: Tensor, lead: int) -> Tensor:
    """Reflect-pad ``[N, 1, H, W]`` along ``dim`` (2: rows, 3: columns), then upsample that axis 2x by ``g``."""
    size, taps = x.shape[dim], g.numel()
    x = x.index_select(dim, _reflect_index(size, before, after, x.device))
    if dim == 3:
        return F.conv_transpose2d(x, g.reshape(1, 1, 1, taps), stride=(1, 2), padding=(0, lead))
    return F.conv_transpose2d(x, g.reshape(1, 1, taps, 1), stride=(2, 1), padding=(lead, 0))


def _pad_upsample_matrix(size: int, before: int, after: int, g: Tensor, lead: int) -> Tensor:
    """``[size, 2 (before + size + after)]``: `_pad_upsample` of a row of ``size`` pixels as one matrix, built by
    running it on the identity (so ``row @ matrix`` is the padded, upsampled row)."""
    eye = torch.eye(size, device=g.device, dtype=g.dtype)[:, None, None, :]
    return _pad_upsample(eye, 3, before, after, g, lead).reshape(size, -1)


def _reflect_index(size: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of ``F.pad(mode="reflect")`` (edge pixel not repeated) for any pad width, folding repeatedly."""
    index = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)
