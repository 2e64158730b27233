"""Evaluation pictures saved with every run.

Figures are built with matplotlib's object API, not pyplot: no screen is needed, and a notebook's own
pyplot backend is left alone.
"""

import numpy as np
from matplotlib.figure import Figure


def _figure(figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def per_label_f1(model_rows, baseline_rows, path):
    labels = [row["label"] for row in model_rows]
    y = np.arange(len(labels))
    fig, ax = _figure((7, 0.32 * len(labels) + 1.2))
    ax.barh(y - 0.2, [r["f1"] for r in model_rows], height=0.4, label="fine-tuned model")
    ax.barh(y + 0.2, [r["f1"] for r in baseline_rows], height=0.4, label="TF-IDF baseline")
    ax.set_yticks(y, [f"{r['label']} ({r['support']})" for r in model_rows])
    ax.invert_yaxis()
    ax.set_xlabel("F1 on test rows (support in brackets)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    _save(fig, path)


def threshold_curve(grid, macro_f1, chosen, path):
    fig, ax = _figure((6, 3.5))
    ax.plot(grid, macro_f1)
    ax.axvline(0.3, color="grey", linestyle=":", label="0.3 (the default decisions are per genre)")
    ax.axvline(chosen, color="red", linestyle="--", label=f"tuned {chosen:.3f}")
    ax.set_xlabel("threshold")
    ax.set_ylabel("validation macro-F1")
    ax.legend()
    _save(fig, path)


def precision_recall_curves(y_true, probabilities, labels, path):
    from sklearn.metrics import precision_recall_curve

    columns = 5
    rows = int(np.ceil(len(labels) / columns))
    fig = Figure(figsize=(3 * columns, 2.6 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= len(labels):
            ax.axis("off")
            continue
        if y_true[:, j].sum() > 0:
            precision, recall, _ = precision_recall_curve(y_true[:, j], probabilities[:, j])
            ax.plot(recall, precision)
        ax.set_title(f"{labels[j]} ({int(y_true[:, j].sum())})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    _save(fig, path)


def cooccurrence(label_matrix, labels, path):
    counts = label_matrix.T @ label_matrix
    fig, ax = _figure((8, 7))
    image = ax.imshow(counts, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=ax, label="movies with both genres")
    _save(fig, path)


def reliability(y_true, before, after, path, bins=15):
    """Reliability diagram of every row x genre cell: positive rate against mean probability per bin."""
    from genre_tagger.calibration import reliability_bins

    fig, ax = _figure((5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, probabilities, marker in (("uncalibrated", before, "o"), ("calibrated", after, "s")):
        _, means, rates = zip(*reliability_bins(y_true, probabilities, bins))
        ax.plot(means, rates, marker=marker, label=name)
    ax.set_xlabel("mean predicted probability in the bin")
    ax.set_ylabel("share of the bin that has the genre")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"test rows x genres, {bins} equal-width bins")
    ax.legend(loc="upper left")
    _save(fig, path)
