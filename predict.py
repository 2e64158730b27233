"""Tag movie descriptions with genres using a run saved by train.py.

    python predict.py "A retired hitman seeks revenge on the gangsters who killed his dog."
    python predict.py --input movies.csv --output tagged.csv

With an ONNX export in the run (train.py writes one), this runs on onnxruntime + tokenizers and never
imports torch or transformers, so it answers in well under a second; `--backend torch` uses PyTorch.
"""

import sys

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.common import note
from genre_tagger.explain import explained, format_explanation
from genre_tagger.metrics import decode
from genre_tagger.run import DEFAULT_RUN, Run, parse_threshold
from genre_tagger.settings import MAX_PREDICT_BATCH, bounded_int, predict_settings_problem, threads
from genre_tagger.tagger import open_tagger
from genre_tagger.textio import (
    ResultWriter,
    check_input_path,
    check_output_path,
    description_limit,
    format_genres,
    iter_input_chunks,
    unknown_labels_note,
    warn_unknown,
)


def build_parser():
    p = ArgumentParser(description="Tag movie descriptions with every genre that fits.")
    p.add_argument("descriptions", nargs="*", help="one or more descriptions to tag")
    p.add_argument(
        "--model",
        default=str(DEFAULT_RUN),
        help="run folder or its .zip, as written by train.py (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        default="default",
        help="'default' (the run's decisions: 0.3 uncalibrated, per genre calibrated), a calibrated probability, "
        "'tuned' (per genre, for train.py's --threshold-goal) or 'tuned-global' (default: %(default)s)",
    )
    p.add_argument(
        "--max-genres",
        "--top-k",
        dest="max_genres",
        type=bounded_int(1, 10**6),
        help="tag at most N genres, most probable first",
    )
    p.add_argument(
        "--min-genres",
        type=bounded_int(0, 10**6),
        default=0,
        help="tag at least N genres, adding the most probable below the threshold",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per description: description, genres, probabilities of every genre",
    )
    p.add_argument(
        "--input",
        help="tag a file instead: a CSV with the text column, a .jsonl of objects with that field, a .parquet with that "
        "column, a .txt with one description per line (blank lines skipped), or - for stdin",
    )
    p.add_argument(
        "--input-format",
        choices=["auto", "csv", "jsonl", "parquet", "txt"],
        default="auto",
        help="how to read --input: auto = CSV for a .csv file, JSON lines for a .jsonl, Parquet for a .parquet, text "
        "lines otherwise; on stdin, "
        "JSON lines when the first line is an object, CSV when it has the --text-column header, said on stderr "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--output",
        help="with --input: write results to this .csv, .jsonl or .parquet (full float32 probabilities) "
        "(default: print to stdout)",
    )
    p.add_argument("--text-column", default="Description", help="text column of an --input CSV (default: %(default)s)")
    p.add_argument(
        "--label-column",
        default="Genre",
        help="if an --input CSV has this column, print metrics against it (default: %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="auto: ONNX when the run has it, else PyTorch (default: %(default)s)",
    )
    p.add_argument(
        "--onnx-variant",
        choices=["int8", "fp32"],
        default=None,
        help="which ONNX file (default: the one train.py chose, int8 unless it cost accuracy)",
    )
    p.add_argument(
        "--batch-size",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=16,
        help=f"descriptions per forward pass, 1 to {MAX_PREDICT_BATCH} (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=threads(), default=0, help="CPU threads, at most the cores available (default: 0 = all)"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="also say which words pushed each tagged genre up or down (leave-one-word-out; one extra batch per "
        "description); --json and --output carry them with character offsets",
    )
    return p


def tag_file(tagger, args, labels, thresholds):
    import numpy as np

    if args.input != "-":
        check_input_path(args.input)
    if args.output:
        check_output_path(args.output, args.input, args.model)
    progress = None
    if args.output and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit=" rows", file=sys.stderr, mininterval=1.0, leave=False)
    writer = ResultWriter(args.output, labels, args.threshold, args.json, args.explain)
    truth, predicted, unknown, known = [], [], set(), set(labels)
    limit = description_limit(tagger.max_length)
    try:
        for chunk in iter_input_chunks(args.input, args.text_column, args.label_column, args.input_format, limit):
            texts = [text for _, text, _ in chunk]
            probabilities = tagger.probabilities(texts, args.batch_size)
            warn_unknown(tagger, texts, [f"row {number}" for number, _, _ in chunk])
            writer.write(
                texts,
                probabilities,
                decode(probabilities, labels, thresholds, args.max_genres, args.min_genres),
                explained(tagger, args, texts, thresholds, probabilities, labels),
            )
            if chunk[0][2] is not None:
                truth.extend([[label in row for label in labels] for _, _, row in chunk])
                unknown.update(label for _, _, row in chunk for label in row if label not in known)
                predicted.append(probabilities)
            if progress is not None:
                progress.update(len(chunk))
        if progress is not None:
            progress.close()  # before any line of ours: the bar never splits one
            progress = None
        writer.commit()
    finally:
        if progress is not None:
            progress.close()
        writer.discard()
    if args.output:
        note(f"wrote {args.output}")
    unknown_labels_note(unknown, args.label_column)
    if truth:
        from genre_tagger.metrics import format_report, multilabel_metrics, per_label_report

        y_true, probabilities = np.array(truth, dtype=np.int64), np.concatenate(predicted)
        metrics = multilabel_metrics(y_true, probabilities, thresholds)
        print(format_report(per_label_report(y_true, probabilities, labels, thresholds)), file=sys.stderr)
        print(
            " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
            file=sys.stderr,
        )


def main(argv=None):
    args = build_parser().parse_args(argv)
    if problem := predict_settings_problem(args):
        raise UserError(problem)
    parse_threshold(args.threshold)
    from genre_tagger.data import clean_text

    descriptions = [clean_text(d) for d in args.descriptions]
    if any(not d for d in descriptions):
        raise UserError("a description is empty; give some text to tag")
    with Run.open(args.model) as run:
        if not run.verified:
            note(
                f"{args.model} has no manifest.json (saved before runs checked themselves); its files are not verified"
            )
        labels, thresholds = run.labels, run.thresholds_for(args.threshold)
        tagger = open_tagger(run, args.backend, args.onnx_variant, args.threads)
    if args.input:
        tag_file(tagger, args, labels, thresholds)
        return
    probabilities = tagger.probabilities(descriptions, args.batch_size)
    warn_unknown(tagger, descriptions, [f"description {i}" for i in range(1, len(descriptions) + 1)])
    decoded = decode(probabilities, labels, thresholds, args.max_genres, args.min_genres)
    explanations = explained(tagger, args, descriptions, thresholds, probabilities, labels)
    if args.json or len(descriptions) > 1:
        writer = ResultWriter(None, labels, args.threshold, args.json, args.explain)
        writer.write(descriptions, probabilities, decoded, explanations)
    else:
        print(format_genres(decoded[0], args.threshold, probabilities[0], labels))
        if explanations:
            print(format_explanation(explanations[0]))


if __name__ == "__main__":
    run_main(main, interrupted_note="no partial output file was kept")
