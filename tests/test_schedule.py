"""The schedule rule (:mod:`kdlab.schedule`): schedule-bound defaults are a fraction of the run (issue 22).

DKD's 20-epoch warm-up, set for a 240-epoch schedule, kept the DKD term below full weight for a whole 20-epoch run
(factor 0.05 .. 1.0); under the rule a 240-epoch run keeps the reference's ramp and a 20-epoch run reaches full
weight in its second epoch.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.config import build_config
from kdlab.methods import build_method
from kdlab.methods.base import BuildContext
from kdlab.methods.dkd import DKD
from kdlab.schedule import REFERENCE_EPOCHS, scaled_epochs, warmup_factor
from kdlab.types import Batch, Outputs, Progress, StepIO


def test_schedule_rule_scales_the_reference_setting_to_the_run():
    assert scaled_epochs(None, 20 / REFERENCE_EPOCHS, 240) == pytest.approx(20.0)
    assert scaled_epochs(None, 20 / REFERENCE_EPOCHS, 20) == pytest.approx(20 / 12)
    assert scaled_epochs(1, 20 / REFERENCE_EPOCHS, 20) == 1.0  # an explicit value in epochs is used as given
    assert [warmup_factor(e, 20 / 12) for e in (0, 1, 5)] == pytest.approx([0.6, 1.0, 1.0])


def _dkd_factor(epoch: int, total_epochs: int, **fields) -> float:
    cfg = build_config({"method": {"name": "dkd", **fields}}).method
    dkd = build_method(cfg, BuildContext(num_classes=4))
    assert isinstance(dkd, DKD)
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    progress = Progress(epoch=epoch, steps_per_epoch=10, total_epochs=total_epochs)
    batch = Batch(x=torch.zeros(8, 3, 4, 4), y=y, index=torch.arange(8))
    io = StepIO({"x": Outputs(s)}, ({"x": Outputs(t)},), batch, progress)
    return float(dkd.loss(io).metrics["dkd_warmup"])


def test_dkd_default_warmup_is_a_fraction_of_the_run():
    # a 240-epoch run: the reference's 20-epoch ramp, unchanged
    assert [_dkd_factor(e, 240) for e in (0, 9, 19, 100)] == pytest.approx([0.05, 0.5, 1.0, 1.0])
    # a 20-epoch run: full weight from the second epoch (before: 0.05 .. 1.0 over the whole run)
    assert [_dkd_factor(e, 20) for e in (0, 1, 10)] == pytest.approx([0.6, 1.0, 1.0])
    # an explicit value in epochs is kept (the ImageNet recipes' 1 epoch; 0 disables)
    assert _dkd_factor(0, 20, warmup_epochs=20) == pytest.approx(0.05)
    assert _dkd_factor(0, 100, warmup_epochs=1) == 1.0
    assert _dkd_factor(0, 20, warmup_epochs=0) == 1.0


# ------------------------------------------------------------------ ReviewKD's warm-up, AB/FT/FSP's init stages


def test_a_stage_runs_whole_epochs_of_the_runs_fraction():
    from kdlab.schedule import scaled_stage_epochs

    eighth = 30 / REFERENCE_EPOCHS
    assert scaled_stage_epochs(None, eighth, 240) == 30  # the reference's stage, unchanged
    assert scaled_stage_epochs(None, eighth, 20) == 3  # 2.5 rounded half up
    assert scaled_stage_epochs(None, eighth, 4) == 1  # at least one epoch
    assert scaled_stage_epochs(None, eighth, 0) == 30  # run length unknown: the reference's
    assert scaled_stage_epochs(5, eighth, 20) == 5 and scaled_stage_epochs(0, eighth, 20) == 0  # explicit: as given


def _review_kd_terms(cases: list[tuple[int, int]], **fields) -> list[float]:
    """The ReviewKD term of one batch at each ``(epoch, total_epochs)``."""
    from kdlab import models
    from kdlab.train.build import build_context

    torch.manual_seed(0)
    student, teacher = models.create("convnet_xs", num_classes=4), models.create("convnet_s", num_classes=4)
    ctx = build_context(student, [teacher], 4, (3, 8, 8), torch.device("cpu"))
    m = build_method(build_config({"method": {"name": "review_kd", **fields}}).method, ctx)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    needs = m.needs()
    s_logits, s_taps = student.forward_taps(x, tuple(needs.student_taps))
    with torch.no_grad():
        t_logits, t_taps = teacher.eval().forward_taps(x, tuple(needs.teacher_taps))
    outs, batch = (
        ({"x": Outputs(s_logits, s_taps)}, ({"x": Outputs(t_logits, t_taps)},)),
        Batch(x, torch.zeros(4).long(), torch.arange(4)),
    )
    terms = []
    for epoch, total in cases:
        io = StepIO(*outs, batch, Progress(epoch=epoch, steps_per_epoch=10, total_epochs=total))
        terms.append(float(m.loss(io).terms["review_kd"]))
    return terms


def test_review_kd_default_warmup_is_a_fraction_of_the_run():
    full, ref0, run0, run1 = _review_kd_terms([(50, 240), (0, 240), (0, 20), (1, 20)])
    assert ref0 == pytest.approx(full / 20, rel=1e-5)  # a 240-epoch run: the reference's 20-epoch ramp
    # a 20-epoch run: 0.6 in the first epoch, full weight from the second (before: 1/20 .. 1 over the whole run)
    assert run0 == pytest.approx(0.6 * full, rel=1e-5) and run1 == pytest.approx(full, rel=1e-5)
    assert _review_kd_terms([(0, 20)], warmup_epochs=20) == pytest.approx([full / 20], rel=1e-5)  # explicit: as given
    assert _review_kd_terms([(0, 20)], warmup_epochs=0) == pytest.approx([full], rel=1e-5)


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_init_stages_default_to_a_fraction_of_the_run(tmp_path, name):
    from kdlab.train.trainer import Trainer

    from conftest import tiny_config

    pair = ["model.teachers.0.name=convnet_xs"] if name == "fsp" else []  # FSP: equal widths

    def stage_epochs(*extra: str) -> list[int]:
        cfg = tiny_config(tmp_path, *pair, *extra, method=name)
        return [st.epochs for st in Trainer(cfg, force=True).stages]

    # a 16-epoch run: a 2-epoch init stage (before: 30 epochs, longer than the run it prepares)
    assert stage_epochs("train.epochs=16") == [2, 16]
    assert stage_epochs("train.epochs=3", "method.init_epochs=1") == [1, 3]  # explicit: as given
    assert stage_epochs("train.epochs=3", "method.init_epochs=0") == [3]  # 0: no stage
