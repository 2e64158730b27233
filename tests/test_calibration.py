"""Calibration, calibration metrics, threshold goals and the genre-count rules of decoding (no model)."""

import json

import numpy as np
import pytest

from conftest import run_script
from genre_tagger import UserError
from genre_tagger import calibration as gcal
from genre_tagger.metrics import decode, goal_threshold, parse_goals, tune_thresholds
from genre_tagger.run import thresholds_from
from genre_tagger.run_format import check_file

LABELS = ["Action", "Drama", "Horror"]


def simulated(rows=4000, seed=0, scale=0.5, offsets=(0.0, 1.0, 3.0)):
    """Logits a pos-weighted model would give: the true logit stretched by 1/scale, plus each genre's offset."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(-1.5, 1.5, size=(rows, len(offsets)))
    y = (rng.random(true_logits.shape) < gcal.sigmoid(true_logits)).astype(np.int64)
    return true_logits / scale + np.array(offsets), y, true_logits


def test_prior_temperature_recovers_the_stretch_and_the_offsets():
    logits, y, true_logits = simulated()
    fitted = gcal.fit(logits, y, "prior-temperature", offsets=[0.0, 1.0, 3.0])
    assert fitted["scale"] == pytest.approx([0.5] * 3, abs=0.05)
    calibrated = gcal.apply(logits, fitted)
    assert np.abs(calibrated - true_logits).mean() < 0.1
    before = gcal.calibration_report(y, gcal.sigmoid(logits), LABELS)
    after = gcal.calibration_report(y, gcal.sigmoid(calibrated), LABELS)
    assert after["micro_ece"] < 0.02 < before["micro_ece"]
    assert after["log_loss"] < before["log_loss"] and after["brier"] < before["brier"]


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_other_methods_lower_log_loss_and_keep_each_genres_order(method):
    logits, y, _ = simulated(seed=1)
    fitted = gcal.fit(logits, y, method)
    calibrated = gcal.apply(logits, fitted)
    assert all(s > 0 for s in fitted["scale"])
    for j in range(len(LABELS)):
        assert (np.argsort(calibrated[:, j], kind="stable") == np.argsort(logits[:, j], kind="stable")).all()
    report = gcal.calibration_report(y, gcal.sigmoid(calibrated), LABELS)
    assert report["log_loss"] < gcal.calibration_report(y, gcal.sigmoid(logits), LABELS)["log_loss"]


def test_none_changes_nothing_and_unknown_methods_are_refused():
    logits, y, _ = simulated(rows=50)
    assert np.array_equal(gcal.apply(logits, gcal.fit(logits, y, "none")), logits)
    with pytest.raises(ValueError, match="isotonic"):
        gcal.fit(logits, y, "isotonic")


def test_folding_into_the_last_layer_gives_the_calibrated_logits():
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 3)
    inputs = torch.randn(5, 8)
    with torch.no_grad():
        before = layer(inputs).double().numpy()
    calibration = {"scale": [0.4, 1.3, 0.9], "shift": [-1.0, 0.5, -2.5]}
    gcal.fold_into(layer, calibration)
    with torch.no_grad():
        after = layer(inputs).double().numpy()
    np.testing.assert_allclose(after, gcal.apply(before, calibration), atol=1e-5)


def test_the_mapped_threshold_keeps_every_decision_and_undo_inverts_the_map():
    logits, y, _ = simulated(rows=2000, seed=2)
    fitted = gcal.fit(logits, y, "prior-temperature", offsets=[0.0, 1.0, 3.0])
    raw = gcal.sigmoid(logits)
    calibrated = gcal.apply_to_probabilities(raw, fitted)
    mapped = gcal.map_threshold(0.3, fitted)
    assert len(set(np.round(mapped, 6))) == 3  # one per genre
    assert np.array_equal(raw >= 0.3, calibrated >= mapped)
    np.testing.assert_allclose(gcal.undo(calibrated, fitted), raw, atol=1e-9)
    assert np.array_equal(gcal.undo(raw, None), raw)


def test_a_steep_map_still_gives_thresholds_a_run_may_hold_with_the_same_decisions():
    # Platt scaling fitted on a few rows: a scale of 1000 sends logit(0.3) far below and far above 0.
    steep = {"scale": [1000.0, 1000.0, 1.0], "shift": [0.0, 1e4, 0.0]}
    mapped = gcal.map_threshold(0.3, steep)
    assert all(0 < t < 1 for t in mapped) and mapped[2] == pytest.approx(0.3)
    labels = ["A", "B", "C"]
    saved = {"default": 0.3, "default_per_label": dict(zip(labels, map(float, json.loads(json.dumps(list(mapped))))))}
    check_file("thresholds.json", saved, "run", labels)  # what the run check reads back from thresholds.json
    assert mapped[0] == np.nextafter(0.0, 1.0) and mapped[1] == np.nextafter(1.0, 0.0)
    # A row that the map sends to 1.0 is still tagged, as its uncalibrated probability above 0.3 says.
    raw = np.array([[0.29, 0.31, 0.31], [0.31, 0.99, 0.29]])
    calibrated = gcal.apply_to_probabilities(raw, steep)
    assert calibrated[:, 1].tolist() == [1.0, 1.0]
    assert np.array_equal((raw >= 0.3)[:, 1:], (calibrated >= mapped)[:, 1:])


def test_expected_calibration_error_by_hand():
    # Bin [0.2, 0.267): 0.25, 0.25 with 1 positive of 2 -> |0.5 - 0.25| = 0.25; bin [0.933, 1]: 0.95 with a
    # positive -> 0.05. Weighted by cells: (2 * 0.25 + 1 * 0.05) / 3.
    assert gcal.expected_calibration_error([1, 0, 1], [0.25, 0.25, 0.95]) == pytest.approx(0.55 / 3)
    assert gcal.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    rng = np.random.default_rng(3)
    p = rng.random(200_000)
    assert gcal.expected_calibration_error(rng.random(p.size) < p, p) < 0.005


def test_calibration_report_pools_cells_for_micro_and_averages_genres_for_macro():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.4], [0.6, 0.7], [0.1, 0.3]])
    report = gcal.calibration_report(y, p, ["A", "B"])
    per_genre = [gcal.expected_calibration_error(y[:, j], p[:, j]) for j in range(2)]
    assert report["macro_ece"] == pytest.approx(np.mean(per_genre))
    assert report["micro_ece"] == pytest.approx(gcal.expected_calibration_error(y, p))
    assert report["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert report["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert report["per_genre_ece"] == dict(zip(["A", "B"], per_genre)) and report["bins"] == 15


def test_goals_parse_globally_and_per_genre():
    assert parse_goals(["precision>=0.9", "Horror=recall>=0.8", "Drama = F1"]) == {
        "*": "precision>=0.9",
        "Horror": "recall>=0.8",
        "Drama": "f1",
    }
    assert parse_goals([]) == {"*": "f1"}
    for bad in ["precision>0.9", "=f1", "recall>=1.5", "accuracy>=0.5", "precision>=x"]:
        with pytest.raises(ValueError):
            parse_goals([bad])
    with pytest.raises(ValueError, match="Drama is given two goals"):
        parse_goals(["Drama=f1", "Drama=precision>=0.9"])
    with pytest.raises(ValueError, match="every genre is given two goals"):
        parse_goals(["f1", "recall>=0.8"])


def test_a_precision_goal_is_met_on_the_rows_or_the_genre_is_not_tagged():
    rng = np.random.default_rng(4)
    p = rng.random(400)
    y = rng.random(400) < p  # calibrated by construction
    record = goal_threshold(y, p, "precision>=0.8")
    kept = p >= record["threshold"]
    assert record["reached"] and y[kept].mean() >= 0.75 and record["precision"] == pytest.approx(y[kept].mean())
    # Every threshold above the chosen one holds the goal too (no lucky single row opens the door lower).
    assert record["threshold"] < 0.9
    # The very top rows are too few to judge by: one wrong row above all the others neither reaches nor blocks.
    y_top, p_top = np.r_[False, np.ones(30, bool), np.zeros(30, bool)], np.r_[0.99, np.full(30, 0.9), np.full(30, 0.1)]
    assert goal_threshold(y_top, p_top, "precision>=0.9")["threshold"] == pytest.approx(0.9)
    assert goal_threshold(y_top[:4], p_top[:4], "precision>=0.5")["threshold"] is None  # 4 rows: no evidence
    unreachable = goal_threshold(np.zeros(50, bool), np.linspace(0.01, 0.99, 50), "precision>=0.9")
    assert unreachable["threshold"] is None and not unreachable["reached"]
    assert unreachable["best_precision"]["precision"] == 0.0


def test_a_recall_goal_keeps_that_share_of_the_positives():
    rng = np.random.default_rng(5)
    p = rng.random(400)
    y = rng.random(400) < p
    record = goal_threshold(y, p, "recall>=0.8")
    assert record["reached"] and record["recall"] >= 0.75
    assert (y & (p >= record["threshold"] + 0.05)).sum() / y.sum() < 0.85  # the highest such threshold


def test_tuned_thresholds_follow_each_genres_goal_and_record_what_was_reached():
    rng = np.random.default_rng(6)
    p = rng.random((300, 3))
    y = (rng.random((300, 3)) < p).astype(int)
    y[:, 2] = 0  # Horror: no positive at all, so a precision goal cannot be reached
    tuned = tune_thresholds(y, p, LABELS, goals=parse_goals(["precision>=0.8", "Drama=f1"]))
    assert tuned["goals"]["Drama"]["goal"] == "f1" and tuned["goals"]["Action"]["goal"] == "precision>=0.8"
    assert tuned["goals"]["Action"]["reached"] and tuned["per_label"]["Action"] > tuned["per_label"]["Drama"]
    assert tuned["per_label"]["Horror"] is None and not tuned["goals"]["Horror"]["reached"]
    json.dumps(tuned)  # it goes into thresholds.json as it is


def test_decode_honours_min_and_max_genres():
    p = np.array([[0.9, 0.5, 0.05], [0.1, 0.2, 0.05]])
    assert decode(p, LABELS, 0.3) == [[("Action", 0.9), ("Drama", 0.5)], []]
    assert decode(p, LABELS, 0.3, min_genres=1)[1] == [("Drama", pytest.approx(0.2))]
    assert decode(p, LABELS, 0.3, top_k=1, min_genres=1) == [[("Action", 0.9)], [("Drama", pytest.approx(0.2))]]
    assert len(decode(p, LABELS, 0.3, min_genres=3)[0]) == 3
    assert decode(p, LABELS, [0.95, None, 0.01]) == [
        [("Horror", pytest.approx(0.05))],
        [("Horror", pytest.approx(0.05))],
    ]


def test_threshold_choices_read_the_run_as_saved():
    saved = {
        "default": 0.3,
        "default_per_label": {"Action": 0.25, "Drama": 0.35, "Horror": 0.05},
        "global": 0.4,
        "per_label": {"Action": 0.5, "Drama": None, "Horror": 0.2},
    }
    assert thresholds_from(saved, LABELS, "default") == [0.25, 0.35, 0.05]
    assert thresholds_from({"default": 0.3}, LABELS, "default") == 0.3  # a run saved before calibration
    assert thresholds_from(saved, LABELS, "tuned") == [0.5, None, 0.2]
    assert thresholds_from(saved, LABELS, "0.6") == 0.6
    with pytest.raises(UserError, match="'default', 'tuned'"):
        thresholds_from(saved, LABELS, "best")


@pytest.mark.slow  # train.py on 60 real rows (a frozen encoder: seconds of fitting)
def test_platt_on_few_rows_saves_a_run_with_saturated_thresholds_inside_0_1(imdb_csv, tmp_path):
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "60", "--model", "minilm", "--freeze-encoder",
        "--calibrate", "platt", "--output", tmp_path / "run", "--checkpoint-dir", tmp_path / "ck", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    defaults = json.loads((tmp_path / "run" / "thresholds.json").read_text())["default_per_label"].values()
    assert all(0 < t < 1 for t in defaults)
    assert max(defaults) == np.nextafter(1.0, 0.0)  # this run's steepest genre saturated: the clamp kept it in
