# %% [markdown]
# # genre-tagger: fine-tune a transformer to tag movie plots with every genre that fits
#
# Run as a script (`python train.py --help` lists every setting) or open as a notebook
# (`notebook.ipynb` is this file, paired by jupytext). The steps run top to bottom:
# settings → data → split → model → train → evaluate → save. The reusable pieces live in `genre_tagger/`,
# which `predict.py`, the tests and the benchmarks import too.

# %%
import sys

from genre_tagger import cli

NOTEBOOK = "ipykernel" in sys.modules
if __name__ == "__main__" and not NOTEBOOK:
    # A script: run this file again inside the one CLI shell (genre_tagger/cli.py): a problem is one line
    # `error: ...` (exit 2), Ctrl-C one line (exit 130, the previous run intact). In a notebook, errors raise.
    cli.run_script(__file__)

import time
from pathlib import Path

from genre_tagger import UserError, distributed, save
from genre_tagger.settings import build_train_parser, goals_problem, split_problem, train_settings_problem

# %% [markdown]
# ## Settings
# Every setting is a flag (`genre_tagger/settings.py`). In Jupyter there is no command line:
# `FULL_RUN = False` trains a quick demo (the packaged offline model, one epoch, 300 movies) into
# `models/notebook-run`, leaving the real run alone; set it to `True` to run exactly what `python train.py`
# runs. Every check of the settings and of where the run is written happens here, before any work.

# %%
FULL_RUN = False
NOTEBOOK_QUICK_ARGS = ["--model", "minilm", "--epochs", "1", "--limit", "300", "--output", "models/notebook-run"]

args = build_train_parser().parse_args(([] if FULL_RUN else NOTEBOOK_QUICK_ARGS) if NOTEBOOK else sys.argv[1:])
if problem := train_settings_problem(args):
    raise UserError(problem)
if args.split_seed is None:
    args.split_seed = args.seed  # recorded as used, in train_config.json
if not NOTEBOOK:
    distributed.relaunch_if_accelerate_started_one()
save.prepare_output(args)  # refuses overlapping paths and folders it did not create; tidies an interrupted run

# The heavy libraries load once the settings are known to be good: a mistyped flag is answered at once.
import numpy as np
import pandas as pd
import torch
import transformers

from genre_tagger import data as gdata
from genre_tagger import metrics as gmetrics
from genre_tagger.baseline import baseline_probabilities, fit_baseline, most_frequent_probabilities
from genre_tagger.modeling import resolve_base_model
from genre_tagger.training import train_model

if args.threads:
    torch.set_num_threads(args.threads)
transformers.utils.logging.set_verbosity_error()
output = Path(args.output)
started = time.time()
distributed.setup(args.threads)  # under torchrun / accelerate launch: threads per process, one rank prints

# %% [markdown]
# ## Data
# The CSV is downloaded once (checked against its sha256) if it is not in `data/`. Cleaning strips
# IMDb's "... See full summary »" tails, normalises whitespace, splits genres on commas and drops
# exact duplicate descriptions; bad rows stop the run with their row numbers. The counts printed are
# rows kept and rows dropped, and why.

# %%
if Path(args.data) == gdata.DEFAULT_DATA_PATH:
    gdata.ensure_dataset(args.data)
movies, cleaning = gdata.load_labelled_csv(args.data, args.text_column, args.label_column)
# Row corrections (the label audit's format) are checked here and applied to the training rows after the split.
exclude = gdata.read_corrections(args.exclude_rows, movies, "--exclude-rows") if args.exclude_rows else None
relabel = gdata.read_corrections(args.relabel, movies, "--relabel", with_genres=True) if args.relabel else None
test_movies = None
if args.test_data:
    test_movies, _ = gdata.load_labelled_csv(args.test_data, args.text_column, args.label_column, "--test-data")
if args.limit:
    movies = movies.head(args.limit).reset_index(drop=True)
if len(movies) < 50:
    raise UserError(f"{args.data} has {len(movies)} usable rows; training, validation and test need at least 50")
if problem := split_problem(len(movies), args.val_fraction, args.test_fraction, test_movies is not None):
    raise UserError(problem)
print(f"{args.data}: {cleaning}")
movies.head()

# %% [markdown]
# A first look: how big the data is, how often each genre occurs and how long descriptions are.
# Genres are very unbalanced (a few genres are in a large share of the movies, others in a handful),
# which is why macro-F1 (every genre counts the same) is the headline metric, not accuracy.

# %%
raw = gdata.read_csv(args.data)
print("shape:", raw.shape, "| duplicated rows:", int(raw.duplicated().sum()))
raw.info()
genre_counts = pd.Series([g for row in movies["labels"] for g in row]).value_counts()
words = movies["text"].str.split().str.len()
print(
    f"{len(genre_counts)} genres; {np.mean([len(r) for r in movies['labels']]):.2f} genres per movie; "
    f"description length {words.median():.0f} words median, {words.max()} max"
)
if NOTEBOOK:
    import matplotlib.pyplot as plt

    genre_counts.plot.barh(figsize=(6, 5), title="movies per genre").invert_yaxis()
    plt.show()
    words.plot.hist(bins=30, title="description length (words)")
    plt.show()

# %% [markdown]
# ## Labels and split
# `MultiLabelBinarizer` turns genre lists into multi-hot rows. The split is iteratively stratified,
# so that even the rarest genres land in train, validation and test. The table printed is the
# number of positives per genre in each split: the fewer test positives, the noisier that genre's score.

# %%
# Stratifying needs a label matrix before the split; the binarizer the model keeps is then fitted on
# the training rows alone, so a label seen only outside them is reported, not learned.
Y = gdata.encode_labels(gdata.fit_binarizer(movies["labels"]), movies["labels"])

if test_movies is not None:
    test_idx = None
    train_idx, val_idx = gdata.stratified_split(Y, args.val_fraction, args.split_seed)
    test_texts = test_movies["text"].tolist()
else:
    rest_idx, test_idx = gdata.stratified_split(Y, args.test_fraction, args.split_seed)
    inner_train, inner_val = gdata.stratified_split(
        Y[rest_idx], args.val_fraction / (1 - args.test_fraction), args.split_seed
    )
    train_idx, val_idx = rest_idx[inner_train], rest_idx[inner_val]
    test_texts = movies["text"].iloc[test_idx].tolist()

given_movies = movies  # as read: cross-validation (--folds) corrects each fold's own training rows instead
if exclude or relabel:  # the split above is the uncorrected run's: only training rows change
    movies, train_idx, cleaning["corrections"] = gdata.apply_corrections(movies, train_idx, exclude, relabel)
    print(f"corrections: {cleaning['corrections']}")
binarizer = gdata.fit_binarizer(movies["labels"].iloc[train_idx])
labels = list(binarizer.classes_)
dropped = sorted({g for row in movies["labels"] for g in row} - set(labels))
if dropped:
    print(f"note: labels absent from the training rows are not learned: {', '.join(dropped)}")
unseen_in_test = {}
if test_movies is not None:
    unseen_in_test = pd.Series([g for row in test_movies["labels"] for g in row if g not in labels]).value_counts()
    unseen_in_test = {str(g): int(n) for g, n in unseen_in_test.items()}
    if unseen_in_test:
        print(
            f"note: {args.test_data} has genres the training rows lack, which the model cannot predict and the "
            f"test metrics leave out: {', '.join(f'{g} ({n} rows)' for g, n in unseen_in_test.items())}"
        )
Y = gdata.encode_labels(binarizer, movies["labels"])
if test_movies is not None:
    Y_test = gdata.encode_labels(binarizer, test_movies["labels"])
else:
    Y_test = Y[test_idx]
texts = movies["text"].tolist()
train_texts, Y_train = [texts[i] for i in train_idx], Y[train_idx]
val_texts, Y_val = [texts[i] for i in val_idx], Y[val_idx]
if problem := goals_problem(args.threshold_goal, labels):
    raise UserError(problem)
print(f"train {len(train_idx)} | validation {len(val_idx)} | test {len(Y_test)} rows")
print("positives per genre (train / validation / test):")
print(
    pd.DataFrame({"train": Y_train.sum(0), "val": Y_val.sum(0), "test": Y_test.sum(0)}, index=labels)
    .astype(int)
    .T.to_string()
)

# %% [markdown]
# ## Model
# The base model is resolved first: `distilbert-base-uncased` by default, or the packaged
# all-MiniLM-L6-v2 when the default cannot be downloaded. The classifier mean-pools the encoder's token
# vectors and adds one linear layer; BCE on its logits, with each genre's positives weighted by its
# negatives/positives ratio (`--pos-weight full`), trains one sigmoid output per genre independently.
# The share of training words the tokenizer does not know is checked: a high share means the base
# model does not fit the text.

# %%
base_path, base_model, fallback_note = resolve_base_model(args.model)
if fallback_note:
    print(f"note: {fallback_note}")
print(f"base model: {base_model}")
from transformers import AutoTokenizer

from genre_tagger.onnx_backend import unknown_token_shares

tokenizer = AutoTokenizer.from_pretrained(base_path)
# A tokenizer that does not fit the text (a broken vocab, another language) maps words to its unknown
# token, and the model then learns from nothing but the sentence length: stop before training on that.
backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)  # slow tokenizers are not checked
unknown_share = float(unknown_token_shares(backend_tokenizer, train_texts).mean()) if backend_tokenizer else 0.0
if unknown_share > 0.5:
    raise UserError(
        f"the tokenizer of {base_model} does not know {unknown_share:.0%} of the training words (they become its "
        "unknown token); use a base model whose vocabulary fits this text"
    )

# %% [markdown]
# ## Cross-validation (only with `--folds K`)
# Each fold is tested once; validation is carved from the other folds (`genre_tagger/crossval.py`).
# Rare genres have only a few test positives in one split, so the spread (± one standard deviation
# across folds) says how far to trust a single number. No model is saved.

# %%
if args.folds:
    from genre_tagger.crossval import cross_validate

    cross_validate(args, given_movies, binarizer, base_path, base_model, tokenizer, exclude, relabel)
    if not NOTEBOOK:
        sys.exit(0)

# %% [markdown]
# ## Train
# The Trainer evaluates on validation every epoch and keeps the best checkpoint by `--select-by`;
# early stopping ends the run once validation stops improving. The randomly initialised classifier
# layer learns at `--head-lr`, well above the encoder's `--lr`: at the encoder's lr it was still
# under-fitted when the encoder began to overfit (bench/QUALITY.md). Checkpoints go to a folder marked
# as train.py's own, with a record of the settings and data, which `--resume` must match.

# %%
checkpoint_dir = Path(args.checkpoint_dir) / output.name
effective_batch = args.batch_size * distributed.world_size() * args.grad_accum
if effective_batch != args.batch_size:
    print(
        f"effective batch {effective_batch} rows per optimizer step = {args.batch_size} per process "
        f"x {distributed.world_size()} processes x {args.grad_accum} accumulated steps"
    )
if not args.freeze_encoder:
    save.start_checkpoints(
        checkpoint_dir, args, labels, base_model, distributed.world_size(), write=distributed.is_main_process()
    )
train_started = time.time()
model, log_history = train_model(
    args, base_path, labels, tokenizer, train_texts, Y_train, val_texts, Y_val, checkpoint_dir, resume=args.resume
)
train_seconds = time.time() - train_started
parallel = distributed.description(args.batch_size, args.grad_accum)
selection_key = f"eval_{args.select_by}"
evaluations = [e for e in log_history if selection_key in e]
best_epoch = (min if args.select_by == "loss" else max)(evaluations, key=lambda e: e[selection_key])["epoch"]
# Under torchrun every rank computed the same gathered validation metrics, so all must have kept the same
# best epoch; from here on the main process works alone and the others exit 0 (genre_tagger/distributed.py).
distributed.leave_unless_main((best_epoch, [e[selection_key] for e in evaluations]))
print(f"trained in {train_seconds:.0f} s; best validation epoch {best_epoch:.2f}")

# %% [markdown]
# ## Calibrate
# The pos-weighted loss pushes every probability up on purpose, so a "0.8" is not 80%. A map of each genre's
# logit is fitted on the validation rows only (`--calibrate`, genre_tagger/calibration.py) and folded into
# the classifier's last layer, so every runtime reports calibrated probabilities; the default decisions
# stay `--threshold`'s on the uncalibrated scale, kept per genre on the calibrated one. Expected
# calibration error (ECE, 15 bins; micro pools every row x genre, macro averages genres), Brier score and
# log loss are printed before -> after: lower is better for each.

# %%
from genre_tagger import calibration as gcal
from genre_tagger.modeling import positive_weights, predict_logits

raw_val, raw_test = (predict_logits(model, tokenizer, part, args.max_length) for part in (val_texts, test_texts))
offsets = np.log(positive_weights(Y_train, args.pos_weight).astype(np.float64))
calibration = gcal.fit(raw_val, Y_val, args.calibrate, offsets=offsets)
gcal.fold_into(model.classifier, calibration)
P_val, P_test = (gcal.sigmoid(gcal.apply(raw, calibration)) for raw in (raw_val, raw_test))
default_thresholds = gcal.map_threshold(args.threshold, calibration)  # the same decisions as before calibration
held_out = {"validation": (Y_val, raw_val), "test": (Y_test, raw_test)}
calibration_reports = gcal.before_and_after(held_out, calibration, labels)
print(
    f"calibration {args.calibrate} fitted on {len(Y_val)} validation rows; test rows: {gcal.format_change(calibration_reports)}"
)

# %% [markdown]
# ## Evaluate
# Thresholds are tuned on validation only, on the calibrated scale: one global value, and one per genre
# for its `--threshold-goal` (F1 where validation has at least 5 positives, else the default decision; a
# precision or recall goal, with what it reached); then everything is measured once on the test rows.
# ROC-AUC is computed on probabilities; a genre with no positive in the test rows has no ROC-AUC and is
# counted as skipped. The TF-IDF baseline and the trivial most-frequent-genres baseline are scored on the
# same rows. Macro-F1 averages F1 over genres (each counts the same), micro-F1 pools every genre decision,
# and the Hamming loss is the share of wrong genre decisions (lower is better); the fine-tuned model earns
# its cost where it beats the baselines on the same rows.

# %%
goals = gmetrics.parse_goals(args.threshold_goal)
tuned = gmetrics.tune_thresholds(Y_val, P_val, labels, goals=goals, fallback=default_thresholds)
per_label_thresholds = [tuned["per_label"][g] for g in labels]

baseline = fit_baseline(train_texts, Y_train, args.seed)
B_val, B_test = baseline_probabilities(baseline, val_texts), baseline_probabilities(baseline, test_texts)
baseline_tuned = gmetrics.tune_thresholds(Y_val, B_val, labels)

evaluation = {
    "validation": gmetrics.multilabel_metrics(Y_val, P_val, default_thresholds),
    "test": gmetrics.multilabel_metrics(Y_test, P_test, default_thresholds),
    "test_threshold_on_calibrated_scale": gmetrics.multilabel_metrics(Y_test, P_test, args.threshold),
    "test_tuned_global": gmetrics.multilabel_metrics(Y_test, P_test, tuned["global"]),
    "test_tuned_per_genre": gmetrics.multilabel_metrics(Y_test, P_test, per_label_thresholds),
    "baseline_tfidf": {
        "test": gmetrics.multilabel_metrics(Y_test, B_test, args.threshold),
        "test_tuned_global": gmetrics.multilabel_metrics(Y_test, B_test, baseline_tuned["global"]),
    },
    "baseline_most_frequent": {
        "test": gmetrics.multilabel_metrics(Y_test, most_frequent_probabilities(Y_train, len(Y_test)), args.threshold)
    },
}
report = gmetrics.per_label_report(Y_test, P_test, labels, default_thresholds)
baseline_report = gmetrics.per_label_report(Y_test, B_test, labels, args.threshold)
print(gmetrics.format_report(report))
print()
rows = {
    "fine-tuned, default decisions": evaluation["test"],
    "fine-tuned @ tuned global": evaluation["test_tuned_global"],
    "fine-tuned @ tuned per genre": evaluation["test_tuned_per_genre"],
    "TF-IDF baseline @ threshold": evaluation["baseline_tfidf"]["test"],
    "most frequent genres": evaluation["baseline_most_frequent"]["test"],
}
summary_table = pd.DataFrame(rows).T[["macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss"]]
print(f"test rows: {len(Y_test)}, default decisions (threshold {args.threshold}), tuned global {tuned['global']}")
if message := gmetrics.unreached_goals_note(tuned, len(Y_val)):
    print(f"note: {message}")
print(summary_table.round(4).to_string())

# %% [markdown]
# ## Save
# The run folder is built beside its final place and renamed into it, so a crash leaves the previous
# run intact; its zip is written next, from the published folder (`genre_tagger/save.py`). It holds
# everything `predict.py` needs, and describes itself: settings, base model, versions, metrics,
# thresholds, the split, pictures, and an ONNX export for fast CPU prediction, whose agreement with
# PyTorch on validation rows is printed (decisions that agree, largest probability difference).

# %%
zip_path = save.save_run(
    output, args, model=model, tokenizer=tokenizer, binarizer=binarizer, tuned=tuned,
    data={"movies": movies, "texts": texts, "test_movies": test_movies, "test_texts": test_texts, "cleaning": cleaning},
    split={"train_idx": train_idx, "val_idx": val_idx, "test_idx": test_idx, "Y": Y, "Y_test": Y_test},
    scores={"P_val": P_val, "P_test": P_test, "report": report, "baseline_report": baseline_report,
            "unseen_in_test": unseen_in_test},
    evaluation=evaluation,
    calibration={"fitted": calibration, "default_thresholds": default_thresholds, "reports": calibration_reports,
                 "before_test": gcal.sigmoid(raw_test)},
    training={"base_model": base_model, "base_path": base_path, "fallback_note": fallback_note,
              "best_epoch": best_epoch, "log_history": log_history, "parallel": parallel,
              "train_seconds": train_seconds, "checkpoint_dir": checkpoint_dir},
    started=started,
)  # fmt: skip

# %% [markdown]
# ## Pictures
# Saved in the run's `plots/` folder: the reliability diagram (calibrated probabilities on the diagonal
# mean what they say), per-genre F1 of the model against the TF-IDF baseline (how much
# the transformer earns per genre), validation macro-F1 against the threshold (how the tuned one was
# chosen), per-genre precision-recall curves, and which genres occur together.

# %%
if NOTEBOOK:
    from IPython.display import Image, display

    for picture in ("reliability", "per_genre_f1", "threshold_curve", "precision_recall", "cooccurrence"):
        display(Image(filename=str(output / "plots" / f"{picture}.png")))

# %% [markdown]
# ## Reload and tag new descriptions
# The saved zip is opened with `load_tagger`, the way to load a run in Python (ONNX backend here,
# `backend="torch"` for PyTorch), and a few unseen plots are tagged at the default threshold: what a
# user of the trained model sees.

# %%
from genre_tagger import load_tagger

examples = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two strangers fall in love during one night in Vienna.",
    "A family moves into a farmhouse haunted by a malevolent presence.",
]
tagged = load_tagger(zip_path).tag(examples)  # the run's default decisions
for description, genres in zip(examples, tagged):
    print(f"{description}\n  -> {', '.join(f'{g} {p:.2f}' for g, p in genres) or '(none at threshold)'}")

# %% [markdown]
# ## Which words made each genre?
# `explain` leaves out one word at a time: green words pushed the genre up, red ones down (in a notebook;
# scores in plain text otherwise).

# %%
from genre_tagger.explain import format_explanation, html

explained = load_tagger(zip_path).explain(test_texts[:3], top_k=2)
for description, explanation in zip(test_texts[:3], explained):
    if NOTEBOOK:
        from IPython.display import HTML, display

        display(HTML("".join(html(description, genre) for genre in explanation["genres"])))
    else:
        print(f"{description}\n{format_explanation(explanation)}")
