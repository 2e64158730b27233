# %% [markdown]
# # genre-tagger: fine-tune a transformer to tag movie plots with every genre that fits
#
# Run as a script (`python train.py --help` lists every setting) or open as a notebook
# (`notebook.ipynb` is this file, paired by jupytext). The steps run top to bottom:
# data → split → model → train → evaluate → save. The reusable pieces live in `genre_tagger/`,
# which `predict.py`, the tests and the benchmarks import too.

# %%
import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

from genre_tagger import UserError, distributed, plots, save
from genre_tagger import data as gdata
from genre_tagger import metrics as gmetrics
from genre_tagger import run as grun
from genre_tagger.baseline import baseline_probabilities, fit_baseline, most_frequent_probabilities
from genre_tagger.common import printable, write_json
from genre_tagger.frozen import train_frozen_head
from genre_tagger.modeling import (
    DEFAULT_BASE_MODEL,
    OFFLINE_MODEL_ALIAS,
    TextDataset,
    build_classifier,
    export_run,
    fine_tune,
    positive_weights,
    predict_probabilities,
    resolve_base_model,
    save_classifier,
)
from genre_tagger.settings import split_problem, train_settings_problem

# %% [markdown]
# ## Settings
# Every setting is a flag. In Jupyter there is no command line: `FULL_RUN = False` trains a quick
# demo (the packaged offline model, one epoch, 300 movies) into `models/notebook-run`, leaving the
# real run alone; set it to `True` to run exactly what `python train.py` runs.

# %%
FULL_RUN = False
NOTEBOOK_QUICK_ARGS = ["--model", "minilm", "--epochs", "1", "--limit", "300", "--output", "models/notebook-run"]


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune a multi-label genre classifier and save a self-describing run.")
    p.add_argument(
        "--data",
        default=str(gdata.DEFAULT_DATA_PATH),
        help="training CSV (default: %(default)s, downloaded with a checksum if missing)",
    )
    p.add_argument("--text-column", default="Description", help="column with the text (default: %(default)s)")
    p.add_argument("--label-column", default="Genre", help="column with comma-separated labels (default: %(default)s)")
    p.add_argument(
        "--test-data", default=None, help="labelled CSV to test on, instead of carving a test split out of --data"
    )
    p.add_argument(
        "--limit", type=int, default=0, help="use only the first N rows of --data, for quick trials (default: all)"
    )
    p.add_argument(
        "--model",
        default=DEFAULT_BASE_MODEL,
        help=f"base model: hub id, local folder, '{OFFLINE_MODEL_ALIAS}' for the packaged all-MiniLM-L6-v2, or 'mpnet' for all-mpnet-base-v2 from requirements-mpnet.txt (default: %(default)s, falls back to {OFFLINE_MODEL_ALIAS} when offline)",
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default="mean",
        help="how token vectors become one vector (default: %(default)s)",
    )
    p.add_argument(
        "--dropout", type=float, default=0.1, help="dropout before the classifier layer (default: %(default)s)"
    )
    p.add_argument(
        "--max-length", type=int, default=128, help="truncate texts to this many tokens (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=10, help="maximum training epochs (default: %(default)s)")
    p.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after this many evaluations without a better --select-by metric (default: %(default)s)",
    )
    p.add_argument(
        "--select-by",
        choices=["macro_f1", "macro_roc_auc", "loss"],
        default="macro_f1",
        help="validation metric that picks the best epoch and drives early stopping (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="training rows per step in each process; under torchrun an optimizer step sees batch-size x processes x --grad-accum rows (default: %(default)s)",
    )
    p.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="add up the gradients of K steps before each optimizer step: a K times larger batch in the same memory (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the encoder (default: %(default)s)")
    p.add_argument(
        "--head-lr",
        type=float,
        default=2e-3,
        help="peak learning rate of the new classifier layer; 0 = same as --lr (default: %(default)s)",
    )
    p.add_argument(
        "--layer-decay",
        type=float,
        default=1.0,
        help="encoder layer i of L learns at lr * DECAY ** (L - i); 1 = same lr everywhere (default: %(default)s)",
    )
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: %(default)s)")
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.1,
        help="fraction of steps with linear learning-rate warm-up (default: %(default)s)",
    )
    p.add_argument(
        "--pos-weight",
        choices=["none", "sqrt", "full"],
        default="full",
        help="per-genre weight of positives in the BCE loss: none, sqrt-dampened or full negatives/positives (default: %(default)s, the best measured; bench/QUALITY.md)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of rows for validation (default: %(default)s)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="fraction of rows for test, unless --test-data (default: %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=0,
        help="run K-fold stratified cross-validation instead of one run; saves no model (default: off)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=gmetrics.DEFAULT_THRESHOLD,
        help="probability at which a genre is tagged, for reported metrics (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed for split, initialisation and batch order (default: %(default)s)"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed for the split alone, so runs that differ only in --seed share their rows and can be ensembled "
        "(default: --seed)",
    )
    p.add_argument(
        "--output",
        default=str(grun.DEFAULT_RUN),
        help="run folder to write; a .zip of it is written beside (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default="models/checkpoints",
        help="where Trainer checkpoints go while training; removed after a successful run (default: %(default)s)",
    )
    p.add_argument(
        "--save-steps",
        type=int,
        default=0,
        help="evaluate and checkpoint every N optimizer steps (default: 0 = every epoch)",
    )
    p.add_argument(
        "--save-total-limit",
        type=int,
        default=2,
        help="keep at most N checkpoints, the best one included (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its latest checkpoint in --checkpoint-dir",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch in each process (default: 0 = all cores, shared out among the processes torchrun starts on this machine)",
    )
    p.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="keep the pretrained encoder fixed: embed every text once, then fit only the head (seconds, not minutes; one process)",
    )
    p.add_argument(
        "--probe-first",
        action="store_true",
        help="fit the head on the frozen encoder's vectors first (as --freeze-encoder does, --frozen-head picks how), "
        "then fine-tune everything from there (linear probe, then fine-tune)",
    )
    p.add_argument(
        "--frozen-head",
        choices=["logreg", "linear"],
        default="logreg",
        help="with --freeze-encoder: per-genre logistic regressions (C picked on validation) or the linear layer trained by AdamW at --head-lr (default: %(default)s)",
    )
    return p


def running_in_notebook():
    return "ipykernel" in sys.modules


def one_line_excepthook(kind, error, trace):
    """An unexpected error is one line that says it is a bug; GENRE_TAGGER_DEBUG=1 shows the traceback."""
    if issubclass(kind, KeyboardInterrupt) or os.environ.get("GENRE_TAGGER_DEBUG"):
        sys.__excepthook__(kind, error, trace)
        return
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    print(
        f"error: unexpected {kind.__name__}: {printable(first)} (a bug: please report it; "
        "GENRE_TAGGER_DEBUG=1 shows the traceback)",
        file=sys.stderr,
    )


def fail(message):
    """Stop with one line that says what to do (an exception in a notebook, where exiting would kill the kernel)."""
    if running_in_notebook():
        raise UserError(message)
    print(f"error: {printable(message)}", file=sys.stderr)
    sys.exit(2)


if not running_in_notebook():
    sys.excepthook = one_line_excepthook


def output_problem(args):
    """Refuse, before any work, to replace anything that is not a run of ours or to start over a resumable run."""
    output = Path(args.output)
    if problem := save.replace_problem(output):
        return f"--output: {problem}; choose another folder so nothing of yours is replaced"
    if problem := save.zip_replace_problem(grun.zip_path_of(output)):
        return f"--output: {problem}; move it or choose another --output so it is not overwritten"
    if args.freeze_encoder and args.resume:
        return "--resume continues a fine-tune from its checkpoints; a --freeze-encoder run has none: drop --resume"
    if args.freeze_encoder and args.probe_first:
        return "--probe-first fine-tunes after fitting the head; --freeze-encoder never fine-tunes: choose one"
    if args.freeze_encoder and distributed.world_size() > 1:
        return "--freeze-encoder fits its head in one process: run train.py without torchrun or accelerate launch"
    checkpoints = Path(args.checkpoint_dir) / output.name
    if checkpoints.exists() and not checkpoints.is_dir():
        return f"--checkpoint-dir: {checkpoints} exists and is not a folder"
    if not args.resume and any(checkpoints.glob("checkpoint-*")):
        return f"{checkpoints} holds checkpoints of an interrupted run: continue it with --resume, or delete that folder to start over"
    if args.resume and not any(checkpoints.glob("checkpoint-*")):
        return f"--resume: no checkpoint in {checkpoints} to continue from"
    return None


def tidy_interrupted(args):
    """Remove what an interrupted train.py left behind for this --output, saying so; keep resumable work."""
    output = Path(args.output)
    leftovers = save.stale_leftovers(output)
    if leftovers:
        save.remove_paths(leftovers)
        print(f"note: removed {len(leftovers)} half-written leftover(s) of an interrupted save beside {output}")
    checkpoints = Path(args.checkpoint_dir) / output.name
    manifest = output / grun.MANIFEST
    if (
        not args.resume
        and checkpoints.is_dir()
        and manifest.exists()
        and all(c.stat().st_mtime < manifest.stat().st_mtime for c in checkpoints.glob("checkpoint-*"))
    ):
        # The run was saved after its last checkpoint: the process stopped before its own clean-up.
        shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"note: removed checkpoints in {checkpoints} left by an interrupted clean-up ({output} is complete)")


args = build_parser().parse_args(([] if FULL_RUN else NOTEBOOK_QUICK_ARGS) if running_in_notebook() else sys.argv[1:])
if problem := train_settings_problem(args):
    fail(problem)
if args.split_seed is None:
    args.split_seed = args.seed  # recorded as used, in train_config.json
if not running_in_notebook():
    distributed.relaunch_if_accelerate_started_one()
tidy_interrupted(args)
if problem := output_problem(args):
    fail(problem)
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
# exact duplicate descriptions; bad rows stop the run with their row numbers.


# %%
try:
    if Path(args.data) == gdata.DEFAULT_DATA_PATH:
        gdata.ensure_dataset(args.data)
    movies, cleaning = gdata.load_labelled_csv(args.data, args.text_column, args.label_column)
    test_movies = None
    if args.test_data:
        test_movies, _ = gdata.load_labelled_csv(args.test_data, args.text_column, args.label_column, "--test-data")
except UserError as err:
    fail(str(err))
if args.limit:
    movies = movies.head(args.limit).reset_index(drop=True)
if len(movies) < 50:
    fail(f"{args.data} has {len(movies)} usable rows; training, validation and test need at least 50")
if problem := split_problem(len(movies), args.val_fraction, args.test_fraction, test_movies is not None):
    fail(problem)
print(f"{args.data}: {cleaning}")
movies.head()

# %% [markdown]
# A first look: how big the data is, how often each genre occurs and how long descriptions are.
# Genres are very unbalanced (Drama is in about half the movies, Musical in 5 of 1000), which is why
# macro-F1 (every genre counts the same) is the headline metric, not accuracy.

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
if running_in_notebook():
    import matplotlib.pyplot as plt

    genre_counts.plot.barh(figsize=(6, 5), title="movies per genre").invert_yaxis()
    plt.show()
    words.plot.hist(bins=30, title="description length (words)")
    plt.show()

# %% [markdown]
# ## Labels and split
# `MultiLabelBinarizer` turns genre lists into multi-hot rows. The split is iteratively stratified,
# so that even 5-movie genres land in train, validation and test.

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
# negatives/positives ratio (`--pos-weight full`), trains the 20 sigmoid outputs independently. Full
# weighting measured +0.021 macro-F1 over the square-root-dampened one on the fixed protocol.

# %%
try:
    base_path, base_model, fallback_note = resolve_base_model(args.model)
except UserError as err:
    fail(str(err))
if fallback_note:
    print(f"note: {fallback_note}")
print(f"base model: {base_model}")
from transformers import AutoTokenizer  # noqa: E402

from genre_tagger.onnx_backend import unknown_token_shares  # noqa: E402

tokenizer = AutoTokenizer.from_pretrained(base_path)
# A tokenizer that does not fit the text (a broken vocab, another language) maps words to its unknown
# token, and the model then learns from nothing but the sentence length: stop before training on that.
backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)  # slow tokenizers are not checked
unknown_share = float(unknown_token_shares(backend_tokenizer, train_texts).mean()) if backend_tokenizer else 0.0
if unknown_share > 0.5:
    fail(
        f"the tokenizer of {base_model} does not know {unknown_share:.0%} of the training words (they become its "
        "unknown token); use a base model whose vocabulary fits this text"
    )
settings = {
    "epochs": args.epochs,
    "batch_size": args.batch_size,
    "grad_accum": args.grad_accum,
    "lr": args.lr,
    "weight_decay": args.weight_decay,
    "warmup_ratio": args.warmup_ratio,
    "save_steps": args.save_steps,
    "save_total_limit": args.save_total_limit,
    "patience": args.patience,
    "seed": args.seed,
    "head_lr": args.head_lr,
    "layer_decay": args.layer_decay,
    "select_by": args.select_by,
}


def train_model(train_texts, Y_train, val_texts, Y_val, checkpoint_dir, resume=False):
    """Fine-tune a fresh classifier (or only its head on a frozen encoder, or that head first and then all of it).

    Returns the model and the training log.
    """
    transformers.set_seed(args.seed)
    model = build_classifier(base_path, labels, args.pooling, args.dropout, positive_weights(Y_train, args.pos_weight))
    if args.freeze_encoder or (args.probe_first and not resume):  # a resumed run's checkpoint has its head
        log = train_frozen_head(
            model, tokenizer, train_texts, Y_train, val_texts, Y_val, settings, args.threshold,
            args.frozen_head, args.dropout, args.max_length,
        )  # fmt: skip
        if args.freeze_encoder:
            return model, log
        print("head fitted on the frozen encoder; now fine-tuning everything from it", flush=True)
    trainer = fine_tune(
        model,
        tokenizer,
        TextDataset(train_texts, tokenizer, args.max_length, Y_train),
        TextDataset(val_texts, tokenizer, args.max_length, Y_val),
        settings,
        checkpoint_dir,
        args.threshold,
        resume=resume,
    )
    return model, trainer.state.log_history


# %% [markdown]
# ## Cross-validation (only with `--folds K`)
# Each fold is tested once; validation is carved from the other folds. 1000 movies leave 1-4 test
# positives for the rarest genres in one split, so the spread across folds says how far to trust a
# single number.

# %%
if args.folds:
    fold_results = []
    for fold, (rest, held_out) in enumerate(gdata.stratified_folds(Y, args.folds, args.split_seed)):
        inner_train, inner_val = gdata.stratified_split(Y[rest], args.val_fraction, args.split_seed)
        tr, va = rest[inner_train], rest[inner_val]
        print(f"fold {fold + 1}/{args.folds}: train {len(tr)} | validation {len(va)} | test {len(held_out)}")
        model, _ = train_model(
            [texts[i] for i in tr], Y[tr], [texts[i] for i in va], Y[va], Path(args.checkpoint_dir) / f"fold-{fold}"
        )
        if not distributed.is_main_process():
            continue  # under torchrun the main process alone tests each fold and writes
        test_fold = [texts[i] for i in held_out]
        result = {
            "model": gmetrics.multilabel_metrics(
                Y[held_out], predict_probabilities(model, tokenizer, test_fold, args.max_length), args.threshold
            )
        }
        baseline_fold = fit_baseline([texts[i] for i in tr], Y[tr], args.seed)
        result["baseline"] = gmetrics.multilabel_metrics(
            Y[held_out], baseline_probabilities(baseline_fold, test_fold), args.threshold
        )
        fold_results.append(result)
        shutil.rmtree(Path(args.checkpoint_dir) / f"fold-{fold}", ignore_errors=True)
    distributed.leave_unless_main()
    summary = {}
    for who in ("model", "baseline"):
        summary[who] = {
            key: {
                "mean": float(np.mean([r[who][key] for r in fold_results])),
                "std": float(np.std([r[who][key] for r in fold_results])),
            }
            for key in ("macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss")
        }
        print(who.ljust(9), "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary[who].items()))
    cv_path = output.parent / f"{output.name}-cv{args.folds}.json"
    cv_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        cv_path,
        {
            "config": vars(args),
            "base_model": base_model,
            "threshold": args.threshold,
            "folds": fold_results,
            "summary": summary,
        },
    )
    print(f"cross-validation results written to {cv_path}")
    if not running_in_notebook():
        sys.exit(0)

# %% [markdown]
# ## Train
# The Trainer evaluates on validation every epoch and keeps the best checkpoint by `--select-by`;
# early stopping ends the run once validation stops improving. The randomly initialised classifier
# layer learns at `--head-lr` (20x the encoder's lr by default): at the encoder's lr it was still
# under-fitted when the encoder began to overfit, which cost about 0.02 macro-F1 and 0.01 ROC-AUC on
# the 200-row notebook test split (`bench/quality.py`, bench/QUALITY.md).

# %%
checkpoint_dir = Path(args.checkpoint_dir) / output.name
effective_batch = args.batch_size * distributed.world_size() * args.grad_accum
if effective_batch != args.batch_size:
    print(
        f"effective batch {effective_batch} rows per optimizer step = {args.batch_size} per process "
        f"x {distributed.world_size()} processes x {args.grad_accum} accumulated steps"
    )
train_started = time.time()
model, log_history = train_model(train_texts, Y_train, val_texts, Y_val, checkpoint_dir, resume=args.resume)
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
# ## Evaluate
# Thresholds are tuned on validation only (one global value, and one per genre where validation has
# at least 5 positives), then everything is measured once on the test rows. ROC-AUC is computed on
# probabilities; a genre with no positive in the test rows has no ROC-AUC and is counted as skipped.
# The TF-IDF baseline and the trivial most-frequent-genres baseline are scored on the same rows.

# %%
P_val = predict_probabilities(model, tokenizer, val_texts, args.max_length)
P_test = predict_probabilities(model, tokenizer, test_texts, args.max_length)
tuned = gmetrics.tune_thresholds(Y_val, P_val, labels)
per_label_thresholds = [tuned["per_label"][g] for g in labels]

baseline = fit_baseline(train_texts, Y_train, args.seed)
B_val, B_test = baseline_probabilities(baseline, val_texts), baseline_probabilities(baseline, test_texts)
baseline_tuned = gmetrics.tune_thresholds(Y_val, B_val, labels)

evaluation = {
    "validation": gmetrics.multilabel_metrics(Y_val, P_val, args.threshold),
    "test": gmetrics.multilabel_metrics(Y_test, P_test, args.threshold),
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
report = gmetrics.per_label_report(Y_test, P_test, labels, args.threshold)
baseline_report = gmetrics.per_label_report(Y_test, B_test, labels, args.threshold)
print(gmetrics.format_report(report))
print()
rows = {
    "fine-tuned @ threshold": evaluation["test"],
    "fine-tuned @ tuned global": evaluation["test_tuned_global"],
    "fine-tuned @ tuned per genre": evaluation["test_tuned_per_genre"],
    "TF-IDF baseline @ threshold": evaluation["baseline_tfidf"]["test"],
    "most frequent genres": evaluation["baseline_most_frequent"]["test"],
}
summary_table = pd.DataFrame(rows).T[["macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss"]]
print(f"test rows: {len(Y_test)}, threshold {args.threshold}, tuned global {tuned['global']}")
print(summary_table.round(4).to_string())

# %% [markdown]
# ## Save
# The run folder is built beside its final place and renamed into it, so a crash leaves the previous
# run intact. It holds everything `predict.py` needs, and describes itself: settings, base model,
# versions, metrics, thresholds, the split, pictures, and an ONNX export for fast CPU prediction.

# %%
staged = save.staging_folder(output)
try:
    save_classifier(model, tokenizer, staged)
    import joblib  # noqa: E402

    joblib.dump(binarizer, staged / "binarizer.joblib")
    write_json(staged / "thresholds.json", {"default": args.threshold, **tuned})
    split_rows = (
        [("train", i) for i in train_idx]
        + [("validation", i) for i in val_idx]
        + [("test", i) for i in (test_idx if test_idx is not None else [])]
    )
    pd.DataFrame(
        [
            {
                "split": s,
                "source_row": int(movies["source_row"].iloc[i]),
                "labels": ",".join(movies["labels"].iloc[i]),
                "text": texts[i],
            }
            for s, i in split_rows
        ]
        + [
            {"split": "test", "source_row": int(r), "labels": ",".join(g), "text": t}
            for r, g, t in (
                zip(test_movies["source_row"], test_movies["labels"], test_texts) if test_movies is not None else []
            )
        ]
    ).to_csv(staged / "split.csv", index=False)
    pd.DataFrame(report).to_csv(staged / "per_genre.csv", index=False)
    (staged / "plots").mkdir()
    plots.per_label_f1(report, baseline_report, staged / "plots" / "per_genre_f1.png")
    plots.threshold_curve(
        gmetrics.THRESHOLD_GRID,
        gmetrics.macro_f1_by_threshold(Y_val, P_val),
        tuned["global"],
        staged / "plots" / "threshold_curve.png",
    )
    plots.precision_recall_curves(Y_test, P_test, labels, staged / "plots" / "precision_recall.png")
    plots.cooccurrence(Y, labels, staged / "plots" / "cooccurrence.png")

    metrics_payload = {
        "threshold": args.threshold,
        "tuned_thresholds": tuned,
        "test_genres_not_learned": unseen_in_test,
        "base_model": base_model,
        "best_epoch": best_epoch,
        **evaluation,
        "per_genre_test": report,
        "baseline_tfidf_per_genre_test": baseline_report,
        "log_history": log_history,
    }
    write_json(staged / "metrics.json", metrics_payload)
    write_json(
        staged / "train_config.json",
        {
            "settings": vars(args),
            "base_model": base_model,
            "base_model_path": base_path,
            "fallback": fallback_note,
            "labels": labels,
            "data": {
                "path": str(args.data),
                "test_path": args.test_data,
                "sha256": gdata.sha256_of(args.data),
                "cleaning": cleaning,
            },
            "split_sizes": {"train": len(train_idx), "validation": len(val_idx), "test": len(Y_test)},
            "pos_weight": dict(zip(labels, map(float, positive_weights(Y_train, args.pos_weight)))),
            "parallel": parallel,
            "seconds": {"train": round(train_seconds, 1), "until_save": round(time.time() - started, 1)},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        },
    )
    onnx_info = export_run(staged)
    check = onnx_info["check"]
    print(
        "ONNX export checked against PyTorch on validation rows: "
        + "; ".join(
            f"{v}: decisions agree {check[v]['decision_agreement_vs_torch']:.2%}, max |Δp| {check[v]['max_abs_probability_difference_vs_torch']:.4f}, macro-F1 {check[v]['macro_f1']:.4f}"
            for v in onnx_info["files"]
        )
        + f"; predict.py uses {onnx_info['default']}"
    )
    save.write_manifest(staged)
    save.publish_folder(staged, output)
finally:
    if staged.exists():
        shutil.rmtree(staged, ignore_errors=True)
zip_path = save.zip_folder(output, grun.zip_path_of(output))
shutil.rmtree(checkpoint_dir, ignore_errors=True)
if checkpoint_dir.parent.exists() and not any(checkpoint_dir.parent.iterdir()):
    checkpoint_dir.parent.rmdir()
print(f"saved {output}/ and {zip_path} in {time.time() - started:.0f} s total")

# %% [markdown]
# ## Pictures
# Saved in the run's `plots/` folder: per-genre F1 of the model against the TF-IDF baseline (how much
# the transformer earns per genre), validation macro-F1 against the threshold (how the tuned one was
# chosen), per-genre precision-recall curves, and which genres occur together.

# %%
if running_in_notebook():
    from IPython.display import Image, display

    for picture in ("per_genre_f1", "threshold_curve", "precision_recall", "cooccurrence"):
        display(Image(filename=str(output / "plots" / f"{picture}.png")))

# %% [markdown]
# ## Reload and tag new descriptions
# The saved zip is opened with `load_tagger`, the way to load a run in Python (ONNX backend here,
# `backend="torch"` for PyTorch), and a few unseen plots are tagged at the default threshold: what a
# user of the trained model sees.

# %%
from genre_tagger import load_tagger  # noqa: E402

examples = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two strangers fall in love during one night in Vienna.",
    "A family moves into a farmhouse haunted by a malevolent presence.",
]
tagged = load_tagger(zip_path).tag(examples, threshold=args.threshold)
for description, genres in zip(examples, tagged):
    print(f"{description}\n  -> {', '.join(f'{g} {p:.2f}' for g, p in genres) or '(none at threshold)'}")
