"""SimKD on the real-data benchmark, taken apart (issue 22): what the evaluated model is, whether the projector
trains, what the reused teacher classifier sees, and the loss scale, measured on the runs of
``benchmarks/real_cifar10.py``; its numbers are written to a generated report.

For one subset size (``--train-per-class``) and seed, with the benchmark's own config (:func:`real_cifar10.run_config`):

1. The teacher on the test subset three ways: its own logits (inputs re-normalised to ImageNet's mean/std, as the
   benchmark runs it), the method's frozen copy of its classifier on the average-pooled teacher map (the path the
   student's projection takes), and the teacher fed the dataset-normalised images without re-normalisation.
2. The finished run (its ``checkpoint.pt`` in the benchmark's run folder): the exported model's top-1 on the test
   subset and on the training subset, the student's own (unused, weight-0) classifier's top-1, the MSE between the
   projected student map and the teacher map, the teacher map's mean square and its per-position variance around
   the per-channel mean (the MSE a constant prediction would reach), and the share of that variance the projection
   explains.
3. Training from the run's initialisation for ``--probe-steps`` steps of the benchmark's recipe (SGD, lr, momentum,
   weight decay; constant lr): per step the gradient norm of the projector, of the student's backbone and of the
   student's own classifier, the loss, and for comparison the backbone's gradient norm that the student's own
   cross-entropy (the student alone) would give at the same point.

Usage: ``python benchmarks/simkd_probe.py [--train-per-class 50] [--seed 0] [--probe-steps 16]
[--out runs/real_cifar10] [--report benchmarks/results/simkd_probe_<n>pc.md]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import real_cifar10 as bench  # noqa: E402


def _norm(params) -> float:
    import torch

    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def probe(args: argparse.Namespace) -> dict:
    """All the measurements of the module docstring, as a dict."""
    import torch
    import torch.nn.functional as F

    from kdlab.config import build_config
    from kdlab.train.build import build_run
    from kdlab.types import Progress, StepIO

    torch.set_num_threads(args.threads)
    jpg, ckpt = bench.check_data(args.data.expanduser().resolve())
    raw = bench.run_config("simkd", args.seed, args, jpg, ckpt)
    cfg = build_config(raw)
    run = build_run(cfg)
    method, student, teacher = run.method, run.student, run.teachers[0]
    s_tap, t_tap = method.pairs[-1]
    out: dict = {"train_per_class": args.train_per_class, "seed": args.seed, "s_tap": s_tap, "t_tap": t_tap}

    # 1. the teacher, three ways
    agree = n = own = via_head = raw_norm = 0
    max_diff = 0.0
    with torch.no_grad():
        for batch in run.data.eval_batches("test"):
            t_out = teacher.outputs(batch, ("x",), (t_tap,))["x"]
            head_logits = method.predict(t_out.taps[t_tap])
            max_diff = max(max_diff, float((head_logits - t_out.logits).abs().max()))
            own += int((t_out.logits.argmax(1) == batch.y).sum())
            via_head += int((head_logits.argmax(1) == batch.y).sum())
            plain = teacher.model.forward_taps(batch.x, ())[0]  # no re-normalisation
            raw_norm += int((plain.argmax(1) == batch.y).sum())
            agree += int((head_logits.argmax(1) == t_out.logits.argmax(1)).sum())
            n += len(batch.y)
    out["teacher"] = {
        "top1_own_logits": 100 * own / n,
        "top1_frozen_head_on_teacher_map": 100 * via_head / n,
        "top1_without_renormalisation": 100 * raw_norm / n,
        "max_abs_logit_diff_head_vs_own": max_diff,
        "n": n,
    }

    # 2. the finished run
    run_dir = bench.runs_dir(args) / bench.run_name("simkd", args.seed)
    init_student = {k: v.clone() for k, v in student.state_dict().items()}
    init_method = {k: v.clone() for k, v in method.state_dict().items()}
    if (run_dir / "checkpoint.pt").is_file():
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        exported = method.export(student).eval()
        student.eval()
        method.eval()

        def measure(batches) -> dict:
            hits = own_hits = count = 0
            mse, t_sq, t_maps = [], [], []
            with torch.no_grad():
                for batch in batches:
                    hits += int((exported(batch.x).argmax(1) == batch.y).sum())
                    logits, feats = student.forward_taps(batch.x, (s_tap,))
                    own_hits += int((logits.argmax(1) == batch.y).sum())
                    t_map = teacher.outputs(batch, ("x",), (t_tap,))["x"].taps[t_tap]
                    ((proj, target),) = method.project({s_tap: feats[s_tap]}, {t_tap: t_map})
                    mse.append(float(F.mse_loss(proj, target, reduction="sum")))
                    t_sq.append(float(target.pow(2).sum()))
                    t_maps.append(target)
                    count += len(batch.y)
            maps = torch.cat(t_maps)
            elements = maps.numel()
            # variance around the per-channel mean over samples and positions: a constant per channel reaches it
            var = float((maps - maps.mean(dim=(0, 2, 3), keepdim=True)).pow(2).sum()) / elements
            m = sum(mse) / elements
            return {
                "top1_exported": 100 * hits / count,
                "top1_student_own_classifier": 100 * own_hits / count,
                "mse_projection_to_teacher_map": m,
                "teacher_map_mean_square": sum(t_sq) / elements,
                "teacher_map_variance_per_channel": var,
                "explained_share": 1 - m / var,
                "n": count,
            }

        out["trained"] = {
            "test": measure(run.data.eval_batches("test")),
            "train": measure(run.data.eval_batches("train")),
        }
    else:
        out["trained"] = None

    # 3. gradient norms from the run's initialisation
    student.load_state_dict(init_student)
    method.load_state_dict(init_method)
    student.train()
    method.train()
    projector = list(method.adapters["projectors"].parameters())
    own_head = list(student.classifier.parameters())
    head_ids = {id(p) for p in own_head}
    backbone = [p for p in student.parameters() if id(p) not in head_ids]
    opt = torch.optim.SGD([*student.parameters(), *projector], lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = []
    batches = run.data.train_batches(0)
    epoch = 0
    while len(steps) < args.probe_steps:
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            batches = run.data.train_batches(epoch)
            continue
        logits, feats = student.forward_taps(batch.x, tuple(run.needs.student_taps))
        from kdlab.types import Outputs

        t_out = teacher.outputs(batch, ("x",), tuple(run.needs.teacher_taps))
        io = StepIO({"x": Outputs(logits, feats)}, (t_out,), batch, Progress(step=len(steps)))
        loss_out = method.loss(io)
        loss = sum(loss_out.terms.values())
        # what the student alone (ce) would get at the same point: the backbone's gradient of its own cross-entropy
        ce_grads = torch.autograd.grad(F.cross_entropy(logits, batch.y), backbone, retain_graph=True)
        opt.zero_grad()
        loss.backward()
        steps.append(
            {
                "loss": float(loss.detach()),
                "grad_projector": _norm(projector),
                "grad_backbone": _norm(backbone),
                "grad_own_classifier": _norm(own_head),
                "grad_backbone_if_ce": float(torch.cat([g.flatten() for g in ce_grads]).norm()),
                "train_top1": float(loss_out.metrics["top1"]),
            }
        )
        opt.step()
    out["steps"] = steps
    return out


def render(res: dict) -> str:
    t = res["teacher"]
    lines = [
        "# SimKD on the real-data benchmark, taken apart",
        "",
        "Generated by `python benchmarks/simkd_probe.py` (do not edit by hand; rerun the command). "
        f"Subset: {res['train_per_class']} training images per class, seed {res['seed']}, the benchmark's config "
        f"(`benchmarks/real_cifar10.py`); projector from student `{res['s_tap']}` to teacher `{res['t_tap']}`.",
        "",
        f"## The teacher on the {t['n']:,} test images",
        "",
        "| path | top-1 % |",
        "|---|---|",
        f"| its own logits (inputs re-normalised, as trained) | {t['top1_own_logits']:.2f} |",
        f"| simkd's frozen copy of its classifier on its pooled last map | "
        f"{t['top1_frozen_head_on_teacher_map']:.2f} |",
        f"| its own logits without re-normalisation (dataset-normalised inputs) | "
        f"{t['top1_without_renormalisation']:.2f} |",
        "",
        f"Largest |logit difference| between the first two paths: {t['max_abs_logit_diff_head_vs_own']:.2e}.",
    ]
    if res["trained"]:
        lines += [
            "",
            "## The finished run",
            "",
            "| split | exported top-1 | student's own classifier top-1 | MSE (projection, teacher map) | "
            "teacher map mean square | per-channel variance | explained share |",
            "|---|---|---|---|---|---|---|",
        ]
        for split in ("train", "test"):
            m = res["trained"][split]
            lines.append(
                f"| {split} ({m['n']:,}) | {m['top1_exported']:.2f} | {m['top1_student_own_classifier']:.2f} | "
                f"{m['mse_projection_to_teacher_map']:.4f} | {m['teacher_map_mean_square']:.4f} | "
                f"{m['teacher_map_variance_per_channel']:.4f} | {m['explained_share']:.3f} |"
            )
    steps = res["steps"]
    half = max(1, len(steps) // 2)

    def avg(key: str, part: list[dict]) -> str:
        return f"{statistics.mean(s[key] for s in part):.4f}"

    lines += [
        "",
        f"## Gradient norms over the first {len(steps)} steps from the run's initialisation",
        "",
        "| steps | loss | projector | student backbone | student's own classifier | student backbone under ce "
        "(same point) | train top-1 (reused head) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in ((f"1-{half}", steps[:half]), (f"{half + 1}-{len(steps)}", steps[half:])):
        if part:
            lines.append(
                f"| {name} | {avg('loss', part)} | {avg('grad_projector', part)} | {avg('grad_backbone', part)} | "
                f"{avg('grad_own_classifier', part)} | {avg('grad_backbone_if_ce', part)} | {avg('train_top1', part)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--student", default="resnet8")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-steps", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("runs/real_cifar10"))
    p.add_argument(
        "--report", type=Path, default=None, help="default: benchmarks/results/simkd_probe_<n>pc.md (and .json)"
    )
    args = p.parse_args()
    if args.report is None:
        args.report = REPO / "benchmarks" / "results" / f"simkd_probe_{args.train_per_class}pc.md"
    res = probe(args)
    args.report.write_text(render(res))
    args.report.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(args.report.read_text())


if __name__ == "__main__":
    main()
