"""``kdlab analyze``: the attacks, ECE, discrepancy, linear probe and per-class tables against hand computations, on a
tiny teacher/student pair trained on digits once per module; the CLI in-process and in a subprocess; bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.analysis import AnalysisError, open_run, write_result
from kdlab.analysis.calibration import agreement, calibration, expected_calibration_error, reliability
from kdlab.analysis.common import collect_logits
from kdlab.analysis.discrepancy import Discrepancy, discrepancy, discrepancy_table, prediction_distance
from kdlab.analysis.per_class import per_class, shot_groups
from kdlab.analysis.robustness import PixelInput, fgsm, pgd, robustness
from kdlab.analysis.transfer import fit_linear_probe, prepare_images, transfer
from kdlab.cli.main import main
from kdlab.config import load_config
from kdlab.train.trainer import Trainer

from conftest import REPO


def _train(config: str, run_dir, name: str, *overrides: str) -> None:
    cfg = load_config(
        REPO / "configs" / "debug" / config,
        [
            "train.epochs=2",
            "train.threads=1",
            f"train.run_dir={run_dir}",
            f"train.name={name}",
            "log.progress='off'",
            *overrides,
        ],
    )
    Trainer(cfg).fit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"teacher": dir, "student": dir}``: a convnet_s trained with CE and a convnet_xs distilled from it (KD)."""
    root = tmp_path_factory.mktemp("analysis_runs")
    _train("digits_ce.yaml", root, "t")
    _train("digits_kd.yaml", root, "s", f"model.teachers.0.checkpoint={root / 't' / 'checkpoint.pt'}")
    return {"teacher": root / "t", "student": root / "s"}


@pytest.fixture(scope="module")
def student(runs):
    return open_run(runs["student"], device="cpu")


# ---------------------------------------------------------------------------------------------- robustness


def test_fgsm_equals_analytic_sign_gradient_of_a_linear_model():
    torch.manual_seed(1)
    linear = nn.Linear(3 * 4 * 4, 5).double()
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.05
    # d CE / d x for logits W x + b is W^T (softmax - onehot), per sample
    with torch.no_grad():
        p = (x.flatten(1) @ linear.weight.T + linear.bias).softmax(dim=1)
        grad = ((p - F.one_hot(y, 5).double()) @ linear.weight).view_as(x)
    expected = (x + eps * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps), expected)
    assert torch.equal(fgsm(model, x, y, 0.0), x)


def test_pgd_stays_in_the_ball_and_in_pixel_range(student):
    data = student.data
    batch = next(student.batches("test", 64))
    x = (batch.x * data.std + data.mean).clamp(0, 1)
    model = PixelInput(student.model, data.mean, data.std).eval()
    g = torch.Generator().manual_seed(0)
    eps = 8 / 255
    for step in (None, 1.0):  # the default step and a huge one that the projection must catch
        adv = pgd(model, x, batch.y, eps, steps=3, step_size=step, generator=g)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > eps / 2  # it did move
    fast = fgsm(model, x, batch.y, eps)
    assert (fast - x).abs().max() <= eps + 1e-6 and fast.min() >= 0 and fast.max() <= 1


def test_robustness_table_epsilon_zero_is_clean_and_pgd_beats_fgsm(student, runs, tmp_path):
    import json

    result = robustness(student, [0.0, 4 / 255, 16 / 255], pgd_steps=5, seed=0)
    rows = {(r["attack"], r["epsilon"]): r for r in result.rows}
    clean = json.loads((runs["student"] / "summary.json").read_text())["last"]
    for attack in ("fgsm", "pgd"):
        assert rows[(attack, 0.0)]["top1"] == pytest.approx(clean["top1"])
        assert rows[(attack, 0.0)]["top5"] == pytest.approx(clean["top5"])
        assert rows[(attack, 0.0)]["loss"] == pytest.approx(clean["loss"], rel=1e-4)
    for eps in (4 / 255, 16 / 255):
        assert rows[("pgd", eps)]["loss"] >= rows[("fgsm", eps)]["loss"]
        assert rows[("fgsm", eps)]["loss"] > rows[("fgsm", 0.0)]["loss"]
    assert rows[("pgd", 16 / 255)]["top1"] <= rows[("pgd", 0.0)]["top1"]
    paths = write_result(result, tmp_path)
    assert {"md", "csv", "json", "png"} <= set(paths)
    assert paths["png"].stat().st_size > 1000
    assert paths["csv"].read_text().splitlines()[0] == "attack,epsilon,epsilon_255,top1,top5,loss"


def test_robustness_rejects_bad_budgets(student):
    with pytest.raises(AnalysisError, match=r"must lie in \[0, 1\]"):
        robustness(student, [8.0])
    with pytest.raises(AnalysisError, match="unknown attack"):
        robustness(student, [0.0], attacks=("cw",))
    with pytest.raises(AnalysisError, match="pgd-steps"):
        robustness(student, [0.0], pgd_steps=0)


# --------------------------------------------------------------------------------------------- calibration


def _logits_with_confidence(confidences: list[float], k: int = 3) -> torch.Tensor:
    """Logits whose softmax is ``[c, (1-c)/(k-1), ...]`` per row (top class 0)."""
    rows = [[math.log(c)] + [math.log((1 - c) / (k - 1))] * (k - 1) for c in confidences]
    return torch.tensor(rows, dtype=torch.float64)


def test_ece_matches_a_hand_computation():
    conf = [0.9, 0.78, 0.58, 0.55, 0.38, 0.95]
    logits = _logits_with_confidence(conf)
    y = torch.tensor([0, 1, 0, 0, 2, 0])  # correct, wrong, correct, correct, wrong, correct
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
    # (.2,.4]: {.38 wrong} |0-.38|; (.4,.6]: {.58, .55 correct} |1-.565|; (.6,.8]: {.78 wrong}; (.8,1]: {.9,.95 correct}
    expected = (1 * 0.38 + 2 * (1 - 0.565) + 1 * 0.78 + 2 * (1 - 0.925)) / 6
    assert expected_calibration_error(logits, y, num_bins=5) == pytest.approx(expected, abs=1e-6)
    rel = reliability(logits, y, num_bins=5)
    assert rel.count.tolist() == [0, 1, 2, 1, 2]
    assert rel.mce == pytest.approx(0.78)
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(logits, y, num_bins=1) == pytest.approx(abs(4 / 6 - sum(conf) / 6))


def test_agreement_and_kl_by_hand():
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.5]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    agree, kl = agreement(s, t)
    assert agree == pytest.approx(0.5)

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    want = 0.0
    for zs, zt in zip(s.tolist(), t.tolist()):
        ps, pt = softmax(zs), softmax(zt)
        want += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    assert kl == pytest.approx(want / 4, rel=1e-5)


def test_calibration_of_a_run_with_its_teacher(student, runs):
    result = calibration(student, num_bins=10)
    by = {r["model"]: r for r in result.rows}
    s_logits, y = collect_logits(student.model, student.batches("test"))
    t_logits, _ = collect_logits(student.teachers[0], student.batches("test"))
    assert by["student"]["ece"] == pytest.approx(100 * expected_calibration_error(s_logits, y, 10))
    assert by["student"]["nll"] == pytest.approx(float(F.cross_entropy(s_logits, y)))
    agree = 100 * float((s_logits.argmax(1) == t_logits.argmax(1)).float().mean())
    assert by["teacher"]["agreement"] == pytest.approx(agree)
    assert by["student"]["agreement"] is None
    assert len(result.extra["bins"]["student"]["count"]) == 10
    # a run without a teacher gives the student's row only
    alone = calibration(open_run(runs["teacher"], device="cpu"), limit=100)
    assert [r["model"] for r in alone.rows] == ["student"] and alone.extra["n"] == 100


# --------------------------------------------------------------------------------------------- discrepancy


def test_prediction_distance_and_grouping_by_hand():
    s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax [.5, .5], [.75, .25]
    t = torch.tensor([[10.0, -10.0], [0.0, 0.0]])  # ~[1, 0], [.5, .5]
    d = prediction_distance(s, t)
    assert d[1] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert d[0] == pytest.approx(math.sqrt(2 * 0.5**2), abs=1e-6)

    dist = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.4])
    t_ok = torch.tensor([True, True, True, True, True, False, False])
    s_ok = torch.tensor([True, False, True, True, False, True, False])
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    rows = discrepancy_table(Discrepancy(dist, t_ok, s_ok, alpha), parts=2)
    by = {(r["teacher"], r["part"]): r for r in rows}
    assert by[("correct", "all")]["n"] == 5 and by[("wrong", "all")]["n"] == 2
    assert by[("correct", "all")]["distance_mean"] == pytest.approx(0.5)
    assert by[("correct", "all")]["student_top1"] == pytest.approx(60.0)
    # correct group sorted by distance: .1 .3 .5 | .7 .9 -> q1 = samples 1, 3, 0; q2 = 4, 2
    assert by[("correct", "q1")]["n"] == 3 and by[("correct", "q1")]["distance_max"] == pytest.approx(0.5)
    assert by[("correct", "q1")]["alpha_mean"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)
    assert by[("correct", "q2")]["alpha_mean"] == pytest.approx((0.5 + 0.3) / 2)
    assert by[("wrong", "q1")]["distance_mean"] == pytest.approx(0.2)
    assert by[("wrong", "all")]["alpha_mean"] == pytest.approx(0.65)


def test_discrepancy_of_a_run_and_the_sample_weight_hook(student, monkeypatch):
    plain = discrepancy(student, split="test")
    assert plain.rows[0]["alpha_mean"] is None and any("alpha: not available" in n for n in plain.notes)
    s_logits, y = collect_logits(student.model, student.batches("test"))
    t_logits, _ = collect_logits(student.teachers[0], student.batches("test"))
    correct = t_logits.argmax(1) == y
    dist = (s_logits.softmax(1) - t_logits.softmax(1)).norm(dim=1)
    by = {(r["teacher"], r["part"]): r for r in plain.rows}
    assert by[("correct", "all")]["n"] == int(correct.sum())
    assert by[("correct", "all")]["distance_mean"] == pytest.approx(float(dist[correct].mean()), rel=1e-5)

    # a method exposing per-sample weights: here the teacher's confidence on the label
    def weights(self, io):
        return io.t.logits.softmax(1).gather(1, io.y[:, None]).squeeze(1)

    monkeypatch.setattr(type(student.loaded.run.method), "sample_weights", weights)
    with_alpha = discrepancy(student, split="test")
    by = {(r["teacher"], r["part"]): r for r in with_alpha.rows}
    conf = t_logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    assert by[("correct", "all")]["alpha_mean"] == pytest.approx(float(conf[correct].mean()), rel=1e-5)
    assert by[("wrong", "all")]["alpha_mean"] == pytest.approx(float(conf[~correct].mean()), rel=1e-5)


def test_discrepancy_needs_a_teacher(runs, tmp_path):
    with pytest.raises(AnalysisError, match="has no teacher"):
        open_run(runs["teacher"], device="cpu", need_teacher=True)
    with pytest.raises(AnalysisError, match="--teacher FILE"):
        open_run(runs["student"], device="cpu", teacher=str(tmp_path / "missing.pt"), need_teacher=True)


# ------------------------------------------------------------------------------------------------- transfer


def test_prepare_images_resizes_and_converts_channels():
    mean, std = torch.tensor([0.25]), torch.tensor([0.5])
    x = torch.full((2, 16, 12, 3), 102, dtype=torch.uint8)  # a constant image stays constant through resizing
    out = prepare_images(x, (1, 8, 8), mean, std)
    assert out.shape == (2, 1, 8, 8)
    assert torch.allclose(out, torch.full_like(out, (102 / 255 - 0.25) / 0.5), atol=1e-5)
    colour = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    colour[..., 1] = 255  # pure green -> luminance 0.587
    assert torch.allclose(prepare_images(colour, (1, 4, 4), torch.zeros(1), torch.ones(1)), torch.tensor(0.587))
    grey = torch.randint(0, 256, (3, 5, 5, 1), dtype=torch.uint8)
    m3, s3 = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6, 0.7])
    out3 = prepare_images(grey, (3, 5, 5), m3, s3)  # same size: no resampling, grey repeated per channel
    want = (grey.permute(0, 3, 1, 2).float() / 255 - m3.view(1, 3, 1, 1)) / s3.view(1, 3, 1, 1)
    assert torch.allclose(out3, want, atol=1e-6)
    with pytest.raises(AnalysisError, match="2-channel"):
        prepare_images(torch.zeros(1, 4, 4, 2, dtype=torch.uint8), (3, 4, 4), m3, s3)


def test_linear_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 4
    y = torch.arange(200) % 4
    feats = centers[y] + 0.3 * torch.randn(200, 6, generator=g)
    probe = fit_linear_probe(feats, y, 4, l2=1e-3, max_iter=50)
    assert (probe.logits(feats.double()).argmax(1) == y).all()
    again = fit_linear_probe(feats, y, 4, l2=1e-3, max_iter=50)
    assert torch.equal(probe.weight, again.weight)  # seeded and deterministic
    with pytest.raises(AnalysisError, match="--l2"):
        fit_linear_probe(feats, y, 4, l2=-1.0)


def test_transfer_features_of_a_trained_model_beat_chance(runs):
    teacher_run = open_run(runs["teacher"], device="cpu")
    result = transfer(teacher_run, "digits", max_iter=100, baseline=False)
    (row,) = result.rows
    assert row["features"] == "student" and row["test_images"] == 500
    assert row["top1"] > 50.0  # chance is 10 %


# ------------------------------------------------------------------------------------------------ per_class


def test_shot_groups_thresholds():
    assert shot_groups(torch.tensor([101, 100, 20, 19]), many=100, few=20) == ["many", "medium", "medium", "few"]
    with pytest.raises(AnalysisError, match="--few"):
        shot_groups(torch.tensor([5]), many=10, few=20)


def test_per_class_groups_against_a_direct_count(student):
    result = per_class(student, many=130, few=128)
    logits, y = collect_logits(student.model, student.batches("test"))
    pred = logits.argmax(1)
    train = student.data.train_labels
    counts = [int((train == c).sum()) for c in range(10)]
    groups = ["many" if n > 130 else "few" if n < 128 else "medium" for n in counts]
    by = {r["group"]: r for r in result.rows}
    for group in ("many", "medium", "few"):
        members = [c for c in range(10) if groups[c] == group]
        if not members:
            assert group not in by
            continue
        mask = torch.tensor([int(v) in members for v in y])
        assert by[group]["classes"] == len(members)
        assert by[group]["test_images"] == int(mask.sum())
        assert by[group]["top1"] == pytest.approx(100 * float((pred[mask] == y[mask]).float().mean()))
    assert by["all"]["top1"] == pytest.approx(100 * float((pred == y).float().mean()))
    classes = result.tables["classes"][1]
    assert [r["train_images"] for r in classes] == counts


# ---------------------------------------------------------------------------------------------------- CLI


def _analyze(*args: str) -> int:
    return main(["analyze", *args, "--threads", "1", "--device", "cpu"])


def test_cli_analyses_write_table_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "out"
    s = str(runs["student"])
    assert _analyze("calibration", s, "--out", str(out), "--bins", "5") == 0
    assert "| student |" in capsys.readouterr().out
    assert _analyze("discrepancy", s, "--out", str(out), "--limit", "200") == 0
    assert "| correct | all |" in capsys.readouterr().out
    assert _analyze("per_class", str(runs["student"] / "student.pt"), "--out", str(out)) == 0
    assert "| all | 10 |" in capsys.readouterr().out
    # transfer to 16x16 colour images: channel conversion and resizing to the student's 8x8x1 input
    args = ["--dataset", "synthetic", "--target-data", "image_size=16", "num_classes=4", "train_size=128"]
    assert _analyze("transfer", s, "--out", str(out), *args, "test_size=64", "--max-iter", "20") == 0
    printed = capsys.readouterr().out
    assert "| student | synthetic | 128 | 64 |" in printed and "random-init student" in printed
    for name in ("calibration", "discrepancy", "per_class", "transfer_synthetic"):
        for suffix in ("md", "csv", "json", "png"):
            assert (out / f"{name}.{suffix}").is_file(), f"{name}.{suffix}"
    assert (out / "per_class_classes.csv").is_file()


def test_cli_bad_runs_and_options_exit_2(runs, tmp_path, capsys):
    assert _analyze("calibration", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _analyze("calibration", str(tmp_path / "empty")) == 2
    assert "holds no checkpoint.pt or student.pt" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert _analyze("robustness", str(corrupt)) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert _analyze("per_class", str(foreign)) == 2
    assert "not a kdlab checkpoint" in capsys.readouterr().err
    assert _analyze("robustness", str(runs["student"]), "--epsilons", "0,2", "--limit", "8") == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err
    assert _analyze("discrepancy", str(runs["teacher"])) == 2
    assert "has no teacher" in capsys.readouterr().err
    assert _analyze("transfer", str(runs["student"]), "--dataset", "no_such_set") == 2
    assert "no_such_set" in capsys.readouterr().err


def test_cli_robustness_in_process(runs, tmp_path, capsys):
    """The real-process test below through the CLI entry point in this process (fast sibling)."""
    args = ["--epsilons", "0,2/255", "--pgd-steps", "2", "--limit", "64", "--out", str(tmp_path)]
    assert _analyze("robustness", str(runs["student"]), *args) == 0
    assert "| pgd | 0.00784 | 2.00 |" in capsys.readouterr().out
    assert (tmp_path / "robustness.png").is_file() and (tmp_path / "robustness.md").is_file()


@pytest.mark.slow
def test_cli_subprocess_robustness(runs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDLAB_NO_TCMALLOC": "1"}
    cmd = [sys.executable, "-m", "kdlab", "analyze", "robustness", str(runs["student"]), "--threads", "1"]
    ok = subprocess.run(
        [*cmd, "--epsilons", "0,2/255", "--pgd-steps", "2", "--limit", "64", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "| pgd | 0.00784 | 2.00 |" in ok.stdout
    assert (tmp_path / "robustness.png").is_file() and (tmp_path / "robustness.md").is_file()


def test_per_class_sees_a_long_tailed_training_split(runs):
    """The run's data section rebuilt with ``data.imbalance_ratio`` (the long-tailed option): the counts follow it."""
    lt = open_run(runs["student"], data_overrides=["imbalance_ratio=10"], device="cpu")
    result = per_class(lt, many=60, few=20)
    counts = [r["train_images"] for r in result.tables["classes"][1]]
    assert max(counts) / min(counts) == pytest.approx(10, rel=0.1)
    assert result.extra["imbalance_ratio"] == pytest.approx(max(counts) / min(counts))
    by = {r["group"]: r for r in result.rows}
    assert sum(by[g]["classes"] for g in ("many", "medium", "few") if g in by) == 10
    assert by["all"]["train_images"] == sum(counts)


def test_limit_is_a_fixed_stratified_subset(student):
    ys = [torch.cat([b.y for b in student.batches("test", 100)]) for _ in range(2)]
    assert torch.equal(ys[0], ys[1]) and len(ys[0]) == 100
    assert torch.bincount(ys[0], minlength=10).tolist() == [10] * 10  # digits' test split has 50 per class
    index = torch.cat([b.index for b in student.batches("test", 100)])
    assert torch.equal(student.data.test.y[index], ys[0])
    with pytest.raises(AnalysisError, match="validation split"):
        student.batches("val")


def test_logged_alpha_reads_the_last_epoch_of_metrics(tmp_path):
    import json

    from kdlab.analysis.discrepancy import logged_alpha

    records = [{"epoch": 1, "train": {"loss": 2.0, "alpha.mean": 0.4}}, {"epoch": 2, "train": {"alpha.mean": 0.6}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert logged_alpha(tmp_path) == {"alpha.mean": 0.6}
    assert logged_alpha(tmp_path / "elsewhere") == {}
