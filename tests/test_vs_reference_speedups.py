"""The changes made for the kdlab ÷ mdistiller speed table (issue 21) compute what they replaced, and the benchmark's
bad-input rules.

- The CIFAR ResNet block adds its shortcut in place on the BN output: outputs, input gradients, parameter gradients
  and BN running statistics are bitwise those of the out-of-place sum.
- KDSVD's fused relation term (:class:`kdlab.losses.feature._RbfRelation`) equals the unfused expression
  (``exp``/``pow``/``where``/``sum``), value and gradients, non-finite entries included.
- ``benchmarks/vs_reference.py`` exits 2 naming the fix for a missing reference copy or an unknown method.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses.feature import _RbfRelation
from kdlab.models.cifar.resnet_crd import _BasicBlock

ROOT = Path(__file__).resolve().parents[1]


def _out_of_place(block: _BasicBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's forward as it was: ``h + shortcut``."""
    h = F.relu(block.bn1(block.conv1(x)), inplace=True)
    h = block.bn2(block.conv2(h))
    shortcut = x if block.downsample is None else block.downsample(x)
    return h + shortcut


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_resnet_block_in_place_sum_is_bitwise_the_out_of_place_sum(c_in, c_out, stride):
    torch.manual_seed(0)
    block = _BasicBlock(c_in, c_out, stride).train()
    ref_block = copy.deepcopy(block)
    x = torch.randn(4, c_in, 8, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = block(x), _out_of_place(ref_block, x_ref)
    assert torch.equal(out, ref)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    for (name, p), p_ref in zip(block.named_parameters(), ref_block.parameters()):
        assert torch.equal(p.grad, p_ref.grad), name
    for (name, b), b_ref in zip(block.named_buffers(), ref_block.buffers()):
        assert torch.equal(b, b_ref), name
    with torch.inference_mode():  # the frozen teacher's path
        assert torch.equal(block.eval()(x), _out_of_place(ref_block.eval(), x_ref))


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_option_a_block_in_place_sum_is_bitwise_the_out_of_place_sum(c_in, c_out, stride):
    from kdlab.models.cifar.resnet_option_a import _BlockA, option_a_shortcut

    torch.manual_seed(1)
    block = _BlockA(c_in, c_out, stride).train()
    ref_block = copy.deepcopy(block)
    x = torch.randn(4, c_in, 8, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = block(x)
    h = ref_block.bn2(ref_block.conv2(F.relu(ref_block.bn1(ref_block.conv1(x_ref)), inplace=True)))
    ref = h + option_a_shortcut(x_ref, c_out, stride)
    assert torch.equal(out, ref)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    for p, p_ref in zip(block.parameters(), ref_block.parameters()):
        assert torch.equal(p.grad, p_ref.grad)


def _unfused(a, p, u, q):
    """The relation term as :func:`kdlab.losses.kdsvd` computed it before the fusion."""
    s_rbf = torch.exp(-(a[:, :, None, :] - p[:, None, :, :]).pow(2) / 8)
    t_rbf = torch.exp(-(u[:, :, None, :] - q[:, None, :, :]).pow(2) / 8)
    sq = (s_rbf - t_rbf).pow(2)
    return torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_rbf_relation_equals_the_unfused_expression(dtype, k):
    g = torch.Generator().manual_seed(k)
    a, p, u, q = (torch.randn(3, c, k, generator=g, dtype=dtype) for c in (6, 5, 6, 5))
    a.requires_grad_(True)
    p.requires_grad_(True)
    value = _RbfRelation.apply(a, p, u, q)
    ref = _unfused(a, p, u, q)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert value.item() == pytest.approx(ref.item(), rel=tol)
    for got, want in zip(torch.autograd.grad(value * 1.7, [a, p]), torch.autograd.grad(ref * 1.7, [a, p])):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_fused_rbf_relation_counts_non_finite_entries_as_zero():
    g = torch.Generator().manual_seed(5)
    a, p, u, q = (torch.randn(2, 4, 1, generator=g, dtype=torch.float64) for _ in range(4))
    u[0, 1, 0] = float("nan")  # a teacher entry: its row of pairs is not finite
    q[1, 2, 0] = float("inf")  # exp(-inf) = 0: finite
    value = _RbfRelation.apply(a.requires_grad_(True), p, u, q)
    ref = _unfused(a, p, u, q)
    assert torch.isfinite(value) and value.item() == pytest.approx(ref.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(value, a)
    (grad_ref,) = torch.autograd.grad(_unfused(a, p, u, q), a)
    # the unfused gradient of a dropped entry is 0 * NaN = NaN; the fused one drops it from the gradient too
    finite = torch.isfinite(grad_ref)
    assert not finite[0, 1, 0] and finite.sum() == finite.numel() - 1
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[finite], grad_ref[finite], rtol=1e-12, atol=1e-12)
    # a dropped entry contributes no gradient: the same as leaving its pair out
    keep = torch.ones(4, dtype=torch.bool)
    keep[1] = False
    a0 = a.detach()[0:1, keep].clone().requires_grad_(True)
    (grad0,) = torch.autograd.grad(_unfused(a0, p[0:1], u[0:1, keep], q[0:1]), a0)
    torch.testing.assert_close(grad[0, keep], grad0[0], rtol=1e-12, atol=1e-12)
    assert grad[0, 1, 0] == 0


def _vs_reference():
    spec = importlib.util.spec_from_file_location("vs_reference", ROOT / "benchmarks" / "vs_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_reference"] = module
    spec.loader.exec_module(module)
    return module


def test_vs_reference_refuses_a_missing_reference_copy(tmp_path, capsys):
    bench = _vs_reference()
    assert bench.main(["--reference-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a copy of mdistiller" in err and "git clone" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_vs_reference_refuses_an_unknown_method(tmp_path, capsys):
    bench = _vs_reference()
    assert bench.main(["--reference-dir", str(tmp_path), "--methods", "kd,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) ['nope']" in err and "kdsvd[width]" in err


def _fake_result(bench, allocator: str, ratio: float) -> dict:
    cell = {
        "kdlab_images_per_s": 20.0 * ratio,
        "reference_images_per_s": 20.0,
        "ratio": ratio,
        "ratio_rounds": [ratio, ratio],
        "kdlab_images_per_s_cpu": 21.0,
        "reference_images_per_s_cpu": 20.0,
        "ratio_cpu": 1.05,
        "ratio_rounds_cpu": [1.05, 1.05],
    }
    return {
        "table": "vs_reference",
        "reference_commit": "a08d46f",
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "batch_size": 64,
        "threads": 1,
        "rounds": 2,
        "warmup_steps": 1,
        "timed_steps": 2,
        "allocators": {allocator: f"lib-{allocator}"},
        "workers": {f"kdlab/{allocator}": {}},
        "command": f"python benchmarks/vs_reference.py --allocators {allocator}",
        "date_utc": "2026-12-04 21:00",
        "load_average_before": [1.0, 2.0, 3.0] if allocator == "system" else [2.0, 1.0, 3.0],
        "load_average_after": [2.0, 1.0, 3.0],
        "cpu_count": 2,
        "platform": "linux",
        "wall_s": 60.0,
        "rows": [{"method": "kd", allocator: cell}, {"method": "vid", allocator: dict(cell)}],
    }


def test_vs_reference_merges_runs_of_different_allocators(tmp_path):
    bench = _vs_reference()
    files = []
    for allocator, ratio in (("system", 1.2), ("tcmalloc", 0.9)):
        files.append(tmp_path / f"{allocator}.json")
        files[-1].write_text(bench.json.dumps(_fake_result(bench, allocator, ratio)))
    out = tmp_path / "merged"
    assert bench.main(["--merge", *map(str, files), "--out", str(out)]) == 0
    merged = bench.json.loads((out.with_suffix(".json")).read_text())
    assert list(merged["allocators"]) == ["system", "tcmalloc"]
    assert merged["rows"][0]["system"]["ratio"] == 1.2 and merged["rows"][0]["tcmalloc"]["ratio"] == 0.9
    assert merged["load_average_before"] == [2.0, 2.0, 3.0]
    text = (out.with_suffix(".md")).read_text()
    assert "| kd | 24.0 | 20.0 | **1.20** | 1.05 | 18.0 | 20.0 | **0.90** | 1.05 |" in text
    # the same allocator twice is refused
    assert bench.main(["--merge", str(files[0]), str(files[0])]) == 2


def test_vs_reference_ratio_cells_and_the_channels_last_table(tmp_path):
    bench = _vs_reference()
    k_runs = [{"wall": [1.0, 1.2], "cpu": [1.0, 1.0]}, {"wall": [2.0, 2.0], "cpu": [2.0, 2.0]}]
    r_runs = [{"wall": [2.2, 2.2], "cpu": [2.0, 2.0]}, {"wall": [2.0, 2.0], "cpu": [1.0, 1.0]}]
    cell = bench._ratio_cell(k_runs, r_runs)
    # per round: reference median / kdlab median; the reported ratio is their median
    assert cell["ratio_rounds"] == pytest.approx([2.0, 1.0]) and cell["ratio"] == pytest.approx(1.5)
    assert cell["ratio_rounds_cpu"] == pytest.approx([2.0, 0.5]) and cell["ratio_cpu"] == pytest.approx(1.25)
    assert cell["kdlab_images_per_s"] == pytest.approx(64 / 1.6)  # median of all four timed kdlab steps
    result = _fake_result(bench, "system", 1.0)
    result["rows"][0]["system"]["channels_last"] = cell
    text = bench.format_markdown(result)
    assert "`train.channels_last: true`" in text
    assert "| kd | 40.0 | **1.50** | 1.25 |" in text and "| vid | - | - | - |" in text
    assert "- kd: system 1.00/1.05, 1.00/1.05; system channels_last 2.00/2.00, 1.00/0.50" in text


def test_vs_reference_refuses_an_unknown_layout(tmp_path, capsys):
    bench = _vs_reference()
    (tmp_path / "mdistiller" / "distillers").mkdir(parents=True)
    (tmp_path / "mdistiller" / "distillers" / "__init__.py").write_text("")
    assert bench.main(["--reference-dir", str(tmp_path), "--kdlab-layouts", "nhwc"]) == 2
    assert "--kdlab-layouts 'nhwc'" in capsys.readouterr().err


def test_single_threaded_lapack_restores_the_thread_count():
    from kdlab.losses.feature import single_threaded_lapack

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with single_threaded_lapack(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), single_threaded_lapack(torch.device("cpu")):
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        with single_threaded_lapack(torch.device("meta")):  # other devices: untouched
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_kdsvd_on_two_threads_equals_one_thread():
    from kdlab import losses

    g = torch.Generator().manual_seed(11)
    s_feats = [torch.relu(torch.randn(3, c, h, h, generator=g, dtype=torch.float64)) for c, h in ((8, 6), (16, 3))]
    t_feats = [torch.relu(torch.randn(3, c, h, h, generator=g, dtype=torch.float64)) for c, h in ((8, 6), (16, 3))]
    before = torch.get_num_threads()
    values = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            s = [f.clone().requires_grad_(True) for f in s_feats]
            value = losses.kdsvd(s, t_feats, 1)
            values.append((value.detach(), torch.autograd.grad(value, s)))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    (v1, g1), (v2, g2) = values
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_flat_per_sample_is_a_view_in_both_formats_and_sp_does_not_depend_on_it():
    from kdlab.losses.feature import flat_per_sample, sp

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 8, 4, 4, generator=g), torch.randn(6, 16, 2, 2, generator=g)
    s_cl, t_cl = (x.contiguous(memory_format=torch.channels_last) for x in (s, t))
    for x in (s, s_cl):
        flat = flat_per_sample(x)
        assert flat.shape == (6, 128) and flat.data_ptr() == x.data_ptr() and flat.is_contiguous()
    # the channels-last rows are the same elements in (H, W, C) order
    torch.testing.assert_close(flat_per_sample(s_cl), s.permute(0, 2, 3, 1).reshape(6, -1), rtol=0, atol=0)
    torch.testing.assert_close(sp(s_cl, t_cl), sp(s, t), rtol=1e-6, atol=1e-7)
