"""Multi-label metrics, threshold tuning and decoding probabilities into genres."""

import numpy as np

DEFAULT_THRESHOLD = 0.3
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def apply_thresholds(probabilities, thresholds):
    """0/1 decisions; `thresholds` is one number or one per label."""
    return (np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def multilabel_metrics(y_true, probabilities, thresholds=DEFAULT_THRESHOLD):
    """Macro/micro F1 and Hamming loss at `thresholds`, macro ROC-AUC on the probabilities themselves.

    ROC-AUC ranks probabilities; computing it on 0/1 decisions (as the public notebook did) throws the
    ranking away. A label with no positive or no negative row has no ROC-AUC: it is skipped and counted.
    """
    from sklearn.metrics import f1_score, hamming_loss, roc_auc_score

    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = apply_thresholds(probabilities, thresholds)
    positives = y_true.sum(axis=0)
    scorable = (positives > 0) & (positives < len(y_true))
    auc = [roc_auc_score(y_true[:, j], probabilities[:, j]) for j in np.flatnonzero(scorable)]
    return {
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "macro_roc_auc": float(np.mean(auc)) if auc else float("nan"),
        "roc_auc_labels_skipped": int((~scorable).sum()),
        "rows": len(y_true),
    }


def per_label_report(y_true, probabilities, labels, thresholds=DEFAULT_THRESHOLD):
    """One row per label: precision, recall, F1 at the thresholds, and support (positive rows)."""
    from sklearn.metrics import precision_recall_fscore_support

    y_pred = apply_thresholds(probabilities, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(y_true).astype(np.int64), y_pred, average=None, zero_division=0
    )
    return [
        {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]


def format_report(rows):
    lines = [f"{'genre':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for row in rows:
        lines.append(
            f"{row['label']:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} {row['support']:>8d}"
        )
    return "\n".join(lines)


def macro_f1_by_threshold(y_true, probabilities, grid=THRESHOLD_GRID):
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true).astype(np.int64)
    return np.array(
        [f1_score(y_true, apply_thresholds(probabilities, t), average="macro", zero_division=0) for t in grid]
    )


def tune_thresholds(y_true, probabilities, labels, min_positives=5, grid=THRESHOLD_GRID):
    """Choose thresholds on validation rows.

    Returns {"global": t, "per_label": {label: t}}: the global threshold maximises macro-F1; a label's
    own threshold maximises its F1, but only where validation holds at least `min_positives` of it:
    with fewer, its best threshold is noise and the global one is used instead.
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    curve = macro_f1_by_threshold(y_true, probabilities, grid)
    global_threshold = float(grid[int(np.argmax(curve))])
    per_label = {}
    for j, label in enumerate(labels):
        if y_true[:, j].sum() < min_positives:
            per_label[label] = global_threshold
            continue
        scores = [f1_score(y_true[:, j], probabilities[:, j] >= t, zero_division=0) for t in grid]
        per_label[label] = float(grid[int(np.argmax(scores))])
    return {"global": global_threshold, "per_label": per_label, "min_positives": min_positives}


def decode(probabilities, labels, thresholds=DEFAULT_THRESHOLD, top_k=None):
    """For each row, [(label, probability), ...] at or above its threshold, highest first.

    `top_k` keeps at most k of them; a row with nothing above threshold gets an empty list.
    """
    probabilities = np.asarray(probabilities)
    chosen = apply_thresholds(probabilities, thresholds).astype(bool)
    decoded = []
    for row, keep in zip(probabilities, chosen):
        order = [j for j in np.argsort(-row, kind="stable") if keep[j]]
        if top_k is not None:
            order = order[:top_k]
        decoded.append([(labels[j], float(row[j])) for j in order])
    return decoded


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
