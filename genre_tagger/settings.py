"""Settings checked before any work starts: one line naming the flag and the allowed range.

Every numeric flag of every command parses through one `Bounded` type (bounded_int, bounded_float,
probability, seed, threads), and numbers in input files (the row ids of --exclude-rows and --relabel)
through the same; what is left here are the checks that relate flags to each other, as pure functions of
the parsed arguments, so they are tested and fuzzed without running any script.
"""

import math
import os
import re
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser
from genre_tagger.common import shown_value

DEFAULT_BASE_MODEL = "distilbert-base-uncased"
OFFLINE_MODEL_ALIAS = "minilm"  # the all-MiniLM-L6-v2 that requirements.txt installs
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_TOKENS = 512  # the position limit of BERT-family encoders
MAX_PREDICT_BATCH = 4096
MAX_CONCURRENCY = 65_536  # serve.py's --limit-concurrency: far past what one process serves, well within file limits
MAX_ENSEMBLE_WEIGHT = 1000  # any ratio of members' weights a user means; their sum stays finite


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_DECIMAL_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _format(end):
    return f"{end:g}" if isinstance(end, float) else str(end)


class Bounded:
    """A number in [low, high] (either end optionally open) read from text: every numeric flag's argparse type,
    and the reader of numbers in input files.

    Only ASCII digits are read: int() and float() also take '²', '١', '1_000', 'nan' and 'inf', and a
    4,300-digit int() raises. Anything else, or a value out of range, is one UserError naming where it came
    from (genre_tagger.cli.ArgumentParser passes the flag) and the allowed range.
    `zero_means` says what 0 stands for: with low > 0 it also lets 0 through (e.g. "off").
    """

    def __init__(self, kind, low, high, *, low_open=False, high_open=False, zero_means=None):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open, self.zero_means = low_open, high_open, zero_means
        # A whole number with more digits than the larger bound is out of range: no need to build it.
        self._most_digits = len(str(max(abs(int(low)), abs(int(high)))))

    def allows(self, value):
        if self.zero_means and self.low > 0 and value == 0:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self):
        low = _format(self.low) + (f" ({self.zero_means})" if self.zero_means and self.low == 0 else "")
        text = f"{'a whole number' if self.kind is int else 'a number'} between {low} and {_format(self.high)}"
        if self.low_open and self.high_open:
            text += " (exclusive)"
        elif self.low_open or self.high_open:
            text += f" ({_format(self.low if self.low_open else self.high)} excluded)"
        return f"0 ({self.zero_means}) or {text}" if self.zero_means and self.low > 0 else text

    def _number(self, text):
        if self.kind is int:
            if not _WHOLE_NUMBER.fullmatch(text) or len(text.lstrip("+-").lstrip("0")) > self._most_digits:
                return None
            return int(text)
        if not _DECIMAL_NUMBER.fullmatch(text):
            return None
        value = float(text)
        return value if math.isfinite(value) else None

    def parse(self, text, where="the value"):
        """`text` as a number in range, or a UserError `<where> must be <the range>, not <text>`."""
        value = self._number(str(text).strip())
        if value is None or not self.allows(value):
            given = shown_value(text)
            raise UserError(f"{where} must be {self.describe()}, not {given if given.strip() else repr(given)}")
        return value

    def __call__(self, text):  # argparse checks that a type is callable; ArgumentParser calls parse with the flag
        return self.parse(text)


def bounded_int(low, high, zero_means=None):
    return Bounded(int, low, high, zero_means=zero_means)


def bounded_float(low, high, low_open=False, high_open=False, zero_means=None):
    return Bounded(float, low, high, low_open=low_open, high_open=high_open, zero_means=zero_means)


def probability():
    return bounded_float(0, 1, low_open=True, high_open=True)


def seed():
    return bounded_int(0, MAX_SEED)


def threads(cores=None):
    return bounded_int(0, cores or available_cores(), zero_means="all cores")


def row_number(last_row):
    """A row number of a CSV whose last row is `last_row` (the header is row 1, so data rows start at 2)."""
    return bounded_int(2, last_row)


def train_settings_problem(args):
    """What is wrong with train.py's settings beyond each number's own range (the parser checks those), or None.

    Row-count checks come after loading the data.
    """
    goal_problem = goals_problem(args.threshold_goal)
    return _first_problem(
        [
            (
                bool(args.text_column.strip()) and bool(args.label_column.strip()),
                "--text-column and --label-column must name a column",
            ),
            (Path(args.output).name not in ("", ".", ".."), f"--output must name a run folder, not {args.output!r}"),
            (goal_problem is None, f"--threshold-goal: {goal_problem}"),
        ]
    )


def _first_problem(checks):
    return next((message for ok, message in checks if not ok), None)


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
        "--limit",
        type=bounded_int(0, 10**9, zero_means="all rows"),
        default=0,
        help="use only the first N rows of --data, for quick trials (default: all)",
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
        "--dropout",
        type=bounded_float(0, 1, high_open=True),
        default=0.1,
        help="dropout before the classifier layer (default: %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=bounded_int(1, MAX_TOKENS),
        default=128,
        help="truncate texts to this many tokens (default: %(default)s)",
    )
    p.add_argument(
        "--epochs", type=bounded_int(1, 10_000), default=10, help="maximum training epochs (default: %(default)s)"
    )
    p.add_argument(
        "--patience",
        type=bounded_int(1, 10_000),
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
        type=bounded_int(1, 65_536),
        default=16,
        help="training rows per step in each process; under torchrun an optimizer step sees batch-size x processes x --grad-accum rows (default: %(default)s)",
    )
    p.add_argument(
        "--grad-accum",
        type=bounded_int(1, 10_000),
        default=1,
        help="add up the gradients of K steps before each optimizer step: a K times larger batch in the same memory (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=bounded_float(0, 1, low_open=True),
        default=1e-4,
        help="peak learning rate of the encoder (default: %(default)s)",
    )
    p.add_argument(
        "--head-lr",
        type=bounded_float(0, 1, zero_means="same as --lr"),
        default=2e-3,
        help="peak learning rate of the new classifier layer; 0 = same as --lr (default: %(default)s)",
    )
    p.add_argument(
        "--layer-decay",
        type=bounded_float(0, 1, low_open=True),
        default=1.0,
        help="encoder layer i of L learns at lr * DECAY ** (L - i); 1 = same lr everywhere (default: %(default)s)",
    )
    p.add_argument(
        "--weight-decay", type=bounded_float(0, 1), default=0.01, help="AdamW weight decay (default: %(default)s)"
    )
    p.add_argument(
        "--warmup-ratio",
        type=bounded_float(0, 1, high_open=True),
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
        "--val-fraction",
        type=bounded_float(0, 0.5, low_open=True, high_open=True),
        default=0.1,
        help="fraction of rows for validation (default: %(default)s)",
    )
    p.add_argument(
        "--test-fraction",
        type=bounded_float(0, 0.5, low_open=True, high_open=True),
        default=0.1,
        help="fraction of rows for test, unless --test-data (default: %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=bounded_int(2, 20, zero_means="off"),
        default=0,
        help="run K-fold stratified cross-validation instead of one run; saves no model (default: off)",
    )
    p.add_argument(
        "--threshold",
        type=probability(),
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
        "--seed", type=seed(), default=42, help="seed for split, initialisation and batch order (default: %(default)s)"
    )
    p.add_argument(
        "--split-seed",
        type=seed(),
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
        type=bounded_int(0, 10**9, zero_means="every epoch"),
        default=0,
        help="evaluate and checkpoint every N optimizer steps (default: 0 = every epoch)",
    )
    p.add_argument(
        "--save-total-limit",
        type=bounded_int(1, 1000),
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
        type=threads(),
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


def predict_settings_problem(args):
    """What is wrong with predict.py's arguments beyond each number's own range, or None."""
    return _first_problem(
        [
            (
                bool(args.descriptions or args.input),
                'give a description to tag, e.g. python predict.py "A detective hunts a serial killer.", or --input FILE',
            ),
            (not (args.descriptions and args.input), "give descriptions or --input, not both"),
            (not args.output or bool(args.input), "--output goes with --input"),
            (args.input_format == "auto" or bool(args.input), "--input-format goes with --input"),
        ]
    ) or genre_count_problem(args)


def genre_count_problem(args):
    """--min-genres above --max-genres (predict.py's and the batch tool's), or None."""
    if args.max_genres is not None and args.min_genres > args.max_genres:
        return f"--min-genres ({args.min_genres}) must not exceed --max-genres ({args.max_genres})"
    return None
