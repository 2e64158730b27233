"""Explanations (genre_tagger.explain): are they faithful, what do they cost, are they stable?

    python bench/explain.py --model models/genre-classifier [--rows 200]

Over the run's held-out descriptions (split.csv's test + validation rows), on its default ONNX model:
- faithfulness by deletion: for the top predicted genre, the drop in its probability when its top-3 attributed
  words are removed, against the mean drop when 3 random words are removed (--draws draws per description);
- ERASER (DeYoung et al. 2020) comprehensiveness p(text) - p(text without rationale) and sufficiency
  p(text) - p(rationale only), for the top-k words as rationale, k = 3 and k = 20% of the words, beside the
  same for k random words;
- cost: the extra time of `explain` per description beyond plain probabilities (one description at a time),
  over all and over descriptions of at most 70 words, with predict.py's onnxruntime settings (idle threads
  spin) and serve.py's (idle threads sleep: better on shared cores);
- stability: identical attributions from two calls, and from the run's folder and its zip.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genre_tagger.explain import _word_scores, explain, without  # noqa: E402
from genre_tagger.run import Run  # noqa: E402
from genre_tagger.tagger import open_tagger  # noqa: E402


def removed(text, spans):
    """`text` without every span (removed from the last, so earlier offsets stay valid)."""
    for start, end in sorted(spans, reverse=True):
        text = without(text, start, end)
    return text if text.strip() else "."


def only(text, spans):
    """Just the words of `spans`, in text order."""
    return " ".join(text[s:e] for s, e in sorted(spans)) or "."


def held_out(run, rows):
    from genre_tagger.data import read_split

    split = read_split(run.read("split.csv"))
    texts = split[split["split"].isin(["test", "validation"])]["text"].tolist()
    return texts[:rows]


def faithfulness(tagger, texts, draws, seed=0):
    rng = np.random.default_rng(seed)
    top_drops, random_drops, eraser = [], [], {key: [] for key in ("k3", "k20%")}
    for text in texts:
        spans, _, scores = _word_scores(tagger, text)
        if len(spans) < 4:
            continue
        full = tagger.probabilities([text], 32)[0]
        genre = int(np.argmax(full))
        column = scores[:, genre]
        order = list(np.argsort(-column, kind="stable"))
        variants, kinds = [], []
        top3 = [spans[i] for i in order[:3]]
        variants.append(removed(text, top3))
        kinds.append(("top3", None))
        for _ in range(draws):
            pick = [spans[i] for i in rng.choice(len(spans), 3, replace=False)]
            variants.append(removed(text, pick))
            kinds.append(("random3", None))
        for key, k in (("k3", 3), ("k20%", max(1, round(0.2 * len(spans))))):
            rationale = [spans[i] for i in order[:k]]
            chance = [spans[i] for i in rng.choice(len(spans), k, replace=False)]
            variants += [removed(text, rationale), only(text, rationale), removed(text, chance), only(text, chance)]
            kinds += [(key, "comp"), (key, "suff"), (key, "comp_random"), (key, "suff_random")]
        rows = tagger.probabilities([text, *variants], 128)[:, genre].astype(np.float64)
        drops = rows[0] - rows[1:]
        top_drops.append(drops[0])
        random_drops.append(float(np.mean(drops[1 : 1 + draws])))
        found = {}
        for (key, what), drop in zip(kinds[1 + draws :], drops[1 + draws :]):
            found.setdefault(key, {})[what] = drop
        for key, values in found.items():
            eraser[key].append(values)
    return top_drops, random_drops, eraser


def timings(tagger, texts, thresholds):
    plain, extra = [], []
    for text in texts:
        start = time.perf_counter()
        probabilities = tagger.probabilities([text], 32)
        middle = time.perf_counter()
        explain(tagger, [text], thresholds, probabilities=probabilities)
        end = time.perf_counter()
        plain.append(middle - start)
        extra.append(end - middle)
    return np.array(plain) * 1000, np.array(extra) * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder (default: %(default)s)")
    p.add_argument("--rows", type=int, default=200, help="held-out descriptions, at most (default: %(default)s)")
    p.add_argument("--draws", type=int, default=10, help="random 3-word draws per description (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all)")
    args = p.parse_args()

    with Run.open(args.model) as run:
        tagger = open_tagger(run, threads=args.threads)
        sleeping = open_tagger(run, threads=args.threads, spinning=False)
        texts = held_out(run, args.rows)
        thresholds = run.thresholds_for("0.3")
        labels = run.labels
    print(f"# {args.model}: {len(texts)} held-out descriptions (split.csv test + validation), ONNX {tagger.variant}")
    print(f"# {platform.processor() or platform.machine()}, {datetime.date.today()}")
    tagger.probabilities(texts[:8], 32)  # warm up

    top, random3, eraser = faithfulness(tagger, texts, args.draws)
    top, random3 = np.array(top), np.array(random3)
    print(f"\nFaithfulness by deletion, top predicted genre ({len(top)} descriptions of 4+ words):")
    print(f"  mean drop, top-3 attributed words removed: {top.mean():.4f}")
    print(f"  mean drop, 3 random words removed ({args.draws} draws each): {random3.mean():.4f}")
    print(f"  ratio (top-3 / random-3): {top.mean() / random3.mean():.1f}x")
    print(f"  descriptions where top-3 beats random-3: {np.mean(top > random3):.0%}")
    for key, rows in eraser.items():
        mean = {what: float(np.mean([r[what] for r in rows])) for what in rows[0]}
        print(
            f"  ERASER {key}: comprehensiveness {mean['comp']:.4f} (random {mean['comp_random']:.4f}), "
            f"sufficiency {mean['suff']:.4f} (random {mean['suff_random']:.4f}; lower is better)"
        )

    lengths = np.array([len(t.split()) for t in texts])
    short = lengths <= 70
    print(f"\nCost, one description at a time ({len(texts)} descriptions, {lengths.mean():.0f} words mean):")
    for setting, timed in (("predict.py (threads spin)", tagger), ("serve.py (threads sleep)", sleeping)):
        timed.probabilities(texts[:8], 32)
        plain, extra = timings(timed, texts, thresholds)
        print(f"  {setting}: plain probabilities {np.mean(plain):.1f} ms mean")
        for name, mask in (("all", np.ones(len(texts), bool)), ("<= 70 words", short)):
            values = extra[mask]
            print(
                f"    extra for explain, {name} ({mask.sum()}): mean {values.mean():.1f} ms, median "
                f"{statistics.median(values):.1f} ms, p90 {np.percentile(values, 90):.1f} ms, max {values.max():.1f} ms"
            )
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    subset = texts[:50]
    first = explain(tagger, subset, 0.05)
    second = explain(tagger, subset, 0.05)
    print(f"\nStability: two calls identical on {len(subset)} descriptions: {first == second}")
    zipped = Path(str(args.model).rstrip("/") + ".zip")
    if zipped.exists():
        with Run.open(zipped) as run:
            from_zip = explain(open_tagger(run, threads=args.threads), subset, 0.05)
        print(f"  folder and zip identical: {from_zip == first}")
    else:
        print(f"  no {zipped} to compare with")
    example = explain(tagger, texts[:1], thresholds, labels=labels)[0]
    print(f"\nExample: {texts[0]}")
    for genre in example["genres"]:
        print(f"  {genre['genre']} {genre['probability']:.2f}: up {[(w['word'], w['score']) for w in genre['up'][:3]]}")


if __name__ == "__main__":
    main()
