"""Calibration benchmark: score runs' test rows from predict.py's own output, with metrics computed here.

    python bench/calibration.py RUN [RUN ...]                   # calibration, decisions and goals per run
    python bench/calibration.py --compare-methods RUN [RUN ...]  # uncalibrated runs: each method fitted on
                                                                 # their validation rows, scored on test

Each run's test and validation rows come from its split.csv. predict.py tags them (`--input`, JSON lines
out) at `--threshold default` and `--threshold tuned`, as a user would, and everything below is computed
from that output by this script's own code (its ECE is written out again here, not imported):
- micro ECE: every (row, genre) cell pooled into 15 equal-width bins; macro ECE: the mean of the genres';
  Brier score and log loss over all cells; macro-F1 of the genres predict.py printed;
- the noise floor of macro ECE: the same figure for labels drawn from the run's own probabilities (so
  perfectly calibrated by construction), mean of 200 draws;
- per genre with at least --min-positives test positives: precision and recall of `--threshold tuned`, and
  the goal recorded in thresholds.json (reached on validation or not).
The table gives mean ± std over the runs given (e.g. the three seeds of bench/quality.py --keep-runs).

--compare-methods needs uncalibrated runs (train.py --calibrate none, or runs saved before calibration):
it fits every method of genre_tagger.calibration, and isotonic regression, on predict.py's validation
probabilities and scores the test rows, with the decisions at the calibrated 0.3 and at the mapped
default (the uncalibrated run's own 0.3 decisions).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from genre_tagger.data import read_split  # noqa: E402
from genre_tagger.run import Run  # noqa: E402

BINS = 15


def ece(y, p, bins=BINS):
    y, p = np.asarray(y, float).ravel(), np.asarray(p, float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).sum() for b in np.unique(which)) / len(p)


def scores(y, p, labels):
    from sklearn.metrics import brier_score_loss, log_loss

    return {
        "micro_ece": ece(y, p),
        "macro_ece": float(np.mean([ece(y[:, j], p[:, j]) for j in range(len(labels))])),
        "brier": brier_score_loss(y.ravel(), p.ravel()),
        "log_loss": log_loss(y.ravel(), np.clip(p.ravel(), 1e-7, 1 - 1e-7), labels=[0, 1]),
    }


def noise_floor(p, labels, draws=200, seed=0):
    rng = np.random.default_rng(seed)
    return float(np.mean([scores((rng.random(p.shape) < p).astype(int), p, labels)["macro_ece"] for _ in range(draws)]))


def predicted(run, rows, threshold):
    """predict.py on `rows` (text, labels) -> (probabilities, 0/1 genres it tagged), in the run's genre order."""
    with Run.open(run) as opened:
        labels = opened.labels
    with tempfile.TemporaryDirectory() as work:
        source, target = Path(work) / "rows.csv", Path(work) / "out.jsonl"
        rows.rename(columns={"text": "Description"})[["Description"]].to_csv(source, index=False)
        command = [sys.executable, str(ROOT / "predict.py"), "--model", str(run), "--input", str(source)]
        command += ["--output", str(target), "--threshold", str(threshold)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        records = [json.loads(line) for line in target.read_text().splitlines()]
    probabilities = np.array([[r["probabilities"][g] for g in labels] for r in records])
    tagged = np.array([[g in {x["genre"] for x in r["genres"]} for g in labels] for r in records], dtype=int)
    return labels, probabilities, tagged


def split_rows(run, which):
    with Run.open(run) as opened:
        split = read_split(opened.read("split.csv"))
    return split[split["split"] == which].reset_index(drop=True)


def truth(rows, labels):
    return np.array([[g in row.split(",") for g in labels] for row in rows["labels"]], dtype=int)


def evaluate(run, min_positives):
    from sklearn.metrics import f1_score, precision_score, recall_score

    test = split_rows(run, "test")
    labels, p, default_tags = predicted(run, test, "default")
    _, _, tuned_tags = predicted(run, test, "tuned")
    y = truth(test, labels)
    with Run.open(run) as opened:
        goals = opened.thresholds.get("goals", {})
    result = scores(y, p, labels)
    result["macro_ece_noise_floor"] = noise_floor(p, labels)
    result["macro_f1_default"] = f1_score(y, default_tags, average="macro", zero_division=0)
    result["mean_probability"], result["positive_rate"] = float(p.mean()), float(y.mean())
    result["genres"] = {
        g: {
            "test_positives": int(y[:, j].sum()),
            "goal": goals.get(g, {}).get("goal"),
            "reached_on_validation": goals.get(g, {}).get("reached"),
            "tagged": int(tuned_tags[:, j].sum()),
            "precision": precision_score(y[:, j], tuned_tags[:, j], zero_division=np.nan),
            "recall": recall_score(y[:, j], tuned_tags[:, j], zero_division=0),
        }
        for j, g in enumerate(labels)
        if y[:, j].sum() >= min_positives
    }
    return result


def compare_methods(run):
    from sklearn.isotonic import IsotonicRegression
    from sklearn.metrics import f1_score

    from genre_tagger import calibration as gcal

    validation, test = split_rows(run, "validation"), split_rows(run, "test")
    labels, p_val, _ = predicted(run, validation, 0.3)
    _, p_test, _ = predicted(run, test, 0.3)
    y_val, y_test = truth(validation, labels), truth(test, labels)
    with Run.open(run) as opened:
        if opened.calibration is not None and opened.calibration["method"] != "none":
            sys.exit(f"{run} is calibrated already; --compare-methods needs runs trained with --calibrate none")
        offsets = np.log([opened.train_config["pos_weight"][g] for g in labels])
    rows = {}
    for method in gcal.METHODS:
        fitted = gcal.fit(gcal.logits_of(p_val), y_val, method, offsets=offsets)
        calibrated = gcal.apply_to_probabilities(p_test, fitted)
        rows[method] = {
            **scores(y_test, calibrated, labels),
            "macro_f1_calibrated_0.3": f1_score(y_test, calibrated >= 0.3, average="macro", zero_division=0),
            "macro_f1_mapped_default": f1_score(
                y_test, calibrated >= gcal.map_threshold(0.3, fitted), average="macro", zero_division=0
            ),
        }
    isotonic = np.column_stack(
        [
            IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
            .fit(p_val[:, j], y_val[:, j])
            .predict(p_test[:, j])
            for j in range(len(labels))
        ]
    )
    rows["isotonic (not offered)"] = {
        **scores(y_test, isotonic, labels),
        "macro_f1_calibrated_0.3": f1_score(y_test, isotonic >= 0.3, average="macro", zero_division=0),
    }
    return rows


def mean_std(values):
    values = [v for v in values if v is not None and not np.isnan(v)]
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "n/a"


def main():
    p = argparse.ArgumentParser(
        description="Calibration, decisions and threshold goals of runs, scored from predict.py."
    )
    p.add_argument("runs", nargs="+", help="run folders or zips (e.g. the seeds of bench/quality.py --keep-runs)")
    p.add_argument("--compare-methods", action="store_true", help="fit every method on uncalibrated runs and compare")
    p.add_argument(
        "--min-positives", type=int, default=20, help="genres reported per genre need this many test positives"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.compare_methods:
        results = [compare_methods(run) for run in args.runs]
        keys = list(results[0]["none"])
        print("| method | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
        for method in results[0]:
            print(f"| {method} | " + " | ".join(mean_std([r[method].get(k) for r in results]) for k in keys) + " |")
    else:
        results = [evaluate(run, args.min_positives) for run in args.runs]
        keys = [k for k in results[0] if k != "genres"]
        print("| figure | mean ± std over runs |\n|---|---|")
        for key in keys:
            print(f"| {key} | {mean_std([r[key] for r in results])} |")
        print(
            "\n| genre | goal | test positives | reached on validation | tagged | precision | recall |\n|" + "---|" * 7
        )
        for genre in results[0]["genres"]:
            per = [r["genres"].get(genre) for r in results if genre in r["genres"]]
            reached = sum(bool(g["reached_on_validation"]) for g in per)
            precisions = ", ".join("-" if np.isnan(g["precision"]) else f"{g['precision']:.2f}" for g in per)
            print(
                f"| {genre} | {per[0]['goal']} | {np.mean([g['test_positives'] for g in per]):.0f} | {reached} of {len(per)} "
                f"| {np.mean([g['tagged'] for g in per]):.1f} | {precisions} (mean {mean_std([g['precision'] for g in per])}) "
                f"| {mean_std([g['recall'] for g in per])} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
