"""A tiny Cityscapes-layout folder for tests: a few PNG pairs at small size (raw label ids, as the official files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# raw Cityscapes ids used in the fake label maps: road (7 -> 0), building (11 -> 2), sky (23 -> 10), car (26 -> 13),
# and void ids 0 and 1 (-> 255)
RAW_IDS = (7, 11, 23, 26, 0, 1)


def make_cityscapes(root: Path, n_train: int = 6, n_val: int = 2, size: tuple[int, int] = (32, 64), seed: int = 0):
    """Write ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and ``gtFine/.../*_gtFine_labelIds.png`` pairs of
    ``size`` (height, width) under ``root``; images are coloured by class so a model can learn them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {7: (128, 64, 128), 11: (70, 70, 70), 23: (70, 130, 180), 26: (0, 0, 142), 0: (0, 0, 0), 1: (20, 20, 20)}
    h, w = size
    for split, count, city in (("train", n_train, "aachen"), ("val", n_val, "frankfurt")):
        img_dir = root / "leftImg8bit" / split / city
        lab_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = np.full((h, w), 7, dtype=np.uint8)  # road
            label[: h // 3] = 23  # sky
            top, left = rng.integers(h // 4, h // 2), rng.integers(0, w // 2)
            label[top : top + h // 4, left : left + w // 3] = 26  # a car
            label[h // 3 : h // 2, w - w // 4 :] = 11  # building
            label[-2:, :3] = 0  # void
            label[0, -3:] = 1
            image = np.zeros((h, w, 3), dtype=np.uint8)
            for raw, colour in colours.items():
                image[label == raw] = colour
            image = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
            stem = f"{city}_{i:06d}_000019"
            Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label, mode="L").save(lab_dir / f"{stem}_gtFine_labelIds.png")
    return root


def cli(*args: str) -> tuple[int, str, str]:
    """``kdlab ARGS`` through :func:`kdlab.cli.main.main` in this process: ``(exit code, stdout, stderr + logs)``."""
    import contextlib
    import io
    import logging

    from kdlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logger = logging.getLogger("kdlab")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return code, out.getvalue(), err.getvalue()
