"""Per-sample augmentations (kdlab.data.augment): golden values against timm's and torchvision's ops, and the
per-sample distribution of every draw over batches of identical images."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from kdlab.augment_config import RandAugmentConfig, RandomErasingConfig
from kdlab.data.augment import (
    TIMM_RAND_OPS,
    BatchAugment,
    apply_color_jitter,
    color_jitter,
    color_jitter_params,
    draw_magnitudes,
    random_erasing,
    timm_rand_augment,
    timm_rand_augment_ops,
)

FILL = (124.0, 116.0, 104.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(h: int = 24, w: int = 28, seed: int = 0) -> torch.Tensor:
    """``[1, 3, H, W]`` uint8: a smooth gradient with a block (bilinear resampling differs little on it)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack((40 + 180 * xx, 30 + 170 * yy, 200 - 150 * xx * yy)).round().to(torch.uint8)
    img[:, h // 4 : h // 2, w // 3 : 2 * w // 3] = torch.tensor([230, 40, 90], dtype=torch.uint8).view(3, 1, 1)
    return img[None]


# ---------------------------------------------------------------------------------------------------- RandAugment


@pytest.mark.parametrize("k", range(len(TIMM_RAND_OPS)))
def test_rand_augment_op_matches_timm(k: int) -> None:
    """Each op at a fractional magnitude equals timm's Pillow op (bilinear): pixel ops exactly or within one level
    (enhance blends: Pillow rounds, kdlab truncates as torchvision), geometric ops up to resampling differences."""
    aa = pytest.importorskip("timm.data.auto_augment")
    from PIL import Image

    x = _image()
    pil = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    hparams = dict(aa._HPARAMS_DEFAULT, interpolation=Image.BILINEAR, img_mean=tuple(int(v) for v in FILL))
    name = aa._RAND_TRANSFORMS[k]
    op = aa.AugmentOp(name, prob=1.0, magnitude=7.3, hparams=hparams)
    random.seed(3)
    ref = torch.from_numpy(np.asarray(op(pil)).copy()).permute(2, 0, 1).int()
    random.seed(3)
    sign = -1.0 if random.random() > 0.5 else 1.0  # timm's _randomly_negate
    ours = timm_rand_augment_ops(x, torch.tensor([k]), torch.tensor([7.3]), torch.tensor([sign]), FILL)[0].int()
    diff = (ours - ref).abs()
    if TIMM_RAND_OPS[k] in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        # the interior within a level or two; the large differences are on the rotated/shifted image's border
        assert diff.float().mean() < 2.0 and (diff > 8).float().mean() < 0.06, (name, diff.float().mean())
    else:
        assert diff.max() <= 1, name


def test_rand_augment_ops_are_per_image() -> None:
    """Over identical images, every op of the round is recovered per image from its output: the op draws are
    uniform over the 15 ops, and a fraction 1 - p of the images is left unchanged (op probability p)."""
    n, p = 900, 0.6
    x = torch.randint(30, 231, (1, 3, 17, 17), dtype=torch.uint8, generator=_gen(0)).expand(n, -1, -1, -1).contiguous()
    cfg = RandAugmentConfig(num_ops=1, magnitude=8.0, magnitude_std=0.0, probability=p)
    out = timm_rand_augment(x, cfg, _gen(1), FILL)
    # candidate outputs: every op with both signs (magnitude fixed)
    cands = []
    for k in range(len(TIMM_RAND_OPS)):
        for s in (1.0, -1.0):
            cands.append(
                (k, timm_rand_augment_ops(x[:1], torch.tensor([k]), torch.tensor([8.0]), torch.tensor([s]), FILL)[0])
            )
    assert all(not torch.equal(c, x[0]) for _, c in cands)  # at m = 8 no op is the identity on this image
    stack = torch.stack([c for _, c in cands])  # [30, C, H, W]
    same = (out[:, None] == stack[None]).flatten(2).all(dim=2)  # [n, 30]
    unchanged = (out == x[0]).flatten(1).all(dim=1)
    assert (same.any(dim=1) | unchanged).all()  # every output is one of the candidates or the input
    ops = torch.tensor([k for k, _ in cands])
    found = torch.where(unchanged, -1, ops[same.float().argmax(dim=1)])
    applied = (found >= 0).float().mean().item()
    assert abs(applied - p) < 4 * math.sqrt(p * (1 - p) / n)
    counts = torch.bincount(found[found >= 0], minlength=15).float()
    expected = counts.sum() / 15
    # ops whose outputs coincide on this image would merge; here all 15 are told apart
    assert (counts > 0).all()
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 40.0  # 14 degrees of freedom: p < 1e-3
    # torchvision's RandAugment on a batch tensor: one op and magnitude for every image of the batch
    v2 = pytest.importorskip("torchvision.transforms.v2")
    torch.manual_seed(1)
    batch_out = v2.RandAugment(num_ops=1, magnitude=9)(x[:64])
    assert (batch_out == batch_out[:1]).all()


def test_magnitude_std_matches_timm() -> None:
    """``mstd``: per application N(m, mstd) clipped to [0, 10] (timm's AugmentOp), uniform on [0, m] at >= 100."""
    mags = draw_magnitudes((20000,), 9.0, 0.5, _gen(2), "cpu")
    rnd = random.Random(0)
    ref = torch.tensor([max(0.0, min(rnd.gauss(9.0, 0.5), 10.0)) for _ in range(20000)], dtype=torch.float64)
    assert abs(mags.mean() - ref.mean()) < 0.02 and abs(mags.std() - ref.std()) < 0.02
    assert mags.max() <= 10.0 and (mags == 10.0).float().mean() > 0.01  # the clip at 10 is hit (z > 2)
    assert mags.unique().numel() > 10000  # drawn per application, not once
    uni = draw_magnitudes((20000,), 9.0, 101.0, _gen(2), "cpu")
    assert uni.min() >= 0 and uni.max() <= 9.0 and abs(uni.mean() - 4.5) < 0.1
    fixed = draw_magnitudes((5,), 9.0, 0.0, None, "cpu")
    assert torch.equal(fixed, torch.full((5,), 9.0, dtype=torch.float64))


def test_rand_augment_is_deterministic_per_generator_and_chunking() -> None:
    """The same generator seed gives the same batch; the CPU chunking (memory-bound ops in cache-sized pieces)
    does not change the result."""
    import kdlab.data.augment as aug

    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=_gen(5))
    cfg = RandAugmentConfig()
    a = timm_rand_augment(x, cfg, _gen(7), FILL)
    old = aug.CPU_CHUNK_BYTES
    try:
        aug.CPU_CHUNK_BYTES = 4 * 3 * 16 * 16 * 3  # 3 images per chunk
        b = timm_rand_augment(x, cfg, _gen(7), FILL)
    finally:
        aug.CPU_CHUNK_BYTES = old
    assert torch.equal(a, b)
    assert not torch.equal(a, timm_rand_augment(x, cfg, _gen(8), FILL))


# --------------------------------------------------------------------------------------------------- colour jitter


def test_color_jitter_matches_torchvision_per_image() -> None:
    """With the per-image draws, every image equals torchvision's v2 functional ops applied in its own order."""
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.randint(0, 256, (48, 3, 20, 20), dtype=torch.uint8, generator=_gen(1))
    factors, order = color_jitter_params(48, 0.4, _gen(2))
    out = apply_color_jitter(x, factors, order)
    fns = (tf.adjust_brightness, tf.adjust_contrast, tf.adjust_saturation)
    for i in range(48):
        ref = x[i]
        for r in range(3):
            k = int(order[r, i])
            ref = fns[k](ref, float(factors[k, i]))
        assert torch.equal(out[i], ref), i


def test_color_jitter_draws_are_per_image() -> None:
    """Factors uniform on [0.6, 1.4] per image and op; the 6 orders equally frequent; identical images differ."""
    n = 6000
    factors, order = color_jitter_params(n, 0.4, _gen(3))
    assert factors.min() >= 0.6 and factors.max() <= 1.4
    assert torch.allclose(factors.mean(dim=1), torch.ones(3), atol=0.01)
    assert sorted(order[:, 0].tolist()) == [0, 1, 2] and (order.sort(dim=0).values == torch.arange(3)[:, None]).all()
    codes = order[0] * 9 + order[1] * 3 + order[2]
    counts = torch.bincount(codes, minlength=27)[codes.unique()].float()
    assert counts.numel() == 6 and ((counts - n / 6).abs() < 4 * math.sqrt(n / 6)).all()
    x = _image().expand(256, -1, -1, -1).contiguous()
    out = color_jitter(x, 0.4, _gen(4))
    assert out.float().mean(dim=(1, 2, 3)).unique().numel() > 200
    # why kdlab has its own: torchvision's transform on a batch tensor draws once for the whole batch
    v2 = pytest.importorskip("torchvision.transforms.v2")
    torch.manual_seed(0)
    same = v2.ColorJitter(0.4, 0.4, 0.4)(x)
    assert not torch.equal(same[0], x[0]) and (same == same[:1]).all()


# ------------------------------------------------------------------------------------------------- random erasing


def _erased_boxes(out: torch.Tensor, value: float) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    hit = (out == value).all(dim=1)  # [B, H, W]
    boxes = []
    for m in hit:
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        if rows.numel():
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert int(m.sum()) == h * w  # a rectangle
            boxes.append((h, w))
    return hit.flatten(1).any(dim=1), boxes


def test_random_erasing_matches_timm_distribution() -> None:
    """Over identical images: the erased fraction is p and the box sizes follow timm's RandomErasing (run on the same
    number of single images), box by box per image."""
    re_mod = pytest.importorskip("timm.data.random_erasing")
    n, p, h, w = 3000, 0.4, 20, 24
    cfg = RandomErasingConfig(probability=p, mode="const")
    out = random_erasing(torch.ones(n, 3, h, w), cfg, _gen(5))
    erased, boxes = _erased_boxes(out, 0.0)
    assert abs(erased.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    random.seed(0)
    timm_re = re_mod.RandomErasing(probability=p, mode="const", device="cpu")
    ref = torch.stack([timm_re(torch.ones(3, h, w)) for _ in range(n)])
    ref_erased, ref_boxes = _erased_boxes(ref, 0.0)
    assert abs(erased.float().mean() - ref_erased.float().mean()) < 6 * math.sqrt(p * (1 - p) / n)
    area = torch.tensor([a * b for a, b in boxes], dtype=torch.float64)
    ref_area = torch.tensor([a * b for a, b in ref_boxes], dtype=torch.float64)
    assert abs(area.mean() - ref_area.mean()) < 4 * ref_area.std() / math.sqrt(len(ref_boxes))
    assert max(a for a, _ in boxes) < h and max(b for _, b in boxes) < w
    aspect = torch.tensor([a / b for a, b in boxes]).log()
    ref_aspect = torch.tensor([a / b for a, b in ref_boxes]).log()
    assert abs(aspect.mean() - ref_aspect.mean()) < 4 * ref_aspect.std() / math.sqrt(len(ref_boxes))


def test_random_erasing_modes() -> None:
    """``pixel``: per-pixel N(0, 1) noise; ``rand``: one colour per box and channel; the rest untouched."""
    n = 400
    x = torch.full((n, 3, 16, 16), 5.0)
    out = random_erasing(x.clone(), RandomErasingConfig(probability=1.0, mode="pixel"), _gen(6))
    noise = out[out != 5.0]
    assert noise.numel() > 1000 and abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
    out = random_erasing(x.clone(), RandomErasingConfig(probability=1.0, mode="rand"), _gen(6))
    for i in range(20):
        vals = out[i][out[i] != 5.0].view(3, -1)
        assert (vals == vals[:, :1]).all()  # constant per channel in the box
    assert out[:, 0][out[:, 0] != 5.0].unique().numel() > n // 2  # a different colour per image


def test_batch_augment_from_config_off_is_identity() -> None:
    from kdlab.config import DataConfig

    aug = BatchAugment.from_config(DataConfig(), (0.5, 0.5, 0.5))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert not aug.uint8_active and torch.equal(aug.uint8_stage(x, None), x)
    assert aug.fill == (128.0, 128.0, 128.0)
    xf = torch.randn(4, 3, 8, 8)
    assert torch.equal(aug.float_stage(xf.clone(), None), xf)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["data.random_erasing.min_area=0.5", "data.random_erasing.max_area=0.2"], "min_area=0.5 is above max_area"),
        (["data.random_erasing.min_aspect=3"], "min_aspect=3 is above max_aspect"),
        (["data.rand_augment.magnitude=11"], "data.rand_augment.magnitude"),
        (["data.rand_augment.probability=1.5"], "data.rand_augment.probability"),
        (["data.color_jitter=-0.1"], "data.color_jitter"),
        (["data.random_erasing.mode=blur"], "data.random_erasing.mode"),
    ],
)
def test_bad_augmentation_settings_exit_2(tmp_path, override: list[str], message: str) -> None:
    from test_cli import kdlab_in_process

    from conftest import REPO

    cfg = str(REPO / "configs/debug/digits_ce.yaml")
    proc = kdlab_in_process("train", cfg, *override, f"train.run_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())
