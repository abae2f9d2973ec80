"""Batched RandAugment: every op against an independent numpy/PIL computation, grouping, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kdlab.data.randaugment import RAND_AUGMENT_OPS, apply_ops, rand_augment

OP = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
B, H, W = 6, 12, 10


def images(seed: int = 0, b: int = B, c: int = 3, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def run(x: torch.Tensor, op: str, sign: int = 1, magnitude: int = 10) -> torch.Tensor:
    n = x.shape[0]
    return apply_ops(x, torch.full((n,), OP[op]), torch.full((n,), sign), magnitude)


def np_blend(x: np.ndarray, degenerate: np.ndarray, factor: float) -> np.ndarray:
    f, g = np.float32(factor), np.float32(1.0 - factor)
    return np.clip(f * x.astype(np.float32) + g * degenerate.astype(np.float32), 0, 255).astype(np.uint8)


def np_gray(x: np.ndarray) -> np.ndarray:
    r, g, b = (x[:, i].astype(np.float32) for i in range(3))
    return (np.float32(0.2989) * r + np.float32(0.587) * g + np.float32(0.114) * b).astype(np.uint8)[:, None]


ENHANCE = torch.linspace(0.0, 0.9, 31)[10].item()  # 0.29999998: torchvision reads the float32 linspace


def test_op_list_is_torchvisions():
    assert RAND_AUGMENT_OPS == (
        "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
        "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
    )  # fmt: skip


def test_identity():
    x = images()
    assert torch.equal(run(x, "identity"), x)


def test_posterize_and_solarize():
    x = images(1)
    a = x.numpy()
    assert np.array_equal(run(x, "posterize").numpy(), a & 0b11111110)  # 7 bits at magnitude 10
    assert np.array_equal(run(x, "posterize", magnitude=30).numpy(), a & 0b11110000)  # 4 bits
    assert np.array_equal(run(x, "solarize").numpy(), np.where(a >= 170, 255 - a, a))


@pytest.mark.parametrize("sign", [1, -1])
def test_blends(sign):
    x = images(2)
    a = x.numpy()
    factor = 1.0 + sign * ENHANCE
    assert np.array_equal(run(x, "brightness", sign).numpy(), np_blend(a, np.zeros_like(a), factor))
    gray = np_gray(a)
    assert np.array_equal(run(x, "color", sign).numpy(), np_blend(a, np.broadcast_to(gray, a.shape), factor))
    mean = gray.astype(np.float32).mean(axis=(1, 2, 3), keepdims=True)
    assert np.array_equal(run(x, "contrast", sign).numpy(), np_blend(a, np.broadcast_to(mean, a.shape), factor))


def test_sharpness_blends_with_a_smoothed_interior():
    x = images(3)
    a = x.numpy().astype(np.float32)
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 5
    kernel /= kernel.sum()
    smooth = a.copy()
    for i in range(1, H - 1):
        for j in range(1, W - 1):
            smooth[:, :, i, j] = np.round((a[:, :, i - 1 : i + 2, j - 1 : j + 2] * kernel).sum(axis=(-2, -1)))
    expected = np_blend(x.numpy(), smooth, 1.0 + ENHANCE)
    out = run(x, "sharpness").numpy()
    assert np.mean(out == expected) > 0.99  # float summation order may move a value across a rounding boundary
    assert np.array_equal(out[..., 0, :], expected[..., 0, :])  # the border is the image itself


def test_autocontrast():
    x = images(4) // 2 + 20  # values in 20..147
    x[0, 1] = 77  # a flat channel stays as it is
    a = x.numpy().astype(np.float32)
    lo, hi = a.min(axis=(2, 3), keepdims=True), a.max(axis=(2, 3), keepdims=True)
    with np.errstate(divide="ignore"):
        scale = np.float32(255) * (np.float32(1) / (hi - lo))  # torch's (and torchvision's) `255.0 / t`
    flat = ~np.isfinite(scale)
    lo, scale = np.where(flat, 0, lo), np.where(flat, 1, scale)
    expected = np.clip((a - lo) * scale, 0, 255).astype(np.uint8)
    out = run(x, "autocontrast").numpy()
    assert np.array_equal(out, expected)
    assert np.array_equal(out[0, 1], x[0, 1].numpy())


def test_equalize_matches_pil():
    x = images(5, h=16, w=16) // 3  # fewer distinct levels
    x[1, 2] = 9  # one level only: unchanged
    out = run(x, "equalize").numpy()
    for i in range(B):
        for c in range(3):
            expected = np.asarray(ImageOps.equalize(Image.fromarray(x[i, c].numpy(), mode="L")))
            assert np.array_equal(out[i, c], expected), (i, c)


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("op", ["translate_x", "translate_y"])
def test_translate_by_whole_pixels_with_zero_fill(op, sign):
    x = images(6, h=32, w=32)
    out = run(x, op, sign).numpy()
    shift = 4 * sign  # int(150 / 331 * 32 * 10 / 30) = 4
    axis = 3 if op == "translate_x" else 2
    expected = np.roll(x.numpy(), shift, axis=axis)
    index = [slice(None)] * 4
    index[axis] = slice(0, shift) if shift > 0 else slice(shift, None)
    expected[tuple(index)] = 0
    assert np.array_equal(out, expected)


def test_shear_x_about_the_top_left_corner():
    x = images(7)
    out = run(x, "shear_x").numpy()
    expected = np.zeros_like(out)
    for i in range(H):
        for j in range(W):
            src = int(np.rint(j + 0.1 * (i + 0.5)))  # source column for row i (top row barely moves)
            if 0 <= src < W:
                expected[..., i, j] = x.numpy()[..., i, src]
    assert np.array_equal(out, expected)
    assert np.array_equal(run(x, "shear_y").numpy().transpose(0, 1, 3, 2)[..., 0, :], x.numpy()[..., :, 0])


def test_rotate_is_counter_clockwise_about_the_centre():
    x = torch.zeros(1, 1, 31, 31, dtype=torch.uint8)
    x[0, 0, 15, 25] = 255  # right of the centre
    out = run(x, "rotate", sign=1, magnitude=30)[0, 0]  # +30 degrees
    ((i, j),) = torch.nonzero(out).tolist()
    assert i < 15 and j > 15  # moved up: counter-clockwise as displayed
    assert (i, j) == (round(15 - 10 * np.sin(np.pi / 6)), round(15 + 10 * np.cos(np.pi / 6)))
    out = run(x, "rotate", sign=-1, magnitude=30)[0, 0]
    ((i, j),) = torch.nonzero(out).tolist()
    assert i > 15  # clockwise


def test_mixed_ops_equal_each_op_alone():
    x = images(8, b=len(RAND_AUGMENT_OPS) * 2)
    ops = torch.arange(len(RAND_AUGMENT_OPS)).repeat(2)[torch.randperm(len(RAND_AUGMENT_OPS) * 2)]
    signs = torch.tensor([1, -1]).repeat(len(RAND_AUGMENT_OPS))
    out = apply_ops(x, ops, signs)
    for i in range(x.shape[0]):
        alone = apply_ops(x[i : i + 1], ops[i : i + 1], signs[i : i + 1])
        assert torch.equal(out[i : i + 1], alone), RAND_AUGMENT_OPS[int(ops[i])]


def test_rand_augment_is_deterministic_given_the_generator():
    x = images(9, b=32, h=32, w=32)
    a = rand_augment(x, torch.Generator().manual_seed(1))
    b = rand_augment(x, torch.Generator().manual_seed(1))
    c = rand_augment(x, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).float().mean() > 0.3


def test_grayscale_images_and_zero_ops():
    x = images(10, c=1)
    g = torch.Generator().manual_seed(0)
    assert rand_augment(x, g).shape == x.shape
    assert torch.equal(run(x, "color"), x)  # saturation of one channel: unchanged
    assert torch.equal(rand_augment(x, g, num_ops=0), x)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        rand_augment(torch.zeros(2, 3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="magnitude"):
        rand_augment(images(), torch.Generator(), magnitude=31)
