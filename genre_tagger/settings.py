"""Validation of train.py's, predict.py's and serve.py's settings before any work starts: one line naming the allowed range.

Pure functions of the parsed arguments (and the machine's core count), so they are tested and fuzzed
without running either script.
"""

import math
import os
from pathlib import Path

from genre_tagger.cli import ArgumentParser
from genre_tagger.run import is_probability

DEFAULT_BASE_MODEL = "distilbert-base-uncased"
OFFLINE_MODEL_ALIAS = "minilm"  # the all-MiniLM-L6-v2 that requirements.txt installs
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_TOKENS = 512  # the position limit of BERT-family encoders
MAX_PREDICT_BATCH = 4096
MAX_CONCURRENCY = 65_536  # serve.py's --limit-concurrency: far past what one process serves, well within file limits


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _in(value, low, high, low_open=False, high_open=False):
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def _first_problem(checks):
    return next((message for ok, message in checks if not ok), None)


def train_settings_problem(args, cores=None):
    """What is wrong with train.py's numeric settings, or None. Row-count checks come after loading the data."""
    cores = cores or available_cores()
    goal_problem = goals_problem(args.threshold_goal)
    return _first_problem(
        [
            (_in(args.epochs, 1, 10_000), f"--epochs must be between 1 and 10000, not {args.epochs}"),
            (_in(args.batch_size, 1, 65_536), f"--batch-size must be between 1 and 65536, not {args.batch_size}"),
            (
                _in(args.max_length, 1, MAX_TOKENS),
                f"--max-length must be between 1 and {MAX_TOKENS} tokens, not {args.max_length}",
            ),
            (_in(args.patience, 1, 10_000), f"--patience must be between 1 and 10000, not {args.patience}"),
            (_in(args.grad_accum, 1, 10_000), f"--grad-accum must be between 1 and 10000, not {args.grad_accum}"),
            (_in(args.limit, 0, 10**9), f"--limit must be 0 (all rows) or a positive row count, not {args.limit}"),
            (_in(args.dropout, 0, 1, high_open=True), f"--dropout must be in [0, 1), not {args.dropout}"),
            (_in(args.lr, 0, 1, low_open=True), f"--lr must be in (0, 1], not {args.lr}"),
            (_in(args.head_lr, 0, 1), f"--head-lr must be in [0, 1] (0 = same as --lr), not {args.head_lr}"),
            (_in(args.layer_decay, 0, 1, low_open=True), f"--layer-decay must be in (0, 1], not {args.layer_decay}"),
            (_in(args.weight_decay, 0, 1), f"--weight-decay must be in [0, 1], not {args.weight_decay}"),
            (
                _in(args.warmup_ratio, 0, 1, high_open=True),
                f"--warmup-ratio must be in [0, 1), not {args.warmup_ratio}",
            ),
            (
                _in(args.val_fraction, 0, 0.5, True, True) and _in(args.test_fraction, 0, 0.5, True, True),
                "--val-fraction and --test-fraction must be between 0 and 0.5 (exclusive)",
            ),
            (
                is_probability(args.threshold),
                f"--threshold must be between 0 and 1 (exclusive), not {args.threshold}",
            ),
            (
                args.folds == 0 or _in(args.folds, 2, 20),
                f"--folds must be 0 (off) or between 2 and 20, not {args.folds}",
            ),
            (_in(args.seed, 0, MAX_SEED), f"--seed must be between 0 and {MAX_SEED}, not {args.seed}"),
            (
                args.split_seed is None or _in(args.split_seed, 0, MAX_SEED),
                f"--split-seed must be between 0 and {MAX_SEED}, not {args.split_seed}",
            ),
            (
                _in(args.save_steps, 0, 10**9),
                f"--save-steps must be 0 (every epoch) or a positive step count, not {args.save_steps}",
            ),
            (
                _in(args.save_total_limit, 1, 1000),
                f"--save-total-limit must be between 1 and 1000, not {args.save_total_limit}",
            ),
            (
                _in(args.threads, 0, cores),
                f"--threads must be between 0 (all) and {cores} (the cores available), not {args.threads}",
            ),
            (
                bool(args.text_column.strip()) and bool(args.label_column.strip()),
                "--text-column and --label-column must name a column",
            ),
            (Path(args.output).name not in ("", ".", ".."), f"--output must name a run folder, not {args.output!r}"),
            (goal_problem is None, f"--threshold-goal: {goal_problem}"),
        ]
    )


def goals_problem(items, labels=None):
    """What is wrong with --threshold-goal's items (syntax; with `labels`, genres the run does not tag), or None."""
    from genre_tagger.metrics import parse_goals

    try:
        goals = parse_goals(items)
    except ValueError as err:
        return str(err)
    if labels is not None and (unknown := sorted(set(goals) - {"*", *labels})):
        return f"--threshold-goal names {', '.join(unknown)}, not among the genres: {', '.join(labels)}"
    return None


def build_train_parser(description="Fine-tune a multi-label genre classifier and save a self-describing run."):
    """train.py's flags (python -m genre_tagger.crossval takes the same ones)."""

    from genre_tagger.calibration import DEFAULT_METHOD, METHODS
    from genre_tagger.data import DEFAULT_DATA_PATH
    from genre_tagger.metrics import DEFAULT_THRESHOLD
    from genre_tagger.run import DEFAULT_RUN

    p = ArgumentParser(description=description)
    p.add_argument(
        "--data",
        default=str(DEFAULT_DATA_PATH),
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
        "--exclude-rows",
        metavar="FILE",
        default=None,
        help="CSV with a 'row' column (row numbers in --data, header = row 1, as `python -m genre_tagger.audit` "
        "writes them): those rows are left out of the training rows; validation and test rows never change",
    )
    p.add_argument(
        "--relabel",
        metavar="FILE",
        default=None,
        help="CSV with 'row' and 'genres' columns (comma-separated corrected genres): those training rows get "
        "the corrected genres; validation and test rows keep theirs. Both files are recorded in train_config.json",
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
        default=DEFAULT_THRESHOLD,
        help="the default decision point on the model's uncalibrated probabilities; a calibrated run keeps the same "
        "decisions, recorded per genre on the calibrated scale in thresholds.json (default: %(default)s)",
    )
    p.add_argument(
        "--calibrate",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="how the probabilities are calibrated on the validation rows and folded into the model: "
        "prior-temperature (2 numbers on top of each genre's pos-weight offset), temperature, platt (per genre) or "
        "none (default: %(default)s, the best measured; bench/RESULTS.md)",
    )
    p.add_argument(
        "--threshold-goal",
        nargs="+",
        default=["f1"],
        metavar="GOAL",
        help="what the per-genre thresholds (predict.py --threshold tuned) aim for on the validation rows: f1, "
        "precision>=P or recall>=R for every genre, and Genre=GOAL for one (e.g. precision>=0.9 Drama=f1); "
        "recorded in thresholds.json with the precision and recall reached (default: f1)",
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
        default=str(DEFAULT_RUN),
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


def split_problem(rows, val_fraction, test_fraction, separate_test_file):
    """Why these fractions would leave a split (train, validation or test) without rows, or None."""
    held_out_test = 0 if separate_test_file else rows * test_fraction
    rest = rows - held_out_test
    val = rest * (val_fraction if separate_test_file else val_fraction / (1 - test_fraction))
    if (not separate_test_file and held_out_test < 1) or val < 1 or rest - val < 2:
        smallest = 1 / rows
        return (
            f"with {rows} rows, --val-fraction {val_fraction} and --test-fraction {test_fraction} leave a split "
            f"without rows; use fractions of at least {smallest:.3g} (or more rows)"
        )
    return None


def predict_settings_problem(args, cores=None):
    """What is wrong with predict.py's arguments, or None."""
    cores = cores or available_cores()
    return _first_problem(
        [
            (
                bool(args.descriptions or args.input),
                'give a description to tag, e.g. python predict.py "A detective hunts a serial killer.", or --input FILE',
            ),
            (not (args.descriptions and args.input), "give descriptions or --input, not both"),
            (not args.output or bool(args.input), "--output goes with --input"),
            (args.input_format == "auto" or bool(args.input), "--input-format goes with --input"),
            (
                args.max_genres is None or _in(args.max_genres, 1, 10**6),
                f"--max-genres must be at least 1, not {args.max_genres}",
            ),
            (_in(args.min_genres, 0, 10**6), f"--min-genres must be 0 or more, not {args.min_genres}"),
            (
                args.max_genres is None or args.min_genres <= args.max_genres,
                f"--min-genres ({args.min_genres}) must not exceed --max-genres ({args.max_genres})",
            ),
            (
                _in(args.batch_size, 1, MAX_PREDICT_BATCH),
                f"--batch-size must be between 1 and {MAX_PREDICT_BATCH}, not {args.batch_size}",
            ),
            (
                _in(args.threads, 0, cores),
                f"--threads must be between 0 (all) and {cores} (the cores available), not {args.threads}",
            ),
        ]
    )


def serve_settings_problem(args, cores=None):
    """What is wrong with serve.py's arguments, or None."""
    cores = cores or available_cores()
    checks = [
        (
            _in(getattr(args, name), 1, high),
            f"--{name.replace('_', '-')} must be between 1 and {high}, not {getattr(args, name)}",
        )
        for name, high in (
            ("max_batch", MAX_PREDICT_BATCH),
            ("batch_size", MAX_PREDICT_BATCH),
            ("max_descriptions", MAX_PREDICT_BATCH),
            ("max_body_kb", 1 << 20),
        )
    ]
    return _first_problem(
        [
            *checks,
            (
                _in(args.batch_wait_ms, 0, 60_000),
                f"--batch-wait-ms must be between 0 and 60000, not {args.batch_wait_ms}",
            ),
            (_in(args.port, 0, 65535), f"--port must be between 0 and 65535, not {args.port}"),
            (
                _in(args.threads, 0, cores),
                f"--threads must be between 0 (all) and {cores} (the cores available), not {args.threads}",
            ),
            (
                _in(args.graceful_timeout_s, 0, 3600),
                f"--graceful-timeout-s must be between 0 and 3600, not {args.graceful_timeout_s}",
            ),
            (
                _in(args.limit_concurrency, 1, MAX_CONCURRENCY),
                f"--limit-concurrency must be between 1 and {MAX_CONCURRENCY} connections, not {args.limit_concurrency}",
            ),
            (
                _in(args.timeout_keep_alive_s, 1, 3600),
                f"--timeout-keep-alive-s must be between 1 and 3600 seconds, not {args.timeout_keep_alive_s}",
            ),
        ]
    )
