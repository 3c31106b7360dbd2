"""clever-eval on a tiny checkpoint, clever-plot on its run, and the comparison command end to
end at toy size."""
import json
import math
import os

import numpy as np
import pytest
import torch

from clever_kernels.augment import image_sizes, render, sample_view
from clever_kernels.train.cli import eval_main, plot_main, train_main
from clever_kernels.train.compare import main as compare_main
from clever_kernels.train.evaluate import angle_r2, evaluate, perturbation_config
from train_helpers import TINY_COMPARISON, TINY_RUN, assert_state_equal

METRICS = ("top1_ori", "top1_ori_cj_r", "rotation_r2")


@pytest.fixture(scope="module")
def run(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train_main(TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _check_result(result):
    for key in METRICS:
        assert set(result[key]) == {"full", "ir", "ef"} | ({"ir_at_ef_width"} if key == "rotation_r2" else set())
    for part in ("full", "ir", "ef"):
        assert 0 <= result["top1_ori"][part] <= 100 and 0 <= result["top1_ori_cj_r"][part] <= 100
        assert math.isfinite(result["rotation_r2"][part]) and result["rotation_r2"][part] <= 1
    dims = result["feature_dims"]
    assert dims["full"] == dims["ir"] + dims["ef"]


def test_eval_checkpoint(run, capsys):
    assert eval_main([str(run / "checkpoint.pt")]) == 0
    table = capsys.readouterr().out
    assert "Top1-Ori+CJ+R" in table and "| IR |" in table
    result = json.load(open(run / "eval_teacher.json"))
    _check_result(result)
    assert result["feature_dims"] == {"full": 32, "ir": 25, "ef": 7}
    assert result["method"] == "clever" and result["which"] == "teacher" and not result["split_nominal"]
    assert result["n_train"] == 32 and result["n_test"] == 8
    assert os.path.getsize(run / "eval_teacher.png") > 0 and os.path.exists(run / "eval_teacher.md")

    student = evaluate(str(run / "checkpoint.pt"), which="student", out=str(run / "student"), plot=False)
    _check_result(student)
    assert student["which"] == "student"


def test_eval_refusals_come_before_the_work(run, tmp_path):
    """A run directory is taken for its checkpoint; what would fail only after the features
    were extracted, or lose the results, is refused first."""
    result = evaluate(str(run), out=str(tmp_path / "from_dir"), plot=False)
    assert result["checkpoint"] == str(run / "checkpoint.pt")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file"):
        evaluate(str(run), out=str(tmp_path / "a_file"))
    torch.save({"step": 3}, tmp_path / "not_a_run.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by clever-train"):
        evaluate(str(tmp_path / "not_a_run.pt"), out=str(tmp_path))
    with pytest.raises(ValueError, match=r"max_train=1 of 32\) hold 1 class: a linear probe needs at least 2"):
        evaluate(str(run), out=str(tmp_path), max_train=1)
    with pytest.raises(ValueError, match="max_train must be >= 1"):
        evaluate(str(run), out=str(tmp_path), max_train=0)
    with pytest.raises(SystemExit):
        eval_main([str(run), "--max-train", "0"])


def test_plot(run, tmp_path):
    assert plot_main([str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert os.path.getsize(tmp_path / "curves.png") > 1000


def test_plot_labels_and_torn_log(run, tmp_path):
    """Runs that share a folder name (seed0/dino, seed1/dino) get distinct labels; a log whose
    last line a killed run tore is read up to it."""
    from clever_kernels.train.plot import read_log, run_labels

    assert run_labels(["a/seed0/dino", "a/seed1/dino/"]) == [os.path.join("seed0", "dino"), os.path.join("seed1", "dino")]
    assert run_labels(["runs/dino", "runs/clever"]) == ["dino", "clever"]
    torn = tmp_path / "torn"
    torn.mkdir()
    text = open(run / "log.jsonl").read()
    (torn / "log.jsonl").write_text(text[:-20])
    assert len(read_log(str(torn / "log.jsonl"))["step"]) + len(read_log(str(torn / "log.jsonl"))["epoch"]) == \
        text.count("\n") - 1
    assert plot_main([str(torn), "--out", str(tmp_path / "torn.png")]) == 0


@pytest.mark.parametrize("argv, message", [(["--seeds", "0", "0"], "repeats a seed"),
                                           (["--seed", "7"], "--seed is set by the comparison itself: use --seeds"),
                                           (["--method", "dino"], "--method is set by the comparison")])
def test_compare_refuses_options_it_sets(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare_main(argv)
    assert message in capsys.readouterr().err


def test_perturbations_rotate_and_jitter_without_cropping():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    ids = torch.arange(6)
    clean = sample_view(image_sizes(images), perturbation_config("clean", 20), view=0, ids=ids)
    assert clean.height.tolist() == [20] * 6 and not clean.flip.any() and not clean.jitter.any()
    assert (clean.angle == 0).all()
    perturbed = sample_view(image_sizes(images), perturbation_config("cj_r", 20), view=0, ids=ids)
    assert perturbed.jitter.all() and (perturbed.angle.abs() > 0).all() and (perturbed.angle.abs() < 90).all()
    assert (perturbed.saturation.min() >= 0.6) and (perturbed.saturation.max() <= 1.4)
    assert render(images, perturbed).shape == (6, 3, 20, 20)


def test_angle_r2_bounds():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-90, 90, 400)
    rad = np.deg2rad(angles)
    informative = np.stack([np.cos(rad), np.sin(rad)], 1) + 0.01 * rng.normal(size=(400, 2))
    noise = rng.normal(size=(400, 5))
    assert angle_r2(informative[:300], angles[:300], informative[300:], angles[300:]) > 0.95
    assert angle_r2(noise[:300], angles[:300], noise[300:], angles[300:]) < 0.1


def test_r2_at_width_scores_subsets_of_that_width():
    """IR's R^2 at EF's width: the mean over random column subsets, so a wide slice whose every
    column carries a little of the angle is not credited for its width alone."""
    from clever_kernels.train.evaluate import WIDTH_MATCHED_SUBSETS, _r2_at_width
    rng = np.random.default_rng(1)
    angles = rng.uniform(-90, 90, size=400)
    rad = np.deg2rad(angles)
    signal = np.stack([np.cos(rad), np.sin(rad)], axis=1)
    # 40 columns, each the signal under heavy independent noise: more columns average it out
    wide = signal @ rng.normal(size=(2, 40)) + 3.0 * rng.normal(size=(400, 40))
    full = angle_r2(wide[:300], angles[:300], wide[300:], angles[300:])
    narrow = _r2_at_width(wide[:300], angles[:300], wide[300:], angles[300:], 5, seed=0)
    subsets = np.random.default_rng(0)
    manual = np.mean([angle_r2(wide[:300][:, c], angles[:300], wide[300:][:, c], angles[300:])
                      for c in (np.sort(subsets.choice(40, size=5, replace=False))
                                for _ in range(WIDTH_MATCHED_SUBSETS))])
    assert narrow == pytest.approx(manual, abs=1e-12)
    assert full > narrow + 0.2
    assert _r2_at_width(wide[:300], angles[:300], wide[300:], angles[300:], 40, seed=0) == full


def test_compare_end_to_end(digits_folder, tmp_path, capsys, monkeypatch):
    from clever_kernels.train import compare
    toy = TINY_COMPARISON + ["--data", digits_folder, "--device", "cpu"]
    # the evaluations run where the trainings ran, not on a GPU the machine may also have
    devices = []
    for name in ("evaluate", "evaluate_network"):
        monkeypatch.setattr(compare, name, lambda *a, _f=getattr(compare, name), **k: devices.append(k["device"])
                            or _f(*a, **k))
    code = compare_main(["--seeds", "0", "1", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
                        + toy)
    assert code == 0
    table = capsys.readouterr().out
    assert table.count("| DINO | CLeVER |") == 1 and "rotation R^2, EF" in table and "±" in table
    assert "rotation R^2, IR at EF's width" in table
    stem = tmp_path / "results" / "compare_tree_vit_tiny_seeds0-1"
    report = json.load(open(f"{stem}.json"))
    assert report["seeds"] == [0, 1] and len(report["runs"]) == 6
    assert report["command"].startswith("python -m clever_kernels.train.compare --seeds 0 1")
    assert report["machine"]["cpu_count"] >= 1
    assert set(report["summary"]) == {"untrained", "DINO", "CLeVER"}
    assert len(report["summary"]["CLeVER"]["top1_ori"]["full"]["values"]) == 2
    assert devices == ["cpu"] * 6
    assert {r.get("device") for r in report["runs"]} == {None, "cpu"}  # the untrained rows train nowhere
    assert "Machine:" in open(f"{stem}.md").read() and "trained and evaluated on cpu." in open(f"{stem}.md").read()


def test_angle_r2_regresses_cos_and_sin_not_degrees():
    """The rotation target is (cos, sin) of the angle: a feature linear in the angle in degrees
    predicts sin well on (-90, 90) but not cos, which is even in the angle, so the mean R^2 is
    about one half; a target in degrees would score it near 1."""
    rng = np.random.default_rng(2)
    angles = rng.uniform(-90, 90, 400)
    linear = angles[:, None] + 0.5 * rng.normal(size=(400, 1))
    r2 = angle_r2(linear[:300], angles[:300], linear[300:], angles[300:])
    assert 0.3 < r2 < 0.7, f"R^2 {r2:.3f} of a degree-linear feature: the target is not (cos, sin)"


def test_eval_uses_the_requested_network_and_fits_probes_on_train_only(run, monkeypatch, tmp_path):
    """evaluate(which="teacher") probes the teacher's weights; every probe is fit on the train
    split's features and scored on the test split's; the CJ+R score uses the perturbed test
    features; IR is the first int(D * hp1) columns of the feature, EF the rest."""
    import clever_kernels.train.evaluate as ev
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert any(not torch.equal(state["teacher"][k], state["student"][k]) for k in state["teacher"])
    seen = {"models": [], "probes": [], "r2": []}
    real_network, real_probe, real_r2 = ev.evaluate_network, ev.linear_probe, ev.angle_r2

    def network_spy(model, *args, **kwargs):
        seen["models"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_network(model, *args, **kwargs)

    def probe_spy(train_x, train_y, test_sets, *args, **kwargs):
        seen["probes"].append((train_x.copy(), {name: x.copy() for name, (x, _) in test_sets.items()}))
        return real_probe(train_x, train_y, test_sets, *args, **kwargs)

    def r2_spy(train_x, train_angles, test_x, test_angles):
        seen["r2"].append((train_x.shape[0], test_x.shape[0], np.asarray(train_angles).copy()))
        return real_r2(train_x, train_angles, test_x, test_angles)

    monkeypatch.setattr(ev, "evaluate_network", network_spy)
    monkeypatch.setattr(ev, "linear_probe", probe_spy)
    monkeypatch.setattr(ev, "angle_r2", r2_spy)
    result = ev.evaluate(str(run / "checkpoint.pt"), which="teacher", out=str(tmp_path), plot=False)
    (weights,) = seen["models"]
    assert_state_equal(weights, state["teacher"], "the evaluated weights (which='teacher')")

    n_train, n_test = result["n_train"], result["n_test"]
    assert (n_train, n_test) == (32, 8)
    (full_train, full_tests), (ir_train, ir_tests), (ef_train, ef_tests) = seen["probes"]
    d_ir = int(full_train.shape[1] * 0.8)
    for train_x, tests in seen["probes"]:
        assert train_x.shape[0] == n_train and tests["ori"].shape[0] == tests["cj_r"].shape[0] == n_test
        assert not np.array_equal(tests["ori"], tests["cj_r"]), "CJ+R scored on clean test features"
    np.testing.assert_array_equal(ir_train, full_train[:, :d_ir])
    np.testing.assert_array_equal(ef_train, full_train[:, d_ir:])
    np.testing.assert_array_equal(ir_tests["ori"], full_tests["ori"][:, :d_ir])
    for rows_train, rows_test, train_angles in seen["r2"]:
        assert (rows_train, rows_test) == (n_train, n_test), "the angle regressor is fit on the train split"
        assert np.abs(train_angles).min() > 0 and np.abs(train_angles).max() < 90


def test_perturbation_rotation_spans_minus_90_to_90():
    # SPEC.md: RandomRotation(-90, 90) at test time, for CJ+R and for the rotation regression
    images = torch.zeros(2000, 3, 8, 8, dtype=torch.uint8)
    for kind in ("cj_r", "rot"):
        angles = sample_view(image_sizes(images), perturbation_config(kind, 8), view=0, ids=torch.arange(2000)).angle
        assert angles.min() < -85 and angles.max() > 85 and angles.abs().max() <= 90, \
            f"{kind}: angles in [{float(angles.min()):.1f}, {float(angles.max()):.1f}], not uniform in (-90, 90)"


def test_summary_helpers():
    from clever_kernels.train.compare import _stats
    from clever_kernels.train.evaluate import _subsample
    from clever_kernels.train.plot import _smooth

    values = [1.0, 2.0, 4.0, 9.0]
    stats = _stats(values)
    # spread over seeds: the sample standard deviation (n - 1 in the denominator)
    assert stats["mean"] == pytest.approx(4.0) and stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert _stats([3.0])["std"] == 0.0
    # a trailing mean over the last `window` values
    assert _smooth([2.0, 4.0, 6.0, 8.0, 10.0], 2) == pytest.approx([2.0, 3.0, 5.0, 7.0, 9.0])
    keep = _subsample(50, 20, seed=3)
    assert len(keep) == len(set(keep.tolist())) == 20 and keep.min() >= 0 and keep.max() < 50, \
        "the probe's train subsample must hold 20 distinct images"
    assert np.array_equal(keep, np.sort(keep)) and np.array_equal(_subsample(5, 20, seed=3), np.arange(5))
