"""Batched, on-device RandAugment over uint8 ``[B, C, H, W]`` tensors (MLKD's strong view).

Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a reduced search space",
CVPR-W 2020, arXiv 1909.13719. Reference for the op list, the magnitude mapping and the pixel arithmetic:
torchvision ``transforms.RandAugment`` (``_augmentation_space`` and ``_apply_op``) on uint8 tensors, with its
defaults ``num_ops=2, magnitude=9 (here 10), num_magnitude_bins=31``, nearest interpolation and fill 0.

Every image gets ``num_ops`` ops in sequence, each drawn uniformly from the 14 ops of :data:`RAND_AUGMENT_OPS`
with a random sign for the signed ones. Magnitude ``m`` of ``num_magnitude_bins`` (31) bins, with the values at
``m = 10`` for a 32x32 image:

============  ==============================================  =========================================
op            magnitude (bin m of a float32 linspace)           at m = 10, 32x32
============  ==============================================  =========================================
identity      --                                              --
shear_x/y     +-linspace(0, 0.3): shear factor, about the       +-0.1
              top-left corner (source x += m * (row + 0.5))
translate_x   +-int(linspace(0, 150/331 * W)) pixels            +-4 px
translate_y   +-int(linspace(0, 150/331 * H)) pixels            +-4 px
rotate        +-linspace(0, 30) degrees about the centre        +-10 degrees
brightness    factor 1 +- linspace(0, 0.9): blend with black    0.7 or 1.3
color         same factor: blend with the grayscale image       0.7 or 1.3
contrast      same factor: blend with the mean grayscale level  0.7 or 1.3
sharpness     same factor: blend with a 3x3 smoothed image      0.7 or 1.3
              (kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border kept)
posterize     keep 8 - round(m / ((bins - 1) / 4)) bits         7 bits
solarize      invert pixels >= linspace(255, 0)                 >= 170
autocontrast  stretch each channel to [0, 255]                  --
equalize      per-channel histogram equalisation (PIL's)        --
============  ==============================================  =========================================

Blends compute ``(f * img + (1 - f) * degenerate).clamp(0, 255)`` in float32 and truncate to uint8, as
torchvision's tensor path. Geometric ops sample with nearest interpolation and fill 0.

No per-sample Python work: each round sorts the batch by op (one gather), runs every op once on its group
(the geometric ones through ``affine_grid``/``grid_sample`` with per-sample matrices, the blends with per-sample
factors) and scatters the results back. One host-device synchronisation per round (the group sizes).

Deviations from torchvision:
- Randomness comes from one ``torch.Generator`` on the batch's device (torchvision draws per image from the
  global RNG): all op indices and signs of a batch are drawn at once.
- The geometric ops build the same inverse affine maps as torchvision's ``affine``/``rotate`` but through
  ``affine_grid``; float rounding differs slightly, which can move a nearest-neighbour sample that lies within
  rounding error of a pixel boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RAND_AUGMENT_OPS", "apply_ops", "rand_augment"]

#: The op list, in torchvision's order; ``apply_ops`` takes indices into it.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)


def _magnitudes(magnitude: int, num_bins: int, height: int, width: int) -> dict[str, float]:
    """The unsigned magnitude of every op at bin ``magnitude`` (float32 linspaces, as torchvision)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must lie in 0..{num_bins - 1}, got {magnitude}")

    def lin(end: float, start: float = 0.0) -> float:
        return float(torch.linspace(start, end, num_bins)[magnitude].item())

    bits = 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()
    return {
        "shear": lin(0.3),
        "translate_x": lin(150.0 / 331.0 * width),
        "translate_y": lin(150.0 / 331.0 * height),
        "rotate": lin(30.0),
        "enhance": lin(0.9),
        "posterize_bits": float(bits[magnitude].item()),
        "solarize": lin(0.0, 255.0),
    }


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _affine_grid(m: tuple[Tensor, ...], shape: torch.Size) -> Tensor:
    """The ``grid_sample`` grid ``[B, H, W, 2]`` of per-sample inverse maps ``m = (a, b, c, d, e, f)`` (each ``[B]``)
    on images of ``shape = [B, C, H, W]``: the output pixel at ``(u, v)`` (pixel units from the image centre) reads
    the source at ``(a u + b v + c, d u + e v + f)``."""
    n, ch, h, w = shape
    theta = torch.stack(
        (
            torch.stack((m[0], m[1] * h / w, m[2] * 2 / w), dim=-1),
            torch.stack((m[3] * w / h, m[4], m[5] * 2 / h), dim=-1),
        ),
        dim=1,
    ).to(torch.float32)
    return F.affine_grid(theta, [n, ch, h, w], align_corners=False)


def _affine(x: Tensor, m: tuple[Tensor, ...]) -> Tensor:
    """Nearest-neighbour warp with fill 0 by per-sample inverse maps ``m`` (:func:`_affine_grid`)."""
    grid = _affine_grid(m, x.shape)
    warped = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.to(torch.uint8)


def _shear_x(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    k = sign * mag["shear"]
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return _affine(x, (one, k, k * x.shape[-2] / 2, zero, one, zero))  # about the top-left corner


def _shear_y(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    k = sign * mag["shear"]
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return _affine(x, (one, zero, zero, k, one, k * x.shape[-1] / 2))


def _translate_x(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    t = torch.trunc(sign * mag["translate_x"])  # torchvision: int() of the signed magnitude
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return _affine(x, (one, zero, -t, zero, one, zero))


def _translate_y(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    t = torch.trunc(sign * mag["translate_y"])
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return _affine(x, (one, zero, zero, zero, one, -t))


def _rotate(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    r = torch.deg2rad(-sign * mag["rotate"])  # counter-clockwise for a positive angle, about the centre
    zero = torch.zeros_like(r)
    return _affine(x, (torch.cos(r), torch.sin(r), zero, -torch.sin(r), torch.cos(r), zero))


def _grayscale(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` uint8 luma ``0.2989 R + 0.587 G + 0.114 B`` truncated (the image itself if C = 1)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _blend(x: Tensor, degenerate: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    """``(f * x + (1 - f) * degenerate).clamp(0, 255)`` truncated to uint8, ``f = 1 + sign * m`` per sample."""
    ratio = 1.0 + sign * mag["enhance"]  # float64, then cast, as torchvision's python floats
    f = _per_sample(ratio.to(torch.float32))
    g = _per_sample((1.0 - ratio).to(torch.float32))
    return (f * x.float() + g * degenerate.float()).clamp(0, 255).to(torch.uint8)


def _brightness(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    return _blend(x, torch.zeros_like(x), sign, mag)


def _color(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    if x.shape[1] == 1:  # saturation of a one-channel image: unchanged (as torchvision)
        return x
    return _blend(x, _grayscale(x).expand_as(x), sign, mag)


def _contrast(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    mean = _grayscale(x).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, sign, mag)


def _sharpness(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    c, h, w = x.shape[1:]
    if h <= 2 or w <= 2:  # no interior (as torchvision)
        return x
    kernel = torch.ones(3, 3, dtype=torch.float32, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.float()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x.float(), kernel, groups=c).round()
    return _blend(x, smooth, sign, mag)


def _posterize(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    bits = int(mag["posterize_bits"])
    return x & ((256 - 2 ** (8 - bits)) & 0xFF)


def _solarize(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    return torch.where(x >= mag["solarize"], 255 - x, x)


def _autocontrast(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True).float()
    hi = x.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (hi - lo)
    flat = ~torch.isfinite(scale)
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    scale = torch.where(flat, torch.ones_like(scale), scale)
    return ((x.float() - lo) * scale).clamp(0, 255).to(torch.uint8)


def _equalize(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    """Per-channel histogram equalisation with PIL's (and torchvision's) lookup table:
    ``lut[v] = (count(< v) + step // 2) // step`` with ``step = count(< max) // 255``; a channel with
    ``step == 0`` is left unchanged. Histograms by one integer ``bincount`` (deterministic), the lookup by one
    ``index_select`` with int32 indices (half the memory traffic of int64)."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w)
    idx = flat.to(torch.int32)
    if b * c > 1:
        idx = idx + (256 * torch.arange(b * c, device=x.device, dtype=torch.int32)).unsqueeze(1)
    hist = torch.bincount(idx.reshape(-1), minlength=b * c * 256).reshape(b * c, 256)
    below = F.pad(hist.cumsum(dim=1), (1, 0))[:, :-1]  # count of pixels < v
    step = (h * w - hist.gather(1, flat.amax(dim=1, keepdim=True).long())) // 255
    lut = ((below + step // 2) // step.clamp(min=1)).clamp(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).to(torch.uint8)
    return lut.reshape(-1).index_select(0, idx.reshape(-1)).reshape(b, c, h, w)


def _identity(x: Tensor, sign: Tensor, mag: dict[str, float]) -> Tensor:
    return x


_OP_FNS = (
    _identity,
    _shear_x,
    _shear_y,
    _translate_x,
    _translate_y,
    _rotate,
    _brightness,
    _color,
    _contrast,
    _sharpness,
    _posterize,
    _solarize,
    _autocontrast,
    _equalize,
)


def apply_ops(x: Tensor, ops: Tensor, signs: Tensor, magnitude: int = 10, num_magnitude_bins: int = 31) -> Tensor:
    """Apply one op per image (one round of RandAugment) with given op choices.

    The batch is sorted by op (a gather), each op runs once on its group, and the results are scattered back.

    Args:
        x: ``[B, C, H, W]`` uint8 images (C = 1 or 3).
        ops: ``[B]`` integer indices into :data:`RAND_AUGMENT_OPS`.
        signs: ``[B]`` +1 or -1, the sign of each signed op's magnitude.
        magnitude: magnitude bin, ``0 <= magnitude < num_magnitude_bins``.
        num_magnitude_bins: number of magnitude bins (31 in torchvision).

    Returns:
        ``[B, C, H, W]`` uint8.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"RandAugment expects [B, C, H, W] uint8 images, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"RandAugment expects 1 or 3 channels, got {x.shape[1]}")
    mag = _magnitudes(magnitude, num_magnitude_bins, x.shape[-2], x.shape[-1])
    ops = ops.to(device=x.device, dtype=torch.long)
    order = torch.argsort(ops, stable=True)
    counts = torch.bincount(ops, minlength=len(_OP_FNS)).tolist()  # the one host-device sync of a round
    grouped = x.index_select(0, order).split(counts)
    grouped_signs = signs.to(device=x.device, dtype=torch.float64).index_select(0, order).split(counts)
    parts = [fn(xs, ss, mag) for fn, xs, ss, n in zip(_OP_FNS, grouped, grouped_signs, counts) if n]
    return torch.empty_like(x).index_copy_(0, order, torch.cat(parts))


def rand_augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    num_ops: int = 2,
    magnitude: int = 10,
    num_magnitude_bins: int = 31,
) -> Tensor:
    """RandAugment of a uint8 batch: ``num_ops`` rounds, each one uniformly drawn op per image.

    Args:
        x: ``[B, C, H, W]`` uint8 images on any device (C = 1 or 3).
        generator: a ``torch.Generator`` on ``x``'s device (None: the global RNG).
        num_ops: ops applied in sequence to every image (2 in MLKD).
        magnitude: magnitude bin (10 in MLKD), ``0 <= magnitude < num_magnitude_bins``.
        num_magnitude_bins: number of magnitude bins (31 in torchvision).

    Returns:
        ``[B, C, H, W]`` uint8 augmented images.
    """
    b = x.shape[0]
    ops = torch.randint(0, len(RAND_AUGMENT_OPS), (num_ops, b), generator=generator, device=x.device)
    flips = torch.randint(0, 2, (num_ops, b), generator=generator, device=x.device)
    signs = 1 - 2 * flips
    for i in range(num_ops):
        x = apply_ops(x, ops[i], signs[i], magnitude, num_magnitude_bins)
    return x
