"""Transfer: a linear classifier on a frozen student's features of another dataset (a linear probe).

TeKAP (ICLR 2025) freezes a CIFAR-100 student and reports the accuracy of a linear classifier trained on its
features of STL-10 and Tiny-ImageNet (following CRD, Tian et al., ICLR 2020, arXiv 1910.10699). Here: the target
dataset's images (any registered dataset, ``uint8 [N, H, W, C]``) are converted batch-wise on the device to the
student's input: to ``[0, 1]``, to the student's channel count (luminance ``0.299 R + 0.587 G + 0.114 B`` for a
1-channel student, repetition for a 3-channel student fed grey images), resized bilinearly to its input size
(anti-aliased when shrinking) and normalised with the student's training mean and std. The student's ``pool``
embedding is the feature. A multinomial logistic regression
``min_{W,b} mean_i CE(W f_i + b, y_i) + l2 / 2 * ||W||^2`` on standardised features is fitted full-batch with L-BFGS
(strong Wolfe line search) on the target's training split, from a seeded small random start, and evaluated on its
test split. The same probe on a randomly initialised student of the same architecture is the reference row.

Deviations: CRD's linear evaluation trains the linear layer with SGD on augmented images for many epochs; this
probe fits un-augmented features by L-BFGS (deterministic and fast, on any device).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun

log = logging.getLogger("kdlab")

_LUMA = (0.299, 0.587, 0.114)


def prepare_images(
    x: Tensor, input_size: tuple[int, int, int], mean: Tensor, std: Tensor, device: torch.device | None = None
) -> Tensor:
    """Convert a batch of another dataset to a model's normalised input.

    Args:
        x: ``[B, H, W, C]`` uint8 images.
        input_size: the model's ``(C', H', W')``.
        mean, std: the model's normalisation (``C'`` values each, any shape that flattens to ``[C']``).
        device: where to convert (default: ``x``'s device).

    Returns:
        ``[B, C', H', W']`` float32: ``(resize(channels(x / 255)) - mean) / std``.
    """
    c_out, h_out, w_out = input_size
    img = x.to(device or x.device).permute(0, 3, 1, 2).float().div_(255.0)
    c_in = img.shape[1]
    if c_in != c_out:
        if c_in == 3 and c_out == 1:
            luma = torch.tensor(_LUMA, device=img.device).view(1, 3, 1, 1)
            img = (img * luma).sum(dim=1, keepdim=True)
        elif c_in == 1:
            img = img.expand(-1, c_out, -1, -1)
        else:
            raise AnalysisError(f"cannot feed {c_in}-channel images to a model trained on {c_out} channels")
    if img.shape[2:] != (h_out, w_out):
        shrink = img.shape[2] > h_out or img.shape[3] > w_out
        img = F.interpolate(img, size=(h_out, w_out), mode="bilinear", align_corners=False, antialias=shrink)
    mean = mean.to(img.device).reshape(1, c_out, 1, 1)
    std = std.to(img.device).reshape(1, c_out, 1, 1)
    return (img - mean) / std


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Tensor,
    input_size: tuple[int, int, int],
    mean: Tensor,
    std: Tensor,
    device: torch.device,
    batch_size: int = 256,
) -> Tensor:
    """``[N, D]`` ``pool`` features (on the CPU) of ``images [N, H, W, C]`` uint8, batch-wise on ``device``."""
    was = model.training
    model.eval()
    feats = []
    for start in range(0, images.shape[0], batch_size):
        x = prepare_images(images[start : start + batch_size], input_size, mean, std, device)
        _, taps = model.forward_taps(x, ("pool",))
        feats.append(taps["pool"].float().flatten(1).cpu())
    model.train(was)
    if not feats:
        raise AnalysisError("the target split has no images")
    return torch.cat(feats)


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features.

    Attributes:
        weight: ``[K, D]``; bias: ``[K]``; mean, std: ``[D]`` feature standardisation (from the training features).
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor

    def logits(self, feats: Tensor) -> Tensor:
        """``[N, K]`` class scores of ``[N, D]`` features."""
        return ((feats - self.mean) / self.std) @ self.weight.T + self.bias


def fit_linear_probe(
    feats: Tensor, y: Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 200, seed: int = 0
) -> LinearProbe:
    """Fit ``softmax(W f + b)`` to ``[N, D]`` features and ``[N]`` labels by full-batch L-BFGS.

    Args:
        feats: training features; y: labels in ``0..num_classes-1``.
        l2: weight of ``1/2 ||W||^2`` (not on the bias).
        max_iter: L-BFGS iterations.
        seed: seed of the small random start.
    """
    if l2 < 0:
        raise AnalysisError(f"--l2 must be >= 0, got {l2}")
    if max_iter < 1:
        raise AnalysisError(f"--max-iter must be >= 1, got {max_iter}")
    feats = feats.double()
    mean, std = feats.mean(dim=0), feats.std(dim=0).clamp(min=1e-6)
    z = (feats - mean) / std
    g = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(num_classes, z.shape[1], generator=g, dtype=torch.float64)).requires_grad_(True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std)


def _topk(logits: Tensor, y: Tensor) -> tuple[float, float]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return 100.0 * float((top[:, 0] == y).double().mean()), 100.0 * float((top == y[:, None]).any(1).double().mean())


def transfer(
    opened: OpenedRun,
    dataset: str,
    root: str | None = None,
    data_overrides: tuple[str, ...] = (),
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    baseline: bool = True,
    batch_size: int = 256,
) -> AnalysisResult:
    """Linear-probe accuracy of the run's frozen student on ``dataset`` (and of a random-init student).

    Args:
        opened: the run.
        dataset: registry name of the target dataset (``kdlab list datasets``).
        root: its ``data.root``; data_overrides: more ``key=value`` of its data section (``train_per_class=...``).
        l2, max_iter, seed: of :func:`fit_linear_probe`.
        baseline: also probe a randomly initialised student (seeded by ``seed``).
    """
    from kdlab import models
    from kdlab.config import build_config
    from kdlab.data import load_dataset

    section = {"name": dataset}
    if root is not None:
        section["root"] = root
    target_cfg = build_config({"data": section}, [f"data.{o}" for o in data_overrides]).data
    target = load_dataset(target_cfg)
    student = opened.loaded.run.student
    if "pool" not in student.tap_names():
        raise AnalysisError(f"model {opened.cfg.model.student!r} has no 'pool' tap to take features from")
    data, device = opened.data, opened.device
    size = data.input_size
    candidates = {"student": student}
    if baseline:
        torch.manual_seed(seed)
        fresh = models.create(opened.cfg.model.student, num_classes=data.num_classes, in_channels=size[0])
        candidates["random-init student"] = fresh.to(device)
    rows, fits = [], {}
    for name, model in candidates.items():
        tr = extract_features(model, target.train.x, size, data.mean, data.std, device, batch_size)
        te = extract_features(model, target.test.x, size, data.mean, data.std, device, batch_size)
        probe = fit_linear_probe(tr, target.train.y, target.num_classes, l2, max_iter, seed)
        top1, top5 = _topk(probe.logits(te.double()), target.test.y)
        train_top1, _ = _topk(probe.logits(tr.double()), target.train.y)
        rows.append(
            {
                "features": name,
                "dataset": target.name,
                "train_images": len(target.train),
                "test_images": len(target.test),
                "feature_dim": int(tr.shape[1]),
                "top1": top1,
                "top5": top5,
                "train_top1": train_top1,
            }
        )
        fits[name] = top1
        log.info("transfer %s -> %s: %s top1 %.2f", opened.cfg.data.name, target.name, name, top1)
    _, h, w, c = target.train.x.shape
    notes = [
        f"frozen {opened.cfg.model.student} ({opened.cfg.method.name}, trained on {opened.cfg.data.name}) -> "
        f"{target.name}: images {h}x{w}x{c} resized to {size[1]}x{size[2]}x{size[0]}; 'pool' features.",
        f"multinomial logistic regression, L-BFGS {max_iter} iterations, l2 {l2:g}, seed {seed}; "
        f"chance is {100.0 / target.num_classes:.2f}% top-1.",
    ]

    def plot(fig) -> None:
        ax = fig.subplots()
        names = list(fits)
        ax.bar(names, [fits[n] for n in names], color=["C0", "C7"][: len(names)])
        ax.axhline(100.0 / target.num_classes, color="gray", linestyle="--", label="chance")
        ax.set_ylabel(f"linear-probe top-1 on {target.name} (%)")
        ax.set_ylim(0, 100)
        ax.legend()
        ax.set_title(f"Transfer {opened.cfg.data.name} -> {target.name}")

    return AnalysisResult(
        name=f"transfer_{target.name}",
        title=f"Transfer by linear probe: {opened.cfg.method.name}, {opened.cfg.data.name} -> {target.name}",
        columns=["features", "dataset", "train_images", "test_images", "feature_dim", "top1", "top5", "train_top1"],
        rows=rows,
        notes=notes,
        plot=plot,
        extra={"l2": l2, "max_iter": max_iter, "seed": seed, "num_classes": target.num_classes},
    )
