"""ShuffleNetV2's ``stageK.pre`` is the reference's ``preact`` (RepDistiller/mdistiller ``ShuffleNetv2.py``: the last
unit's ``cat([x1, bn3(conv3(...))])`` before the channel shuffle and the ReLU)."""

from __future__ import annotations

import torch

from kdlab.models import create


def test_pre_tap_is_the_reference_preact_before_the_shuffle():
    torch.manual_seed(0)
    model = create("shufflenetv2", num_classes=10).eval()
    seen = {}
    for k in (1, 2, 3):
        last = getattr(model, f"layer{k}")[-1]
        last.register_forward_hook(lambda m, args, out, k=k: seen.__setitem__(k, args[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, taps = model.forward_taps(x, ("stage1.pre", "stage2.pre", "stage3.pre"))
        for k in (1, 2, 3):
            unit, h_in = getattr(model, f"layer{k}")[-1], seen[k]
            # the reference's BasicBlock.forward, written out: split, branch, cat, no shuffle, no relu
            c = h_in.shape[1] // 2
            x1, x2 = h_in[:, :c], h_in[:, c:]
            out = torch.relu(unit.bn1(unit.conv1(x2)))
            out = unit.bn2(unit.conv2(out))
            preact = torch.cat([x1, unit.bn3(unit.conv3(out))], 1)
            assert torch.equal(taps[f"stage{k}.pre"], preact)
