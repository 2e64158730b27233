"""Active learning on the real dataset: does reviewing the uncertain titles first beat reviewing random ones?

The review queue's `uncertain` order (genre_tagger/review.py) offers first the titles whose most uncertain
genre is closest to its default threshold. This simulates the loop: the fixed protocol's 200 test rows
(`train_test_split(rows, test_size=0.2, random_state=42)`, as bench/quality.py) are held out; of the other
800 (the pool), 200 start labelled; each round fits the head, "reviews" 100 more pool rows (their true
labels, chosen by the strategy) and fits again; 5 rounds (200 to 700 labelled rows), 3 seeds, uncertainty
against random on the same seeds' starting rows. The model is the frozen-encoder head (`train.py
--freeze-encoder`'s logreg head at one C): one logistic regression per genre, positives weighted by the
genre's negatives/positives ratio in the labelled rows as training does, on the frozen packaged
MiniLM's mean-pooled vectors, with the default decision at 0.3 on that (uncalibrated) scale; uncertainty
is the distance to that 0.3. The 1000 vectors are computed once and cached in bench/results/.

    python bench/active_learning.py                 # prints the table, writes docs/active_learning.png

Reported: macro- and micro-F1 of the test rows after each round, mean ± std over seeds, and the area under
each learning curve (trapezoids over the 200-700 labelled rows, divided by that span: the curve's mean F1).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from genre_tagger import data as gdata  # noqa: E402
from genre_tagger.metrics import DEFAULT_THRESHOLD, multilabel_metrics  # noqa: E402

HEAD_C = 1.0


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default=str(ROOT / "data" / "IMDB-Movie-Data.csv"), help="the full CSV (default: %(default)s)"
    )
    p.add_argument("--start", type=int, default=200, help="labelled pool rows at the start (default: %(default)s)")
    p.add_argument("--per-round", type=int, default=100, help="pool rows reviewed per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="review rounds (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the starting rows and of random")
    p.add_argument(
        "--work", default=str(ROOT / "bench" / "results"), help="cache and result folder (default: %(default)s)"
    )
    p.add_argument(
        "--plot", default=str(ROOT / "docs" / "active_learning.png"), help="picture to write (default: %(default)s)"
    )
    return p


def vectors(texts, cache):
    """Mean-pooled vectors of the frozen packaged MiniLM, computed once and kept in `cache` (keyed by the texts)."""
    import hashlib

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    if cache.exists():
        kept = np.load(cache)
        if str(kept["key"]) == key:
            return kept["X"]
    from transformers import AutoTokenizer

    from genre_tagger.frozen import embed
    from genre_tagger.modeling import build_classifier, resolve_base_model

    base_path, _, _ = resolve_base_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    encoder = build_classifier(base_path, ["a", "b"], "mean", 0.0)
    started = time.time()
    X = embed(encoder, tokenizer, texts, 128)
    print(f"embedded {len(texts)} descriptions in {time.time() - started:.0f} s", file=sys.stderr)
    np.savez(cache, X=X, key=key)
    return X


def fit_head(X, Y):
    """(weight, bias) of one pos-weighted logistic regression per genre (a constant for a genre without positives)."""
    from sklearn.linear_model import LogisticRegression

    from genre_tagger.modeling import positive_weights

    pos_weight = positive_weights(Y, "full")
    weight, bias = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
    for j in range(Y.shape[1]):
        if Y[:, j].min() == Y[:, j].max():
            bias[j] = 10.0 if Y[0, j] else -10.0
            continue
        fitted = LogisticRegression(C=HEAD_C, class_weight={0: 1.0, 1: float(pos_weight[j])}, max_iter=2000)
        fitted.fit(X[:, :], Y[:, j])
        weight[j], bias[j] = fitted.coef_[0], fitted.intercept_[0]
    return weight, bias


def probabilities(head, X):
    weight, bias = head
    return 1 / (1 + np.exp(-(X @ weight.T + bias)))


def curve(X, Y, pool, test, start, per_round, rounds, strategy, seed):
    """[(labelled rows, macro-F1, micro-F1)] after the start and after each round."""
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(pool, start, replace=False))
    points = []
    for round_number in range(rounds + 1):
        head = fit_head(X[labelled], Y[labelled])
        scores = multilabel_metrics(Y[test], probabilities(head, X[test]), DEFAULT_THRESHOLD)
        points.append((len(labelled), scores["macro_f1"], scores["micro_f1"]))
        if round_number == rounds:
            break
        left = np.setdiff1d(pool, labelled)
        if strategy == "uncertain":  # the review queue's order: nearest a genre's threshold first
            distance = np.abs(probabilities(head, X[left]) - DEFAULT_THRESHOLD).min(axis=1)
            chosen = left[np.argsort(distance, kind="stable")[:per_round]]
        else:
            chosen = rng.choice(left, per_round, replace=False)
        labelled += list(chosen)
    return points


def area(points, column):
    sizes = np.array([p[0] for p in points], dtype=np.float64)
    values = np.array([p[column] for p in points], dtype=np.float64)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(sizes)) / (sizes[-1] - sizes[0]))


def plot(results, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    for axis, (column, name) in zip(fig.subplots(1, 2), ((1, "macro-F1"), (2, "micro-F1"))):
        for strategy, colour in (("uncertain", "tab:blue"), ("random", "tab:orange")):
            runs = np.array([[p[column] for p in points] for points in results[strategy]])
            sizes = [p[0] for p in results[strategy][0]]
            mean, std = runs.mean(axis=0), runs.std(axis=0)
            axis.plot(sizes, mean, marker="o", color=colour, label=strategy)
            axis.fill_between(sizes, mean - std, mean + std, color=colour, alpha=0.2)
        axis.set_xlabel("labelled rows")
        axis.set_ylabel(f"test {name} (200 fixed rows)")
        axis.legend()
    fig.suptitle("Reviewing the uncertain titles first vs random (frozen MiniLM head, 3 seeds, ±1 std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    args = build_parser().parse_args()
    from sklearn.model_selection import train_test_split

    started = time.time()
    movies, _ = gdata.load_labelled_csv(args.data)
    binarizer = gdata.fit_binarizer(movies["labels"])
    Y = gdata.encode_labels(binarizer, movies["labels"]).astype(np.int64)
    rows = np.arange(len(movies))
    pool, test = train_test_split(rows, test_size=0.2, random_state=42)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    X = vectors(movies["text"].tolist(), work / "active_learning_vectors.npz")
    results = {"uncertain": [], "random": []}
    for seed in args.seeds:
        for strategy in results:
            results[strategy].append(curve(X, Y, pool, test, args.start, args.per_round, args.rounds, strategy, seed))
    print(f"{len(movies)} rows: pool {len(pool)}, test {len(test)}; seeds {args.seeds}; {time.time() - started:.0f} s")
    sizes = [p[0] for p in results["uncertain"][0]]
    print("| labelled rows | " + " | ".join(map(str, sizes)) + " | area (mean F1) |")
    print("| --- " * (len(sizes) + 2) + "|")
    summary = {}
    for column, name in ((1, "macro-F1"), (2, "micro-F1")):
        for strategy, runs in results.items():
            values = np.array([[p[column] for p in points] for points in runs])
            areas = np.array([area(points, column) for points in runs])
            summary[f"{strategy} {name}"] = {"curve": values.mean(axis=0).tolist(), "areas": areas.tolist()}
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(values.mean(axis=0), values.std(axis=0))]
            print(f"| {strategy}, {name} | " + " | ".join(cells) + f" | {areas.mean():.3f} ± {areas.std():.3f} |")
    (work / "active_learning.json").write_text(json.dumps({"sizes": sizes, "seeds": args.seeds, **summary}, indent=1))
    plot(results, args.plot)
    print(f"wrote {args.plot} and {work / 'active_learning.json'}")


if __name__ == "__main__":
    main()
