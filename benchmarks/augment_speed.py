"""Images/s of DIST's B2 and B3 training augmentations at 224 px: kdlab's batched ops against per-image pipelines.

Three implementations of the same ops, timed on the same uint8 ``[B, 3, 224, 224]`` batches of crops (the
random-resized crop itself is not timed: it is the decode-side step every pipeline shares):

- ``kdlab``: the loader's flip and normalisation and the batched, per-sample ops of :mod:`kdlab.data.augment` /
  :mod:`kdlab.data.augment_mix` on the whole batch (what the in-memory loader runs on the training device; a
  streaming worker runs RandAugment and colour jitter per image).
- ``torchvision``: torchvision's transforms v2 applied per image in a Python loop (the usual ``Dataset.__getitem__``
  form), then v2 ``MixUp``/``CutMix`` on the batch. RandAugment as timm's ``rand-m9`` structure: two
  ``RandomApply([RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=11)], p=0.5)`` (magnitude 9 of 10; torchvision
  has no magnitude noise, ``mstd``, and a slightly different op list).
- ``timm``: timm's own Pillow pipeline per image (``rand_augment_transform('rand-m9-mstd0.5')``, torchvision's PIL
  ``ColorJitter``, ``ToTensor``/``Normalize``, timm's ``RandomErasing(mode='pixel')``), then timm's ``Mixup`` on the
  batch: the reference implementation of DIST's strategies.

B2 = flip + RandAugment + normalise + random erasing (p 0.2, pixel); B3 = B2 + colour jitter 0.4 (before the
normalisation) + random erasing p 0.25 + Mixup 0.8 / CutMix 1.0 (switch 0.5). Every implementation runs on one
thread (``torch.set_num_threads(1)``: a decoding worker's share). Rounds are interleaved (kdlab, torchvision, timm,
kdlab, ...) so that load from other processes falls on all of them alike; the ratios are per round, then the median.

Usage: ``python benchmarks/augment_speed.py [--batch 64 --rounds 5 --out benchmarks/results/augment_speed.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from kdlab.augment_config import RandAugmentConfig, RandomErasingConfig
from kdlab.data.augment import BatchAugment
from kdlab.data.augment_mix import MixSettings, draw_mix, mix_batch
from kdlab.data.loader import BatchPlan, random_flip

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
K = 1000
STRATEGIES = {
    "B2": dict(color_jitter=0.0, erase_p=0.2, mix=False),
    "B3": dict(color_jitter=0.4, erase_p=0.25, mix=True),
}


def kdlab_pipeline(strategy: dict):
    ops = BatchAugment(
        RandAugmentConfig(num_ops=2, magnitude=9.0, magnitude_std=0.5, probability=0.5),
        strategy["color_jitter"],
        RandomErasingConfig(probability=strategy["erase_p"], mode="pixel"),
        tuple(float(round(255 * m)) for m in MEAN),
    )
    settings = MixSettings(0.8, 1.0, 1.0, 0.5) if strategy["mix"] else MixSettings()
    plan = BatchPlan()  # the loaders' own normalisation
    plan._scale = (1.0 / (255.0 * torch.tensor(STD))).view(1, 3, 1, 1)
    plan._shift = (torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    rng = np.random.default_rng(0)

    def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        x = ops.uint8_stage(random_flip(x, g), g)
        xf = ops.float_stage(plan.normalize(x), g)
        if settings.active:
            xf, y_soft, _, _ = mix_batch(xf, y, K, draw_mix(settings, rng, 224, 224))
            return xf, y_soft
        return xf, y

    return run


def torchvision_pipeline(strategy: dict):
    from torchvision.transforms import v2

    one = [
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=11)], p=0.5),
        v2.RandomApply([v2.RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=11)], p=0.5),
    ]
    if strategy["color_jitter"]:
        one.append(v2.ColorJitter(strategy["color_jitter"], strategy["color_jitter"], strategy["color_jitter"]))
    one += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=strategy["erase_p"], value="random"),
    ]
    per_image = v2.Compose(one)
    mix = v2.RandomChoice([v2.MixUp(alpha=0.8, num_classes=K), v2.CutMix(alpha=1.0, num_classes=K)])

    def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        xf = torch.stack([per_image(img) for img in x])
        return mix(xf, y) if strategy["mix"] else (xf, y)

    return run


def timm_pipeline(strategy: dict):
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.mixup import Mixup
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    hparams = dict(translate_const=int(224 * 0.45), img_mean=tuple(round(255 * m) for m in MEAN))
    steps = [T.RandomHorizontalFlip(), rand_augment_transform("rand-m9-mstd0.5", hparams)]
    if strategy["color_jitter"]:
        steps.append(T.ColorJitter(strategy["color_jitter"], strategy["color_jitter"], strategy["color_jitter"]))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    steps.append(RandomErasing(strategy["erase_p"], mode="pixel", device="cpu"))
    per_image = T.Compose(steps)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K) if strategy["mix"] else None

    def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        arrays = x.permute(0, 2, 3, 1).numpy()
        xf = torch.stack([per_image(Image.fromarray(a)) for a in arrays])
        return mixup(xf, y) if mixup is not None else (xf, y)

    return run


def natural_batch(batch: int, seed: int) -> torch.Tensor:
    """``[B, 3, 224, 224]`` uint8 with image-like statistics (smooth colour fields plus noise), so that the
    histogram- and content-dependent ops (equalize, autocontrast, solarize) do typical work."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 7, 7, generator=g) * 255
    smooth = torch.nn.functional.interpolate(low, size=(224, 224), mode="bicubic", align_corners=False)
    noise = torch.randn(batch, 3, 224, 224, generator=g) * 12
    return (smooth + noise).clamp(0, 255).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "augment_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = natural_batch(args.batch, 0)
    y = torch.randint(0, K, (args.batch,), generator=torch.Generator().manual_seed(1))
    impls = {"kdlab": kdlab_pipeline, "torchvision": torchvision_pipeline, "timm": timm_pipeline}
    results = {}
    for name, strategy in STRATEGIES.items():
        runs = {k: make(strategy) for k, make in impls.items()}
        for fn in runs.values():  # warm-up (imports, first-call allocations)
            fn(x[:4].clone(), y[:4].clone(), torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for k, fn in runs.items():
                g = torch.Generator().manual_seed(100 + r)
                t0 = time.perf_counter()
                out, _target = fn(x.clone(), y.clone(), g)
                times[k].append(time.perf_counter() - t0)
                assert out.shape == (args.batch, 3, 224, 224) and out.dtype == torch.float32
        ips = {k: [args.batch / t for t in ts] for k, ts in times.items()}
        ratios = {
            f"kdlab/{k}": statistics.median(a / b for a, b in zip(ips["kdlab"], ips[k])) for k in runs if k != "kdlab"
        }
        results[name] = {
            "images_per_s_median": {k: round(statistics.median(v), 1) for k, v in ips.items()},
            "images_per_s_rounds": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
            "ratio_median_of_rounds": {k: round(v, 2) for k, v in ratios.items()},
        }
        line = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in ips.items())
        print(f"{name}: images/s (median of {args.rounds} interleaved rounds, batch {args.batch}): {line}")
        print(f"{name}: kdlab speed-up per round, median: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    record = {
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": 1,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end)",
        "torch": torch.__version__,
        "strategies": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
