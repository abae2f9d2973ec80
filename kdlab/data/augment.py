"""Per-sample training augmentations on whole batches: RandAugment (timm's form), colour jitter, random erasing.

Every op here draws its randomness per image (op, application, magnitude, sign, factors, order, box) from one
``torch.Generator``, all draws of a batch at once; no per-sample Python work. A library op that draws once for a whole
batch (torchvision's v2 transforms on a ``[B, C, H, W]`` tensor apply one set of parameters to all images) is what
kdlab must not do: the tests check the per-sample distributions over batches of identical images.

**RandAugment** (Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a reduced search
space", CVPR-W 2020, arXiv 1909.13719) in the form of timm's ``rand_augment_transform`` (``timm/data/auto_augment.py``,
the implementation DIST's strategies B2/B3 name as ``rand-m9-mstd0.5``): per image ``num_ops`` ops drawn uniformly
with replacement from the 15 of :data:`TIMM_RAND_OPS`, each applied with ``probability`` (timm's default 0.5). The
magnitude ``m`` lives on a 0..10 scale; ``mstd`` (``magnitude_std``) makes it random: every application draws its own
magnitude from N(m, mstd) clipped to [0, 10] (``mstd >= 100``: uniform on [0, m]). Op arguments at magnitude ``v``
(timm's ``LEVEL_TO_ARG``, non-"increasing" set):

============== ================================================ ================================
op             argument at magnitude v                          at v = 9
============== ================================================ ================================
auto_contrast  --                                               --
equalize       --                                               --
invert         --                                               --
rotate         +-v/10 * 30 degrees about the centre             +-27 degrees
posterize      keep int(v/10 * 4) bits                          3 bits
solarize       invert pixels >= min(256, int(v/10 * 256))       >= 230
solarize_add   add min(128, int(v/10 * 110)) to pixels < 128    +99
color          factor v/10 * 1.8 + 0.1 (blend with grayscale)   1.72
contrast       same factor (blend with the mean gray level)     1.72
brightness     same factor (blend with black)                   1.72
sharpness      same factor (blend with a 3x3 smoothed image)    1.72
shear_x/y      +-v/10 * 0.3, about the top-left corner          +-0.27
translate_x/y  +-v/10 * 0.45 of the width / height              +-0.405 (91 px at 224)
============== ================================================ ================================

Geometric ops fill with the dataset mean (timm's ``img_mean``) and sample bilinearly.

**Colour jitter** as torchvision's ``ColorJitter(v, v, v)`` (timm's ``--color-jitter v``): brightness, contrast and
saturation factors uniform in ``[max(0, 1 - v), 1 + v]``, applied in a random order drawn per image.

**Random erasing** (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, arXiv 1708.04896) as timm's
``RandomErasing`` (``timm/data/random_erasing.py``) on normalised images: with ``probability`` an image gets one box
of area fraction uniform in ``[min_area, max_area]`` and aspect ratio log-uniform in ``[min_aspect, max_aspect]``
(``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``, ten attempts, the first with
``h < H and w < W`` taken, none: no box), at a uniform position; filled with per-pixel N(0, 1) noise (``pixel``), one
N(0, 1) colour per channel (``rand``) or zeros (``const``).

Pipeline order (:class:`BatchAugment`), as timm's ``transforms_imagenet_train``: crop and flip (the loader), then
RandAugment, then colour jitter (uint8), then normalisation, then random erasing (float), then Mixup/CutMix
(:mod:`kdlab.data.augment_mix`).

Deviations from the references:
- Pixel arithmetic follows torchvision's uint8 tensor path (blends in float32, clamped and truncated; grayscale
  ``0.2989 R + 0.587 G + 0.114 B`` truncated), not Pillow's rounding; geometric ops sample through
  ``affine_grid``/``grid_sample`` (bilinear with the fill blended at the borders) where timm picks bilinear or
  bicubic Pillow resampling at random.
- timm disables colour jitter whenever RandAugment is on (``transforms_imagenet_train``, unless
  ``force_color_jitter``); kdlab applies both when both are set, because DIST's B3 lists both.
- Random erasing draws one box per image (timm's default ``max_count=1``); no ``num_splits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.augment_config import UNIFORM_MAGNITUDE_STD, RandAugmentConfig, RandomErasingConfig
from kdlab.data.randaugment import _affine_grid, _autocontrast, _equalize

__all__ = [
    "TIMM_RAND_OPS",
    "BatchAugment",
    "apply_color_jitter",
    "color_jitter",
    "color_jitter_params",
    "random_erasing",
    "timm_rand_augment",
    "timm_rand_augment_ops",
]

#: timm's ``_RAND_TRANSFORMS``, in its order; :func:`timm_rand_augment_ops` takes indices into it.
TIMM_RAND_OPS: tuple[str, ...] = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
_LEVEL_DENOM = 10.0  # timm's magnitude scale


#: On the CPU the batch is processed in chunks of about this many bytes of float32 (the elementwise ops are
#: memory-bound: a chunk that stays in cache is 2-4x faster than one pass over a 77 MB batch of 128 images at 224 px;
#: one image per chunk at 224 px, 85 at 32 px).
#: The draws are made for the whole batch first, so the result does not depend on the chunking.
CPU_CHUNK_BYTES = 2**20


def _chunk_size(x: Tensor) -> int:
    """Images per chunk: the whole batch on accelerators, about :data:`CPU_CHUNK_BYTES` of float32 on the CPU."""
    if x.device.type != "cpu":
        return max(1, x.shape[0])
    return max(1, CPU_CHUNK_BYTES // (4 * x[0].numel()))


def _by_chunks(fn, x: Tensor, *per_image: Tensor) -> Tensor:
    """``fn(x_chunk, *per_image_chunks)`` over chunks of the batch (see :func:`_chunk_size`), concatenated."""
    n = _chunk_size(x)
    if n >= x.shape[0]:
        return fn(x, *per_image)
    parts = zip(x.split(n), *(t.split(n, dim=-1) for t in per_image))
    return torch.cat([fn(*p) for p in parts])


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` float luma ``0.2989 R + 0.587 G + 0.114 B`` truncated (the image itself if C = 1)."""
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.float().unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)  # torchvision's arithmetic


def blend(x: Tensor, degenerate: Tensor | None, factor: Tensor, scratch: Tensor | None = None) -> Tensor:
    """``(f * x + (1 - f) * degenerate).clamp(0, 255)`` truncated to uint8, one factor per image.

    Args:
        x: ``[B, C, H, W]`` uint8.
        degenerate: float broadcastable to ``x`` (``[B, 1, H, W]``, ``[B, 1, 1, 1]``), or None for black.
        factor: ``[B]`` factors.
        scratch: ``x`` as float32, which the blend may overwrite (saves a conversion when the caller has it).
    """
    f = _col(factor.to(torch.float32))
    out = (x.float() if scratch is None else scratch).mul_(f)
    if degenerate is not None:
        out.addcmul_(degenerate, 1.0 - f)
    return out.clamp_(0, 255).to(torch.uint8)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend ``[B, C, H, W]`` uint8 with black by ``[B]`` factors."""
    return blend(x, None, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend ``[B, C, H, W]`` uint8 with its grayscale by ``[B]`` factors (one-channel images are unchanged)."""
    if x.shape[1] == 1:
        return x
    xf = x.float()
    return blend(x, _gray(xf), factor, xf)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend ``[B, C, H, W]`` uint8 with its mean gray level by ``[B]`` factors."""
    xf = x.float()
    return blend(x, _gray(xf).mean(dim=(-3, -2, -1), keepdim=True), factor, xf)


def adjust_sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend ``[B, C, H, W]`` uint8 with its 3x3-smoothed version (kernel ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, border
    pixels kept) by ``[B]`` factors."""
    c, h, w = x.shape[1:]
    if h <= 2 or w <= 2:
        return x
    kernel = torch.ones(3, 3, dtype=torch.float32, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    xf = x.float()
    smooth = xf.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(xf, kernel, groups=c).round_()
    return blend(x, smooth, factor, xf)


def _warp(x: Tensor, m: tuple[Tensor, ...], fill: Tensor) -> Tensor:
    """Bilinear warp of ``[B, C, H, W]`` uint8 by per-image inverse maps ``m = (a, b, c, d, e, f)``: the output pixel at
    ``(u, v)`` (pixel units from the image centre) reads the source at ``(a u + b v + c, d u + e v + f)``; outside
    the image the source is ``fill`` (``[1, C, 1, 1]`` float, 0..255)."""
    grid = _affine_grid(m, x.shape)
    warped = F.grid_sample(x.float().sub_(fill), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.add_(fill).round_().clamp_(0, 255).to(torch.uint8)


def _level(mag: Tensor, scale: float) -> Tensor:
    return mag / _LEVEL_DENOM * scale


def _op_rotate(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    r = torch.deg2rad(-sign * _level(mag, 30.0))  # Pillow's rotate: counter-clockwise for a positive angle
    zero = torch.zeros_like(r)
    return _warp(x, (torch.cos(r), torch.sin(r), zero, -torch.sin(r), torch.cos(r), zero), fill)


def _op_shear_x(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    k = sign * _level(mag, 0.3)  # Pillow's affine (1, k, 0, 0, 1, 0): source x = x + k * y, y from the top edge
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return _warp(x, (one, k, k * x.shape[-2] / 2, zero, one, zero), fill)


def _op_shear_y(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    k = sign * _level(mag, 0.3)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return _warp(x, (one, zero, zero, k, one, k * x.shape[-1] / 2), fill)


def _op_translate_x(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    t = sign * _level(mag, 0.45) * x.shape[-1]  # Pillow's affine (1, 0, t, 0, 1, 0): source x = x + t
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return _warp(x, (one, zero, t, zero, one, zero), fill)


def _op_translate_y(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    t = sign * _level(mag, 0.45) * x.shape[-2]
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    return _warp(x, (one, zero, zero, zero, one, t), fill)


def _enhance_factor(mag: Tensor) -> Tensor:
    return _level(mag, 1.8) + 0.1


def _op_posterize(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    bits = _level(mag, 4.0).floor().long()  # 0..4 bits kept
    mask = (256 - 2 ** (8 - bits)) & 0xFF
    return x & _col(mask.to(torch.uint8))


def _op_solarize(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    thresh = _level(mag, 256.0).floor().clamp(max=256.0)
    return torch.where(x.float() >= _col(thresh.float()), 255 - x, x)


def _op_solarize_add(x: Tensor, mag: Tensor, sign: Tensor, fill: Tensor) -> Tensor:
    add = _level(mag, 110.0).floor().clamp(max=128.0)
    added = (x.float() + _col(add.float())).clamp(max=255.0).to(torch.uint8)
    return torch.where(x < 128, added, x)


_TIMM_OP_FNS = (
    lambda x, mag, sign, fill: _autocontrast(x, sign, {}),
    lambda x, mag, sign, fill: _equalize(x, sign, {}),
    lambda x, mag, sign, fill: 255 - x,
    _op_rotate,
    _op_posterize,
    _op_solarize,
    _op_solarize_add,
    lambda x, mag, sign, fill: adjust_saturation(x, _enhance_factor(mag)),
    lambda x, mag, sign, fill: adjust_contrast(x, _enhance_factor(mag)),
    lambda x, mag, sign, fill: adjust_brightness(x, _enhance_factor(mag)),
    lambda x, mag, sign, fill: adjust_sharpness(x, _enhance_factor(mag)),
    _op_shear_x,
    _op_shear_y,
    _op_translate_x,
    _op_translate_y,
    lambda x, mag, sign, fill: x,  # not applied (the op's probability)
)
_SKIP = len(TIMM_RAND_OPS)


def _grouped(x: Tensor, ops: Tensor, num_ops: int, fns, *per_image: Tensor) -> Tensor:
    """Run ``fns[k]`` once on the images whose ``ops`` is ``k`` (one gather) and write the results back (one scatter);
    the ``per_image`` ``[B]`` tensors are gathered alongside. A batch with one op runs it directly. One host-device
    synchronisation (the group sizes)."""
    counts = torch.bincount(ops, minlength=num_ops).tolist()
    live = [k for k in range(num_ops) if counts[k]]
    if len(live) == 1:
        return fns[live[0]](x, *per_image)
    groups = torch.argsort(ops, stable=True).split(counts)
    out = torch.empty_like(x)
    for k in live:
        idx = groups[k]
        out.index_copy_(0, idx, fns[k](x.index_select(0, idx), *(t.index_select(0, idx) for t in per_image)))
    return out


def timm_rand_augment_ops(
    x: Tensor, ops: Tensor, magnitudes: Tensor, signs: Tensor, fill: tuple[float, ...] | Tensor = 128.0
) -> Tensor:
    """One round of timm's RandAugment with given draws: image ``i`` gets op ``ops[i]`` at ``magnitudes[i]``.

    Args:
        x: ``[B, C, H, W]`` uint8 images (C = 1 or 3).
        ops: ``[B]`` indices into :data:`TIMM_RAND_OPS`, or ``len(TIMM_RAND_OPS)`` for "not applied".
        magnitudes: ``[B]`` magnitudes on the 0..10 scale.
        signs: ``[B]`` +1 or -1 (the random negation of the signed ops).
        fill: fill of the geometric ops, 0..255 per channel (timm: the dataset mean).

    Returns:
        ``[B, C, H, W]`` uint8.
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"RandAugment expects [B, C, H, W] uint8 images with C = 1 or 3, got {x.dtype} {tuple(x.shape)}"
        )
    fill_t = torch.as_tensor(fill, dtype=torch.float32, device=x.device).reshape(-1)
    fill_t = fill_t.expand(x.shape[1]).reshape(1, -1, 1, 1)
    fns = [lambda xs, m, s, fn=fn: fn(xs, m, s, fill_t) for fn in _TIMM_OP_FNS]
    mags = magnitudes.to(device=x.device, dtype=torch.float64)
    sgn = signs.to(device=x.device, dtype=torch.float64)
    return _grouped(x, ops.to(device=x.device, dtype=torch.long), len(fns), fns, mags, sgn)


def draw_magnitudes(
    shape: tuple[int, ...], magnitude: float, magnitude_std: float, generator: torch.Generator | None, device
) -> Tensor:
    """Per-application magnitudes as timm's ``AugmentOp``: fixed (``std = 0``), N(m, std) clipped to [0, 10], or
    uniform on [0, m] (``std >= 100``). Returns float64 of ``shape``."""
    if magnitude_std <= 0:
        return torch.full(shape, float(magnitude), dtype=torch.float64, device=device)
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    if magnitude_std >= UNIFORM_MAGNITUDE_STD:
        return u * magnitude
    normal = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return (magnitude + magnitude_std * normal).clamp(0.0, _LEVEL_DENOM)


def timm_rand_augment(
    x: Tensor,
    cfg: RandAugmentConfig,
    generator: torch.Generator | None = None,
    fill: tuple[float, ...] | Tensor = 128.0,
) -> Tensor:
    """timm's RandAugment on a uint8 batch, every draw per image (see the module docstring).

    Args:
        x: ``[B, C, H, W]`` uint8 images on any device (C = 1 or 3).
        cfg: ``num_ops``, ``magnitude``, ``magnitude_std``, ``probability``.
        generator: a ``torch.Generator`` on ``x``'s device (None: the global RNG).
        fill: fill of the geometric ops, 0..255 per channel.

    Returns:
        ``[B, C, H, W]`` uint8.
    """
    b, n, dev = x.shape[0], cfg.num_ops, x.device
    ops = torch.randint(0, len(TIMM_RAND_OPS), (n, b), generator=generator, device=dev)
    applied = torch.rand((n, b), generator=generator, device=dev) < cfg.probability
    ops = torch.where(applied, ops, torch.full_like(ops, _SKIP))
    signs = 1 - 2 * torch.randint(0, 2, (n, b), generator=generator, device=dev)
    mags = draw_magnitudes((n, b), cfg.magnitude, cfg.magnitude_std, generator, dev)

    def rounds(xs: Tensor, ops_c: Tensor, mags_c: Tensor, signs_c: Tensor) -> Tensor:
        for i in range(n):
            xs = timm_rand_augment_ops(xs, ops_c[i], mags_c[i], signs_c[i], fill)
        return xs

    return _by_chunks(rounds, x, ops, mags, signs)


def color_jitter(x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """torchvision's ``ColorJitter(strength, strength, strength)`` with every draw per image.

    Brightness, contrast and saturation factors uniform in ``[max(0, 1 - strength), 1 + strength]``, applied in a
    random order per image (torchvision's ``randperm`` per call), each a blend ``f x + (1 - f) d`` clamped and
    truncated to integers as torchvision's uint8 path: ``d`` is black (brightness), the mean gray level (contrast) or
    the grayscale image (saturation). All three are one formula, so each of the three rounds is one pass over the
    batch with per-image selectors instead of a sort by op.

    Args:
        x: ``[B, C, H, W]`` uint8 (C = 1 or 3).
        strength: the jitter ``v``; 0 returns ``x``.
        generator: on ``x``'s device.

    Returns:
        ``[B, C, H, W]`` uint8.
    """
    if strength <= 0:
        return x
    factors, order = color_jitter_params(x.shape[0], strength, generator, x.device)
    return apply_color_jitter(x, factors, order)


def color_jitter_params(
    batch: int, strength: float, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """Per-image draws of :func:`color_jitter`.

    Returns:
        ``factors`` ``[3, B]`` (brightness, contrast, saturation; uniform in ``[max(0, 1 - v), 1 + v]``) and ``order``
        ``[3, B]``: the op (0 brightness, 1 contrast, 2 saturation) of each round, a uniform permutation per image.
    """
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    factors = lo + (hi - lo) * torch.rand((3, batch), generator=generator, device=device)
    order = torch.argsort(torch.rand((batch, 3), generator=generator, device=device), dim=1).T
    return factors, order


def apply_color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Colour jitter of ``[B, C, H, W]`` uint8 with given draws (:func:`color_jitter_params`); returns uint8."""
    return _by_chunks(_jitter_rounds, x, factors, order.to(x.device))


def _jitter_rounds(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """The three blend rounds of :func:`color_jitter`: ``factors`` ``[3, B]``, ``order`` ``[3, B]`` (op per round)."""
    out = x.float()
    for r in range(3):
        op = order[r]
        f = _col(factors.gather(0, op[None]).squeeze(0))
        gray = _gray(out)  # [B, 1, H, W], integer-valued
        is_con, is_sat = _col((op == 1).float()), _col((op == 2).float())
        if x.shape[1] == 1:  # saturation of a one-channel image: unchanged (as torchvision)
            f = torch.where(is_sat > 0, torch.ones_like(f), f)
        degenerate = gray.mean(dim=(-2, -1), keepdim=True) * is_con + gray * is_sat
        out = out.mul_(f).addcmul_(degenerate, 1.0 - f).clamp_(0, 255).floor_()
    return out.to(torch.uint8)


def random_erasing(x: Tensor, cfg: RandomErasingConfig, generator: torch.Generator | None = None) -> Tensor:
    """timm's ``RandomErasing`` with every draw per image (see the module docstring).

    Args:
        x: ``[B, C, H, W]`` float images, normalised (the noise is N(0, 1) in normalised units); erased in place,
            as timm's (only the boxes' pixels are written).
        cfg: probability, mode, area and aspect ranges.
        generator: on ``x``'s device.

    Returns:
        ``x``.
    """
    b, c, h, w = x.shape
    dev = x.device
    max_aspect = cfg.max_aspect or 1.0 / cfg.min_aspect
    log_lo, log_hi = math.log(cfg.min_aspect), math.log(max_aspect)

    def uniform(shape, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)

    erase = torch.rand(b, generator=generator, device=dev) < cfg.probability
    target = uniform((b, 10), cfg.min_area, cfg.max_area) * (h * w)
    aspect = torch.exp(uniform((b, 10), log_lo, log_hi))
    bh = torch.round(torch.sqrt(target * aspect)).long()
    bw = torch.round(torch.sqrt(target / aspect)).long()
    ok = (bh < h) & (bw < w)
    first = ok.long().argmax(dim=1, keepdim=True)  # the first attempt that fits
    erase &= ok.any(dim=1)
    bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)
    top = (torch.rand(b, generator=generator, device=dev, dtype=torch.float64) * (h - bh + 1)).floor().long()
    left = (torch.rand(b, generator=generator, device=dev, dtype=torch.float64) * (w - bw + 1)).floor().long()
    # only the erased pixels are touched: their (image, row, column) indices, box by box in row-major order
    sel = erase.nonzero().squeeze(1)
    if sel.numel() == 0:
        return x
    top, left, bh, bw = top[sel], left[sel], bh[sel], bw[sel]
    counts = bh * bw
    box = torch.repeat_interleave(torch.arange(sel.numel(), device=dev), counts)  # [P]
    local = torch.arange(box.numel(), device=dev) - (counts.cumsum(0) - counts)[box]
    rows = top[box] + local // bw[box]
    cols = left[box] + local % bw[box]
    if cfg.mode == "pixel":
        values = torch.randn((box.numel(), c), generator=generator, device=dev, dtype=x.dtype)
    elif cfg.mode == "rand":
        values = torch.randn((sel.numel(), c), generator=generator, device=dev, dtype=x.dtype)[box]
    else:
        values = torch.zeros((), device=dev, dtype=x.dtype)
    x[sel[box], :, rows, cols] = values  # [P, C]
    return x


@dataclass
class BatchAugment:
    """The per-sample augmentations a :class:`~kdlab.config.DataConfig` asks for, in timm's order.

    Attributes:
        rand_augment: RandAugment settings, or None.
        color_jitter: jitter strength (0: off).
        random_erasing: erasing settings, or None.
        fill: fill of RandAugment's geometric ops, 0..255 per channel (the dataset mean).
    """

    rand_augment: RandAugmentConfig | None = None
    color_jitter: float = 0.0
    random_erasing: RandomErasingConfig | None = None
    fill: tuple[float, ...] = (128.0,)

    @classmethod
    def from_config(cls, cfg, mean: tuple[float, ...]) -> BatchAugment:
        """From a :class:`~kdlab.config.DataConfig` and the dataset's mean in [0, 1] (the fill, as timm's
        ``img_mean = round(255 * mean)``)."""
        fill = tuple(float(min(255, round(255 * m))) for m in mean)
        return cls(cfg.rand_augment, cfg.color_jitter, cfg.random_erasing, fill)

    @property
    def uint8_active(self) -> bool:
        """Whether any op of the uint8 stage (RandAugment, colour jitter) is on."""
        return self.rand_augment is not None or self.color_jitter > 0

    def uint8_stage(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """RandAugment then colour jitter on ``[B, C, H, W]`` uint8 (after crop and flip, before normalisation)."""
        if self.rand_augment is not None:
            x = timm_rand_augment(x, self.rand_augment, generator, self.fill)
        if self.color_jitter > 0:
            x = color_jitter(x, self.color_jitter, generator)
        return x

    def float_stage(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random erasing on normalised ``[B, C, H, W]`` float images."""
        if self.random_erasing is not None and self.random_erasing.probability > 0:
            x = random_erasing(x, self.random_erasing, generator)
        return x
