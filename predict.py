"""Tag movie descriptions with genres using a run saved by train.py.

    python predict.py "A retired hitman seeks revenge on the gangsters who killed his dog."
    python predict.py --input movies.csv --output tagged.csv

With an ONNX export in the run (train.py writes one), this runs on onnxruntime + tokenizers and never
imports torch or transformers, so it answers in well under a second; `--backend torch` uses PyTorch.
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.metrics import decode
from genre_tagger.runs import DEFAULT_RUN, OpenRun, labels_of, thresholds_of
from genre_tagger.tagger import open_tagger

CHUNK_ROWS = 2048  # rows read, tagged and written at a time: memory stays flat for any file size


def build_parser():
    p = argparse.ArgumentParser(description="Tag movie descriptions with every genre that fits.")
    p.add_argument("descriptions", nargs="*", help="one or more descriptions to tag")
    p.add_argument(
        "--model",
        default=str(DEFAULT_RUN),
        help="run folder or its .zip, as written by train.py (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        default="0.3",
        help="probability at which a genre is tagged: a number, 'tuned' (per-genre thresholds saved by train.py) or 'tuned-global' (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="show at most K genres per description (default: all above the threshold)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per description: description, genres, probabilities of every genre",
    )
    p.add_argument(
        "--input",
        help="tag a file instead: a CSV with the text column, a .txt with one description per line (blank lines skipped), or - for stdin",
    )
    p.add_argument("--output", help="with --input: write results to this .csv or .jsonl (default: print to stdout)")
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
    p.add_argument("--batch-size", type=int, default=32, help="descriptions per forward pass (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all cores)")
    return p


def format_genres(genres, threshold_text, probabilities_row, labels):
    if genres:
        return ", ".join(f"{g} {p:.2f}" for g, p in genres)
    best = max(range(len(labels)), key=lambda j: probabilities_row[j])
    return f"(no genre at or above {threshold_text}; most likely {labels[best]} {probabilities_row[best]:.2f})"


def iter_input_chunks(source, text_column, label_column):
    """Yield lists of (row number, text, labels or None) from a CSV, a text file or stdin."""
    from genre_tagger.data import clean_text, split_labels

    is_csv = source != "-" and source.lower().endswith(".csv")
    if source != "-" and not Path(source).exists():
        raise UserError(f"--input {source} does not exist")
    handle = sys.stdin if source == "-" else open(source, newline="" if is_csv else None, encoding="utf-8-sig")
    try:
        if is_csv:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "none"
                raise UserError(
                    f"{source} has no column {text_column!r} (columns: {found}); choose it with --text-column"
                )
            has_labels = label_column in reader.fieldnames
            rows = (
                (n, r[text_column], split_labels(r[label_column]) if has_labels else None)
                for n, r in enumerate(reader, start=2)
            )
        else:
            rows = ((n, line, None) for n, line in enumerate(handle, start=1) if line.strip())
        chunk = []
        for number, text, labels in rows:
            text = clean_text(text)
            if not text:
                raise UserError(f"{source}: row {number} has an empty description; fill or delete it")
            chunk.append((number, text, labels))
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    except UnicodeDecodeError:
        raise UserError(f"{source} is not UTF-8 text; save it as UTF-8 and try again") from None
    finally:
        if handle is not sys.stdin:
            handle.close()


class ResultWriter:
    """Writes results as they come (CSV or JSONL by extension, or readable lines on stdout)."""

    def __init__(self, path, labels, threshold_text, as_json):
        self.labels, self.threshold_text, self.as_json = labels, threshold_text, as_json
        self.path = path
        try:
            self.handle = open(path, "w", newline="", encoding="utf-8") if path else sys.stdout
        except OSError as err:
            raise UserError(f"cannot write --output {path} ({err.strerror}); choose a writable path") from None
        self.csv = None
        if path and path.lower().endswith(".csv"):
            self.csv = csv.writer(self.handle)
            self.csv.writerow(["description", "genres", *self.labels])

    def write(self, texts, probabilities, decoded):
        for text, row, genres in zip(texts, probabilities, decoded):
            if self.csv:
                self.csv.writerow([text, ",".join(g for g, _ in genres), *(f"{p:.4f}" for p in row)])
            elif self.as_json or self.path:
                record = {
                    "description": text,
                    "genres": [{"genre": g, "probability": round(p, 4)} for g, p in genres],
                    "probabilities": {label: round(float(p), 4) for label, p in zip(self.labels, row)},
                }
                self.handle.write(json.dumps(record) + "\n")
            else:
                self.handle.write(f"{format_genres(genres, self.threshold_text, row, self.labels)}\t{text}\n")
        self.handle.flush()

    def close(self):
        if self.handle is not sys.stdout:
            self.handle.close()


def tag_file(tagger, args, labels, thresholds):
    import numpy as np

    if args.output and args.input != "-" and Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError("--output is the --input file; choose another name so the input is kept")
    if args.output and Path(args.output).exists():
        raise UserError(f"{args.output} already exists; choose another --output or delete it first")
    if args.output and not args.output.lower().endswith((".csv", ".jsonl")):
        raise UserError("--output must end in .csv or .jsonl")
    progress = None
    if args.output:
        from tqdm import tqdm

        progress = tqdm(unit=" rows", file=sys.stderr, mininterval=1.0)
    writer = ResultWriter(args.output, labels, args.threshold, args.json)
    truth, predicted = [], []
    try:
        for chunk in iter_input_chunks(args.input, args.text_column, args.label_column):
            texts = [text for _, text, _ in chunk]
            probabilities = tagger.probabilities(texts, args.batch_size)
            writer.write(texts, probabilities, decode(probabilities, labels, thresholds, args.top_k))
            if chunk[0][2] is not None:
                truth.extend([[label in row for label in labels] for _, _, row in chunk])
                predicted.append(probabilities)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        writer.close()
        if progress is not None:
            progress.close()
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
    if not args.descriptions and not args.input:
        raise UserError(
            'give a description to tag, e.g. python predict.py "A detective hunts a serial killer.", or --input FILE'
        )
    if args.descriptions and args.input:
        raise UserError("give descriptions or --input, not both")
    if args.output and not args.input:
        raise UserError("--output goes with --input")
    if args.top_k is not None and args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    from genre_tagger.data import clean_text

    descriptions = [clean_text(d) for d in args.descriptions]
    if any(not d for d in descriptions):
        raise UserError("a description is empty; give some text to tag")
    with OpenRun(args.model) as folder:
        labels = labels_of(folder)
        thresholds = thresholds_of(folder, args.threshold)
        tagger = open_tagger(folder, args.backend, args.onnx_variant, args.threads)
        if args.input:
            tag_file(tagger, args, labels, thresholds)
            return
        probabilities = tagger.probabilities(descriptions, args.batch_size)
    writer = ResultWriter(None, labels, args.threshold, args.json)
    decoded = decode(probabilities, labels, thresholds, args.top_k)
    if args.json or len(descriptions) > 1:
        writer.write(descriptions, probabilities, decoded)
    else:
        print(format_genres(decoded[0], args.threshold, probabilities[0], labels))


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
