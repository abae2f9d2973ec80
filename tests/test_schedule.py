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
