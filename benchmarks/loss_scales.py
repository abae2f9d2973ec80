"""Loss-term scales at step 0: each method's terms and the norm of each term's gradient on the student's parameters,
relative to the cross-entropy's, at the registered defaults, on two settings:

- ``demo``: the ``kdlab demo`` pair on digits (8x8 inputs, ``convnet_m`` teacher -> ``convnet_xs`` student, 30
  training images per class); the teacher checkpoint is ``--demo-teacher`` (``runs/demo/runs/demo_teacher/...``;
  without it a randomly initialised teacher, which changes the teacher-dependent terms).
- ``cifar``: a CIFAR-like setting with a trained teacher: the shared CIFAR-10 JPEG copy and the pretrained
  ResNet-56 (option A, akamaster) -> ResNet-20 (option A), batch 64 (``<data>`` defaults to
  ``<repo>/../shared/data``; the setting is skipped when it is missing).

The ratio |grad term| / |grad CE| is what decides whether a term with its published weight complements the
cross-entropy or swamps it: the published weights were chosen where that ratio is the ``cifar`` one.

    python benchmarks/loss_scales.py --demo-teacher runs/demo/runs/demo_teacher/teacher__convnet_m__s0/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def setting_config(setting: str, method: str, data_dir: Path, demo_teacher: str | None) -> dict:
    """The raw run config of ``method`` in ``setting`` (``demo`` or ``cifar``)."""
    if setting == "demo":
        data = {"name": "digits", "batch_size": 32, "augment": "crop_flip", "crop_padding": 1, "train_per_class": 30}
        model = {"student": "convnet_xs", "teachers": [{"name": "convnet_m", "checkpoint": demo_teacher}]}
    else:
        data = {
            "name": "npz",
            "root": str(data_dir / "cifar10_jpg"),
            "train_files": ["train_0.npz"],
            "test_file": "test.npz",
            "batch_size": 64,
            "test_limit": 500,
        }
        ckpt = data_dir / "cifar10_resnets_akamaster" / "resnet56-4bfd9763.th"
        norm = {"input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD}
        teacher = {"name": "resnet56_a", "checkpoint": str(ckpt), **norm}
        model = {"student": "resnet20_a", "teachers": [teacher]}
    if method == "ce":
        model = {"student": model["student"]}
    train = {"device": "cpu", "threads": 1, "seed": 0}
    return {"data": data, "model": model, "method": {"name": method}, "train": train}


def term_scales(raw: dict) -> dict[str, tuple[float, float]]:
    """``{term: (value, |grad| on the student's parameters)}`` on the first training batch of ``raw``."""
    from kdlab.config import build_config
    from kdlab.train.build import build_run
    from kdlab.train.trainer import TrainStep
    from kdlab.types import Progress

    run = build_run(build_config(raw))
    step = TrainStep(run.student, run.method, run.needs)
    step.train()
    batch = next(iter(run.data.train_batches(0)))
    teachers = tuple(t.outputs(batch, run.needs.views, run.needs.teacher_taps) for t in run.teachers)
    progress = Progress(step=0, epoch=0, step_in_epoch=0, steps_per_epoch=run.data.steps_per_epoch(), total_epochs=240)
    out = step(batch, teachers, progress)
    params = [p for p in run.student.parameters() if p.requires_grad]
    scales = {}
    for name, value in out.terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norm = math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None))
        scales[name] = (float(value.detach()), norm)
    return scales


def main(argv: list[str] | None = None) -> int:
    from kdlab.methods import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (cifar setting)")
    p.add_argument("--demo-teacher", default=None, help="the demo's teacher checkpoint.pt")
    p.add_argument("--methods", default=",".join(METHODS.names()), help="comma-separated methods")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = ["demo"]
    if (args.data / "cifar10_jpg" / "test.npz").is_file():
        settings.append("cifar")
    else:
        print(f"cifar setting skipped: no shared data under {args.data}", file=sys.stderr)
    table: dict[str, dict[str, dict]] = {}
    for method in args.methods.split(","):
        for setting in settings:
            try:
                scales = term_scales(setting_config(setting, method, args.data, args.demo_teacher))
            except Exception as err:  # a method that cannot run on a pair: say so and go on
                table.setdefault(method, {})[setting] = {"error": f"{type(err).__name__}: {err}"}
                continue
            ce = next((g for k, (_, g) in scales.items() if k == "ce"), None)
            table.setdefault(method, {})[setting] = {
                k: {"value": v, "grad": g, "grad_over_ce": (g / ce if ce else None)} for k, (v, g) in scales.items()
            }
    print(f"| method | term | {' | '.join(f'{s}: value, |grad|/|grad CE|' for s in settings)} |")
    print("|---|---|" + "---|" * len(settings))
    for method, by_setting in table.items():
        terms = sorted({t for d in by_setting.values() if "error" not in d for t in d if t != "ce"})
        for term in terms or ["-"]:
            cells = []
            for s in settings:
                d = by_setting.get(s, {})
                if "error" in d:
                    cells.append(d["error"][:60])
                elif term in d:
                    r = d[term]["grad_over_ce"]
                    cells.append(f"{d[term]['value']:.3g}, " + ("-" if r is None else f"x{r:.3g}"))
                else:
                    cells.append("")
            print(f"| {method} | {term} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
