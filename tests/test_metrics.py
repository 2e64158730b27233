import numpy as np
import pytest

from genre_tagger import metrics

Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
P = np.array([[0.9, 0.2, 0.4], [0.1, 0.35, 0.2], [0.25, 0.8, 0.1], [0.5, 0.1, 0.05]])


def test_metrics_match_hand_computed_values():
    # At 0.3: predictions [[1,0,1],[0,1,0],[0,1,0],[1,0,0]].
    # label 0: tp=1 fp=1 fn=1 -> F1 0.5; label 1: tp=2 -> F1 1.0; label 2: tp=1 -> F1 1.0
    # micro: tp=4 fp=1 fn=1 -> F1 0.8; Hamming: 2 wrong of 12 cells.
    got = metrics.multilabel_metrics(Y, P, 0.3)
    assert got["macro_f1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert got["micro_f1"] == pytest.approx(0.8)
    assert got["hamming_loss"] == pytest.approx(2 / 12)
    # ROC-AUC on probabilities: label 0 positives {0.9, 0.25} vs negatives {0.1, 0.5}: pairs won 3 of 4.
    # label 1 and label 2 rank perfectly -> (0.75 + 1 + 1) / 3.
    assert got["macro_roc_auc"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert got["roc_auc_labels_skipped"] == 0


def test_roc_auc_uses_probabilities_not_decisions():
    # Both give the same decisions at 0.3 ([1, 1, 0, 0]), so AUC on decisions would be 0.5 for both;
    # on probabilities the first ranks 3 of 4 positive/negative pairs right, the second 1 of 4.
    y = np.array([[1], [0], [1], [0]])
    better = np.array([[0.9], [0.4], [0.2], [0.1]])
    worse = np.array([[0.35], [0.9], [0.05], [0.1]])
    assert (metrics.apply_thresholds(better, 0.3) == metrics.apply_thresholds(worse, 0.3)).all()
    assert metrics.multilabel_metrics(y, better)["macro_roc_auc"] == pytest.approx(0.75)
    assert metrics.multilabel_metrics(y, worse)["macro_roc_auc"] == pytest.approx(0.25)


def test_labels_without_positives_or_negatives_are_skipped_and_counted():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    p = np.array([[0.8, 0.1, 0.9], [0.2, 0.2, 0.9], [0.7, 0.1, 0.9]])
    got = metrics.multilabel_metrics(y, p)
    assert got["roc_auc_labels_skipped"] == 2
    assert got["macro_roc_auc"] == pytest.approx(1.0)


def test_per_genre_thresholds_apply_column_by_column():
    decisions = metrics.apply_thresholds(P, [0.95, 0.3, 0.3])
    assert decisions[:, 0].tolist() == [0, 0, 0, 0]
    assert decisions[:, 1].tolist() == [0, 1, 1, 0]


def test_decode_sorts_highest_first_and_respects_threshold_and_top_k():
    labels = ["Action", "Crime", "Drama"]
    probabilities = np.array([[0.52, 0.91, 0.78], [0.1, 0.2, 0.29]])
    assert metrics.decode(probabilities, labels, 0.3) == [
        [("Crime", pytest.approx(0.91)), ("Drama", pytest.approx(0.78)), ("Action", pytest.approx(0.52))],
        [],
    ]
    assert [g for g, _ in metrics.decode(probabilities, labels, 0.3, top_k=2)[0]] == ["Crime", "Drama"]
    assert metrics.decode(probabilities, labels, 0.52)[0][-1][0] == "Action"  # at the threshold counts


def test_tune_thresholds_falls_back_to_global_for_rare_labels():
    rng = np.random.default_rng(0)
    y = np.zeros((60, 2), dtype=int)
    y[:30, 0] = 1  # common label, separable at 0.6
    y[0, 1] = 1  # one positive only
    p = np.where(y == 1, 0.7, 0.5) + rng.uniform(-0.05, 0.05, size=y.shape)
    tuned = metrics.tune_thresholds(y, p, ["common", "rare"], min_positives=5)
    assert 0.55 <= tuned["per_label"]["common"] <= 0.65
    assert tuned["per_label"]["rare"] == tuned["global"]
    assert tuned["global"] in metrics.THRESHOLD_GRID
    # With the run's default decisions as the fallback, a rare label keeps its own default threshold.
    with_fallback = metrics.tune_thresholds(y, p, ["common", "rare"], min_positives=5, fallback=[0.3, 0.04])
    assert (
        with_fallback["per_label"]["rare"] == 0.04
        and with_fallback["per_label"]["common"] == tuned["per_label"]["common"]
    )


def test_f1_tuning_reaches_below_the_global_grid_for_calibrated_rare_genres():
    y = np.array([1] * 6 + [0] * 94)
    p = np.r_[np.full(6, 0.03), np.full(94, 0.01)]  # calibrated: a rare genre's probabilities are small
    assert metrics.tune_thresholds(y[:, None], p[:, None], ["rare"])["per_label"]["rare"] == pytest.approx(
        0.02, abs=0.011
    )
