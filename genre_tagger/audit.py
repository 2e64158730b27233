"""Label audit: which rows' genres are probably wrong? (`python -m genre_tagger.audit --data CSV --output audit.csv`)

Every row gets out-of-fold probabilities: the texts are embedded once by a frozen encoder (the packaged
all-MiniLM-L6-v2 by default), then K times one logistic regression per genre is fitted on the other folds'
rows and scores the held-out fold. Each genre's regression sees, beside the text's vector, the row's
*other* given genres and how many there are: a genre that contradicts the row's other labels (a fourth
genre where IMDb lists at most three, Animation without Family) is as suspicious as one the text contradicts.

A row's label-quality score is cleanlab's multi-label default (cleanlab 2.9.0,
`multilabel_classification.get_label_quality_scores`), computed here in a few lines: each genre's
self-confidence (the probability the model gives to the label as given), aggregated over genres by an
exponential moving average of the scores sorted from highest to lowest (alpha 0.8, so the worst genre
weighs most). The lowest scores are the most suspicious rows. A genre whose given label gets a
probability below 0.5 is a suspect: missing (not given, probability >= 0.5) or extra (given, < 0.5).

`--inject-noise RATE --seed N` is a self-test: it adds or removes one genre in RATE of the rows (half
each), audits the noisy labels and reports how well the ranking recovers the changed rows.
bench/RESULTS.md ("Which labels are probably wrong?") has the measurements and why this scoring was chosen.
"""

import time
from pathlib import Path

import numpy as np

from genre_tagger import UserError
from genre_tagger import data as gdata
from genre_tagger.cli import ArgumentParser
from genre_tagger.common import spreadsheet_safe, write_json
from genre_tagger.settings import MAX_TOKENS, bounded_float, bounded_int, seed

HEAD_C = 0.3  # inverse regularisation strength of each genre's logistic regression
LABEL_FEATURE_WEIGHT = 3.0  # scale of the other-genres features beside the encoder's vector
EMA_ALPHA = 0.8  # cleanlab's default for multi-label label quality
SUSPECT_BELOW = 0.5  # a genre whose given label gets less probability than this is a suspect
MAX_FOLDS = 20


def context_features(Y, genre, weight=LABEL_FEATURE_WEIGHT):
    """The row's other given genres (multi-hot) and a one-hot of how many there are, times `weight`."""
    others = np.delete(np.asarray(Y, dtype=np.float64), genre, axis=1)
    counts = others.sum(axis=1).astype(int)
    count_onehot = counts[:, None] == np.arange(Y.shape[1])[None, :]
    return np.hstack([others, count_onehot]) * weight


def out_of_fold_probabilities(X, Y, folds, seed, c=HEAD_C, label_weight=LABEL_FEATURE_WEIGHT):
    """P[i, j]: probability of genre j for row i from a model that never saw row i (K-fold, stratified)."""
    from sklearn.linear_model import LogisticRegression

    Y = np.asarray(Y).astype(np.int64)
    P = np.zeros(Y.shape, dtype=np.float64)
    for train, held_out in gdata.stratified_folds(Y, folds, seed):
        for j in range(Y.shape[1]):
            if Y[train, j].min() == Y[train, j].max():
                P[held_out, j] = Y[train, j].mean()  # nothing to learn: what the other folds had
                continue
            Z = np.hstack([X, context_features(Y, j, label_weight)]) if label_weight else X
            fitted = LogisticRegression(C=c, max_iter=2000).fit(Z[train], Y[train, j])
            P[held_out, j] = fitted.predict_proba(Z[held_out])[:, 1]
    return P


def self_confidence(Y, P):
    """The probability the model gives to each label as given: P where the genre is given, 1 - P where not."""
    return np.where(np.asarray(Y) > 0, P, 1 - np.asarray(P))


def label_quality_scores(Y, P, alpha=EMA_ALPHA):
    """One score per row in [0, 1], lowest = most suspicious (cleanlab's self-confidence + EMA aggregation)."""
    scores = np.sort(self_confidence(Y, P), axis=1)[:, ::-1]  # highest first, the worst genre last
    quality = scores[:, 0]
    for column in scores.T[1:]:
        quality = alpha * column + (1 - alpha) * quality
    return quality


def suspects(Y, P, labels, below=SUSPECT_BELOW):
    """Per row: ([(genre, probability)] suspected missing, [(genre, probability)] suspected extra), worst first."""
    confidence = self_confidence(Y, P)
    result = []
    for i in range(len(Y)):
        cells = sorted(np.flatnonzero(confidence[i] < below), key=lambda j: confidence[i, j])
        missing = [(labels[j], float(P[i, j])) for j in cells if not Y[i, j]]
        extra = [(labels[j], float(P[i, j])) for j in cells if Y[i, j]]
        result.append((missing, extra))
    return result


def inject_noise(Y, rate, seed):
    """(noisy copy of Y, flips): in round(rate * rows) rows one genre is added (even flips) or removed (odd).

    A row with a single genre always gets one added, so that every row keeps at least one genre.
    flips: [(row index, genre index, 'added' | 'removed')].
    """
    rng = np.random.default_rng(seed)
    Y = np.array(Y, copy=True)
    chosen = rng.choice(len(Y), int(round(rate * len(Y))), replace=False)
    flips = []
    for number, i in enumerate(chosen):
        given, absent = np.flatnonzero(Y[i]), np.flatnonzero(Y[i] == 0)
        if (number % 2 == 0 or len(given) < 2) and len(absent):
            j, kind = int(rng.choice(absent)), "added"
        else:
            j, kind = int(rng.choice(given)), "removed"
        Y[i, j] = 1 - Y[i, j]
        flips.append((int(i), j, kind))
    return Y, flips


def recovery(quality, flipped, ks):
    """Precision@k and recall@k of the rows ranked most suspicious, and AUPRC, against a boolean mask of flips."""
    from sklearn.metrics import average_precision_score

    flipped = np.asarray(flipped, dtype=bool)
    order = np.argsort(quality, kind="stable")
    result = {
        "flipped_rows": int(flipped.sum()),
        "rows": len(flipped),
        "auprc": float(average_precision_score(flipped, -quality)),
    }
    for k in ks:
        hits = int(flipped[order[:k]].sum())
        result[f"precision@{k}"] = hits / k
        result[f"recall@{k}"] = hits / max(int(flipped.sum()), 1)
    return result


SHOWN_PER_ROW = 3  # suspects listed per row and kind in the table (the summary counts them all)


def _cells(pairs):
    shown = ", ".join(f"{genre} ({p:.2f})" for genre, p in pairs[:SHOWN_PER_ROW])
    return shown + (f" +{len(pairs) - SHOWN_PER_ROW} more" if len(pairs) > SHOWN_PER_ROW else "")


def audit_table(source_rows, titles, texts, Y, P, labels):
    """The audit as a DataFrame, most suspicious first; `titles` may be None."""
    import pandas as pd

    quality = label_quality_scores(Y, P)
    flagged = suspects(Y, P, labels)
    table = pd.DataFrame(
        {
            "row": np.asarray(source_rows, dtype=np.int64),
            **({"title": list(titles)} if titles is not None else {}),
            "description": list(texts),
            "genres": [", ".join(labels[j] for j in np.flatnonzero(y)) for y in Y],
            "label_quality": np.round(quality, 4),
            "suspected_missing": [_cells(missing) for missing, _ in flagged],
            "suspected_extra": [_cells(extra) for _, extra in flagged],
        }
    )
    order = np.argsort(quality, kind="stable")
    return table.iloc[order].reset_index(drop=True)


def genre_summary(Y, P, labels, top=None, below=SUSPECT_BELOW):
    """Per genre: rows given it, how often it is suspected missing and extra; most suspected first.

    With `top`, suspects are counted in the `top` most suspicious rows only (the ones worth a look).
    """
    import pandas as pd

    confidence = self_confidence(Y, P) < below
    if top is not None:
        outside = np.argsort(label_quality_scores(Y, P), kind="stable")[top:]
        confidence[outside] = False
    Y = np.asarray(Y) > 0
    summary = pd.DataFrame(
        {
            "genre": labels,
            "rows_given": Y.sum(axis=0),
            "suspected_missing": (confidence & ~Y).sum(axis=0),
            "suspected_extra": (confidence & Y).sum(axis=0),
        }
    )
    summary["suspects"] = summary["suspected_missing"] + summary["suspected_extra"]
    return summary.sort_values(["suspects", "genre"], ascending=[False, True], kind="stable").reset_index(drop=True)


def write_csv(frame, path):
    frame.map(spreadsheet_safe).to_csv(path, index=False)


def plot_audit(summary, quality, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 0.3 * len(summary) + 1.5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(summary))
    left.barh(y - 0.2, summary["suspected_missing"], height=0.4, label="suspected missing")
    left.barh(y + 0.2, summary["suspected_extra"], height=0.4, label="suspected extra")
    left.set_yticks(y, [f"{g} ({n})" for g, n in zip(summary["genre"], summary["rows_given"])])
    left.invert_yaxis()
    left.set_xlabel("rows (rows given the genre in brackets)")
    left.legend()
    right.hist(quality, bins=30)
    right.set_xlabel("label-quality score (low = suspicious)")
    right.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser():
    p = ArgumentParser(
        prog="python -m genre_tagger.audit",
        description="Rank a labelled CSV's rows by how likely their genres are wrong (out-of-fold probabilities).",
    )
    p.add_argument("--data", default=str(gdata.DEFAULT_DATA_PATH), help="labelled CSV to audit (default: %(default)s)")
    p.add_argument("--text-column", default="Description", help="column with the text (default: %(default)s)")
    p.add_argument("--label-column", default="Genre", help="column with comma-separated labels (default: %(default)s)")
    p.add_argument(
        "--title-column", default="Title", help="column shown as the title, if present (default: %(default)s)"
    )
    p.add_argument(
        "--output",
        required=True,
        help="audit CSV to write, most suspicious row first; OUTPUT-summary.csv and OUTPUT.png are written beside it",
    )
    p.add_argument(
        "--folds",
        type=bounded_int(2, MAX_FOLDS),
        default=5,
        help=f"cross-validation folds, 2 to {MAX_FOLDS} (default: %(default)s)",
    )
    p.add_argument(
        "--base-model",
        default="minilm",
        help="frozen encoder: minilm (packaged, offline), mpnet, a hub id or a local folder (default: %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=bounded_int(1, MAX_TOKENS),
        default=128,
        help="truncate texts to this many tokens (default: %(default)s)",
    )
    p.add_argument(
        "--inject-noise",
        type=bounded_float(0, 0.5),
        default=0.0,
        metavar="RATE",
        help="self-test: add or remove one genre in this share of rows (0 to 0.5) and report how many the audit finds",
    )
    p.add_argument(
        "--seed", type=seed(), default=0, help="seed of the folds and of --inject-noise (default: %(default)s)"
    )
    p.add_argument(
        "--top", type=bounded_int(0, 10**9), default=10, help="rows of the audit to print (default: %(default)s)"
    )
    p.add_argument(
        "--summary-rows",
        type=bounded_int(1, 10**9),
        default=100,
        help="the per-genre summary counts suspects in this many most suspicious rows (default: %(default)s)",
    )
    return p


def output_paths(output):
    output = Path(output)
    stem = output.with_suffix("") if output.suffix.lower() == ".csv" else output
    return output, Path(f"{stem}-summary.csv"), Path(f"{stem}.png"), Path(f"{stem}-noise.json")


def _check_outputs(args):
    paths = output_paths(args.output)
    data = Path(args.data).resolve()
    for path in paths:
        if path.resolve() == data or (path.exists() and data.exists() and path.samefile(data)):
            raise UserError(f"--output would write {path}, which is the --data file; choose another --output")
        if path.is_dir():
            raise UserError(f"--output would write {path}, which is a folder; choose another --output")
    written = paths if args.inject_noise else paths[:3]  # the noise report comes only with --inject-noise
    if existing := [str(path) for path in written if path.exists() or path.is_symlink()]:
        raise UserError(
            f"--output would replace {', '.join(existing)}; move it or choose another --output so nothing of "
            "yours is replaced"
        )
    if not paths[0].parent.resolve().is_dir():
        raise UserError(f"the folder of --output {args.output} does not exist; create it first")
    return paths


def main(argv=None):
    args = build_parser().parse_args(argv)
    output, summary_path, plot_path, noise_path = _check_outputs(args)
    started = time.time()
    if Path(args.data) == gdata.DEFAULT_DATA_PATH:
        gdata.ensure_dataset(args.data)
    movies, cleaning = gdata.load_labelled_csv(args.data, args.text_column, args.label_column)
    if len(movies) < args.folds:
        raise UserError(f"{args.data} has {len(movies)} usable rows, fewer than --folds {args.folds}; use fewer folds")
    raw = gdata.read_csv(args.data)
    titles = None
    if args.title_column in raw.columns:
        by_row = dict(zip(raw.attrs["source_rows"], raw[args.title_column]))
        titles = [by_row[row] for row in movies["source_row"]]
    binarizer = gdata.fit_binarizer(movies["labels"])
    labels = [str(label) for label in binarizer.classes_]
    Y = gdata.encode_labels(binarizer, movies["labels"]).astype(np.int64)
    flips = []
    if args.inject_noise:
        Y, flips = inject_noise(Y, args.inject_noise, args.seed)
    print(f"{args.data}: {cleaning}")

    from transformers import AutoTokenizer

    from genre_tagger.frozen import embed
    from genre_tagger.modeling import build_classifier, resolve_base_model

    base_path, base_model, _ = resolve_base_model(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    encoder = build_classifier(base_path, labels, "mean", 0.0)
    X = embed(encoder, tokenizer, movies["text"].tolist(), args.max_length)
    embedded = time.time()
    P = out_of_fold_probabilities(X, Y, args.folds, args.seed)
    print(
        f"{base_model}: embedded {len(X)} rows in {embedded - started:.0f} s, "
        f"{args.folds}-fold heads in {time.time() - embedded:.0f} s"
    )

    table = audit_table(movies["source_row"], titles, movies["text"], Y, P, labels)
    summary = genre_summary(Y, P, labels, top=args.summary_rows)
    quality = label_quality_scores(Y, P)
    write_csv(table, output)
    write_csv(summary, summary_path)
    plot_audit(summary, quality, plot_path)
    suspect_rows = int(((table["suspected_missing"] != "") | (table["suspected_extra"] != "")).sum())
    print(
        f"{suspect_rows} of {len(table)} rows have a suspected missing or extra genre (probability of the label as given < {SUSPECT_BELOW})"
    )
    print(f"suspects per genre in the {min(args.summary_rows, len(Y))} most suspicious rows:")
    print(summary.head(10).to_string(index=False))
    shown = table.head(args.top)[["row", *(["title"] if titles is not None else []), "genres", "label_quality",
                                  "suspected_missing", "suspected_extra"]]  # fmt: skip
    print(shown.to_string(index=False))
    if flips:
        flipped = np.zeros(len(Y), dtype=bool)
        flipped[[i for i, _, _ in flips]] = True
        result = recovery(quality, flipped, sorted({len(flips), min(50, len(Y))}))
        for kind in ("added", "removed"):
            rows = np.zeros(len(Y), dtype=bool)
            rows[[i for i, _, k in flips if k == kind]] = True
            order = np.argsort(quality, kind="stable")[: len(flips)]
            result[f"recall@{len(flips)}_{kind}"] = float(rows[order].sum() / max(rows.sum(), 1))
        result.update({"rate": args.inject_noise, "seed": args.seed, "folds": args.folds})
        write_json(noise_path, result)
        print(
            "injected noise: "
            + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        )
    print(f"audit written to {output}, {summary_path} and {plot_path} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from genre_tagger import cli

    cli.run_main(main)
