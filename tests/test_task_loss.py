"""The task-loss path: ``Outputs.losses`` (a model's own ``loss.*`` taps), ``StepIO.task_loss`` (their sum, else the
cross-entropy, bit for bit) and the ``ce`` method on a detection student."""

from __future__ import annotations

import pytest
import torch

from kdlab.methods import METHODS, BuildContext, build_method
from kdlab.types import Batch, Outputs, StepIO


def _io(taps: dict, logits: torch.Tensor, y: torch.Tensor) -> StepIO:
    batch = Batch(x=torch.zeros(len(y), 3, 8, 8), y=y, index=torch.arange(len(y)))
    return StepIO({"x": Outputs(logits, taps)}, (), batch)


def test_outputs_losses_are_the_loss_taps() -> None:
    a, b = torch.tensor(0.5), torch.tensor(1.25)
    out = Outputs(torch.zeros(2, 3), {"fpn.0": torch.ones(1), "loss.classification": a, "loss.bbox_regression": b})
    assert out.losses == {"classification": a, "bbox_regression": b}
    assert list(out.losses) == ["classification", "bbox_regression"]
    assert Outputs(torch.zeros(2, 3), {"stage1": torch.ones(1)}).losses == {}


def test_task_loss_sums_the_models_losses() -> None:
    a = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(1.25, requires_grad=True)
    io = _io({"loss.objectness": a, "loss.box_reg": b}, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    total = io.task_loss(io.s.logits)
    assert float(total.detach()) == 1.75
    total.backward()
    assert float(a.grad) == 1.0 and float(b.grad) == 1.0
    with pytest.raises(ValueError, match="batch means"):
        io.task_loss(io.s.logits, reduction="none")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_task_loss_without_losses_is_cross_entropy_bitwise(smoothing: float, reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    io = _io({}, logits, y)
    assert torch.equal(io.task_loss(logits, smoothing, reduction), io.cross_entropy(logits, smoothing, reduction))


def test_ce_method_on_a_detection_student_is_the_sum_of_its_losses() -> None:
    from kdlab.models import create

    torch.manual_seed(0)
    model = create("retinanet_tiny", num_classes=3).train()
    x = {
        "images": torch.randn(2, 3, 64, 64),
        "image_sizes": torch.tensor([[64, 64], [64, 64]]),
        "boxes": torch.tensor([[[4.0, 4.0, 30.0, 40.0]], [[10.0, 20.0, 50.0, 60.0]]]),
        "labels": torch.tensor([[2], [0]]),
    }
    logits, taps = model.forward_taps(x, ())
    batch = Batch(x=x, y=torch.zeros(2, 1, 7), index=torch.arange(2))
    io = StepIO({"x": Outputs(logits, taps)}, (), batch)
    method = build_method(METHODS.get("ce").Config(), BuildContext(num_classes=3))
    out = method.loss(io)
    assert list(out.terms) == ["ce"]
    assert torch.equal(out.terms["ce"], taps["loss.classification"] + taps["loss.bbox_regression"])
