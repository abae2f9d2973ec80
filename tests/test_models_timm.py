"""The timm adapter against real timm models (skipped when timm is not installed: ``pip install kdlab[timm]``).

The default suite tests the adapter against a stand-in with timm's feature API (``test_models_extra.py``).
"""

from __future__ import annotations

import pytest
import torch

from kdlab.models import TapError, create
from kdlab.models.adapters import TimmTapModel

timm = pytest.importorskip("timm")

BATCH = 2


def test_timm_resnet18_taps() -> None:
    model = create("timm:resnet18", num_classes=10).eval()
    assert isinstance(model, TimmTapModel)
    entries = list(getattr(model.model.feature_info, "info", model.model.feature_info))
    stages = [t for t in model.tap_info() if t.kind != "pool"]
    assert [(t.channels, t.stride) for t in stages] == [(e["num_chs"], e["reduction"]) for e in entries]
    assert [(t.channels, t.stride) for t in stages] == [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
    x = torch.randn(BATCH, 3, 64, 64)
    with torch.no_grad():
        plain = model.model(x)
        assert torch.equal(model(x), plain)
        logits, taps = model.forward_taps(x, model.tap_names())
    torch.testing.assert_close(logits, plain)
    for t in stages:
        assert taps[t.name].shape == (BATCH, t.channels, 64 // t.stride, 64 // t.stride)
    assert taps["pool"].shape == (BATCH, 512)
    torch.testing.assert_close(model.classifier(taps["pool"]), plain)
    with pytest.raises(TapError, match=r"timm:resnet18.*stage1\.pre"):
        model.forward_taps(x, ["stage1.pre"])


def test_timm_in_channels() -> None:
    model = create("timm:resnet18", num_classes=3, in_channels=1).eval()
    assert model.input_size[0] == 1
    with torch.no_grad():
        assert model(torch.randn(BATCH, 1, 32, 32)).shape == (BATCH, 3)
