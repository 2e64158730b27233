"""Multi-label metrics, threshold tuning and decoding probabilities into genres."""

import numpy as np

DEFAULT_THRESHOLD = 0.3
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
# Goals are searched on a finer grid reaching lower: a calibrated rare genre's probabilities are small.
GOAL_GRID = np.round(np.arange(0.01, 0.991, 0.01), 3)
GOAL_KINDS = ("precision", "recall")
# Held-out counts are smoothed by this many rows' worth of the calibrated model's own estimate: with
# ~100 validation rows a genre at a high threshold has a handful of rows, and 3 of 3 right is not 100%.
GOAL_PRIOR_ROWS = 10
# A precision goal is reached only at a threshold that keeps at least this many held-out rows: a precision
# counted on 1-4 rows is no evidence (bench/RESULTS.md measured thresholds resting on 2-3 rows miss on test).
GOAL_MIN_ROWS = 5


def apply_thresholds(probabilities, thresholds):
    """0/1 decisions; `thresholds` is one number or one per label."""
    return (np.asarray(probabilities) >= as_cutoffs(thresholds)).astype(np.int64)


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


def parse_goal(text):
    """'f1', 'precision>=0.9' or 'recall>=0.8' -> (kind, target); target None for f1. ValueError otherwise."""
    cleaned = str(text).strip().lower().replace(" ", "")
    if cleaned == "f1":
        return "f1", None
    kind, _, target = cleaned.partition(">=")
    try:
        value = float(target)
    except ValueError:
        value = None
    if kind not in GOAL_KINDS or value is None or not 0 < value < 1:
        raise ValueError(f"{text!r} is not a goal: use f1, precision>=P or recall>=R with P, R between 0 and 1")
    return kind, value


def parse_goals(items):
    """--threshold-goal's items: 'GOAL' for every genre, 'Genre=GOAL' for one -> {"*" or genre: normalised goal}."""
    goals, given = {"*": "f1"}, set()
    for item in items:
        genre, goal = "*", item
        cut = next((i for i, ch in enumerate(item) if ch == "=" and (i == 0 or item[i - 1] != ">")), None)
        if cut is not None:
            genre, goal = item[:cut].strip(), item[cut + 1 :]
            if not genre:
                raise ValueError(f"{item!r} names no genre before '='; write it like Horror=precision>=0.9")
        kind, target = parse_goal(goal)
        if genre in given:
            raise ValueError(f"{'every genre' if genre == '*' else genre} is given two goals; give each one once")
        given.add(genre)
        goals[genre] = "f1" if kind == "f1" else f"{kind}>={target:g}"
    return goals


def _smoothed(hits, count, expected):
    return (hits + GOAL_PRIOR_ROWS * expected) / (count + GOAL_PRIOR_ROWS)


def goal_threshold(y_true, probabilities, goal, grid=GOAL_GRID):
    """The threshold meeting a precision or recall goal on held-out rows of one genre.

    precision>=P: the lowest threshold from which precision stays at or above P all the way up (so one
    lucky row cannot open the door below), keeping at least GOAL_MIN_ROWS rows; recall>=R: the highest
    threshold keeping recall at or above R. Both are counted on the rows, smoothed by GOAL_PRIOR_ROWS rows
    of the (calibrated) probabilities' own estimate. Returns {"threshold", "precision", "recall", "reached",
    ...}: an unreachable precision goal has threshold None (never tagged), an unreachable recall goal the
    lowest threshold of the grid; precision and recall counted on the rows at that threshold.
    """
    kind, target = parse_goal(goal)
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    chosen, chosen_rows = None, 0
    for t in grid[::-1] if kind == "precision" else grid:
        kept = p >= t
        if kind == "precision":
            if kept.sum() < GOAL_MIN_ROWS:  # too few rows to judge by, either way: look lower
                continue
            estimate = _smoothed(y[kept].sum(), kept.sum(), p[kept].mean())
            if estimate < target or not y[kept].any():  # the model's word alone never reaches a goal
                break
            if kept.sum() == chosen_rows:  # the same rows as a higher threshold: keep that one (unseen scores
                continue  # between the two have no held-out evidence)
            chosen_rows = kept.sum()
        else:
            estimate = _smoothed(y[kept].sum(), y.sum(), p[kept].sum() / max(p.sum(), 1e-12))
            if estimate < target:
                break
        chosen = float(t)
    if chosen is None and kind == "recall":  # even the lowest threshold misses it: tag as much as the grid allows
        chosen = float(grid[0])
        reached = False
    else:
        reached = chosen is not None
    result = {"goal": goal, "threshold": chosen, "reached": reached, "positives": int(y.sum())}
    kept = p >= (chosen if chosen is not None else np.inf)
    result["precision"] = float(y[kept].mean()) if kept.any() else None
    result["recall"] = float(y[kept].sum() / y.sum()) if y.any() else None
    if chosen is None:  # what the rows did reach: the best counted precision on enough rows to count
        counted = [(y[p >= t].mean(), float(t), int((p >= t).sum())) for t in grid if (p >= t).sum() >= GOAL_MIN_ROWS]
        best = max(counted, default=None)
        result["best_precision"] = None if best is None else dict(zip(("precision", "threshold", "rows"), best))
    return result


def tune_thresholds(y_true, probabilities, labels, min_positives=5, grid=THRESHOLD_GRID, goals=None, fallback=None):
    """Choose thresholds on validation rows.

    Returns {"global": t, "per_label": {label: t}, "goals": {label: record}}: the global threshold maximises
    macro-F1; a label's own threshold follows its goal (`goals`: {"*" or label: "f1" | "precision>=P" |
    "recall>=R"}, default f1). For f1 it maximises the label's F1 over GOAL_GRID (calibrated rare genres
    need thresholds below 0.05), but only where validation holds at least `min_positives` of it: with fewer,
    its best threshold is noise and `fallback` is kept instead (per label: the run's default decisions),
    or the global threshold.
    A precision or recall goal no threshold reaches has threshold None: the genre is not tagged with
    these thresholds (the record says so, with what the rows reached).
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    goals = goals or {"*": "f1"}
    curve = macro_f1_by_threshold(y_true, probabilities, grid)
    global_threshold = float(grid[int(np.argmax(curve))])
    per_label, records = {}, {}
    for j, label in enumerate(labels):
        goal = goals.get(label, goals.get("*", "f1"))
        if goal != "f1":
            records[label] = goal_threshold(y_true[:, j], probabilities[:, j], goal)
            per_label[label] = records[label]["threshold"]
            continue
        if y_true[:, j].sum() < min_positives:
            per_label[label] = float(fallback[j]) if fallback is not None else global_threshold
        else:
            scores = [f1_score(y_true[:, j], probabilities[:, j] >= t, zero_division=0) for t in GOAL_GRID]
            per_label[label] = float(GOAL_GRID[int(np.argmax(scores))])
        kept = probabilities[:, j] >= per_label[label]
        records[label] = {
            "goal": "f1",
            "threshold": per_label[label],
            "reached": True,
            "positives": int(y_true[:, j].sum()),
            "precision": float(y_true[kept, j].mean()) if kept.any() else None,
            "recall": float(y_true[kept, j].sum() / y_true[:, j].sum()) if y_true[:, j].any() else None,
        }
    return {"global": global_threshold, "per_label": per_label, "min_positives": min_positives, "goals": records}


def unreached_goals_note(tuned, rows):
    """The one line saying which genres' goals no threshold reached on `rows` held-out rows, or None."""
    unreached = [genre for genre, record in tuned["goals"].items() if not record["reached"]]
    if not unreached:
        return None
    return (
        f"on the {rows} validation rows no threshold reaches the goal of {', '.join(unreached)}; with "
        "--threshold tuned a precision goal's genre is not tagged (thresholds.json records what was reached)"
    )


def as_cutoffs(thresholds):
    """Thresholds as numbers for comparisons: a genre whose goal no threshold reached (None) is never tagged."""
    if isinstance(thresholds, (int, float)):
        return float(thresholds)
    return np.array([np.inf if t is None else t for t in thresholds], dtype=np.float64)


def decode(probabilities, labels, thresholds=DEFAULT_THRESHOLD, top_k=None, min_genres=0):
    """For each row, [(label, probability), ...] at or above its threshold, highest first.

    `top_k` keeps at most k of them; `min_genres` tops a row up with its most probable remaining genres
    (those below threshold) until it has that many, so a row can be guaranteed at least one genre.
    """
    probabilities = np.asarray(probabilities)
    chosen = apply_thresholds(probabilities, thresholds).astype(bool)
    decoded = []
    for row, keep in zip(probabilities, chosen):
        ranked = np.argsort(-row, kind="stable")
        order = [j for j in ranked if keep[j]]
        if len(order) < min_genres:
            order += [j for j in ranked if not keep[j]][: min_genres - len(order)]
        if top_k is not None:
            order = order[:top_k]
        decoded.append([(labels[j], float(row[j])) for j in order])
    return decoded


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
