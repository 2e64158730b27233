"""Tag movie descriptions with genres using a run saved by train.py.

    python predict.py "A retired hitman seeks revenge on the gangsters who killed his dog."
    python predict.py --input movies.csv --output tagged.csv

With an ONNX export in the run (train.py writes one), this runs on onnxruntime + tokenizers and never
imports torch or transformers, so it answers in well under a second; `--backend torch` uses PyTorch.
"""

import argparse
import contextlib
import csv
import json
import os
import sys
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.metrics import decode
from genre_tagger.runs import DEFAULT_RUN, OpenRun, labels_of, note, printable, thresholds_of
from genre_tagger.settings import MAX_PREDICT_BATCH, predict_settings_problem
from genre_tagger.tagger import open_tagger

CHUNK_ROWS = 2048  # rows read, tagged and written at a time: memory stays flat for any file size
SPREADSHEET_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list for CSV injection


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
    p.add_argument(
        "--input-format",
        choices=["auto", "csv", "txt"],
        default="auto",
        help="how to read --input: auto = CSV for a .csv file, text lines otherwise; on stdin, CSV when the first line has the --text-column header, said on stderr (default: %(default)s)",
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
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help=f"descriptions per forward pass, 1 to {MAX_PREDICT_BATCH} (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads, at most the cores available (default: 0 = all)")
    return p


def warn_unknown(tagger, texts, numbers):
    """Warn (stderr) about descriptions the model can hardly read: mostly unknown tokens."""
    from genre_tagger.onnx_backend import UNKNOWN_TOKEN_WARNING_SHARE

    shares = tagger.unknown_token_shares(texts)
    flagged = [(n, share) for n, share in zip(numbers, shares) if share > UNKNOWN_TOKEN_WARNING_SHARE]
    if flagged:
        shown = ", ".join(f"{n} ({share:.0%})" for n, share in flagged[:10])
        more = f" and {len(flagged) - 10} more" if len(flagged) > 10 else ""
        print(
            f"warning: mostly unknown tokens (emoji or a script the model never saw) in {shown}{more}; "
            "their genres are not meaningful",
            file=sys.stderr,
            flush=True,
        )


def format_genres(genres, threshold_text, probabilities_row, labels):
    if genres:
        return ", ".join(f"{g} {p:.2f}" for g, p in genres)
    best = max(range(len(labels)), key=lambda j: probabilities_row[j])
    return f"(no genre at or above {threshold_text}; most likely {labels[best]} {probabilities_row[best]:.2f})"


def input_format(source, handle, chosen, text_column):
    """'csv' or 'txt' for --input: as chosen, by extension, or (stdin) sniffed from the first line and said."""
    if chosen != "auto":
        return chosen
    if source != "-":
        return "csv" if source.lower().endswith(".csv") else "txt"
    first = handle.readline()
    handle.seek(0)
    try:
        header = [name.strip() for name in next(csv.reader([first]), [])]
    except csv.Error:
        header = []
    if text_column in header:
        note(f"reading stdin as CSV (its first line has a {text_column!r} column); --input-format txt tags every line")
        return "csv"
    note("reading stdin as one description per line; --input-format csv reads a CSV")
    return "txt"


def iter_input_chunks(source, text_column, label_column, chosen_format="auto"):
    """Yield lists of (row number, text, labels or None) from a CSV, a text file or stdin, read strictly."""
    import io

    from genre_tagger.data import clean_text, csv_rows, open_text_file, split_labels

    if source == "-":
        # Read whole: stdin may be sniffed, and a pipe cannot be rewound.
        handle = io.StringIO(sys.stdin.buffer.read().decode("utf-8-sig", errors="strict"))
    else:
        handle = open_text_file(source)
    try:
        fmt = input_format(source, handle, chosen_format, text_column)
        if fmt == "csv":
            numbered = csv_rows(handle, "stdin" if source == "-" else source)
            _, header = next(numbered)
            if text_column not in header:
                found = ", ".join(printable(h) for h in header) or "none"
                raise UserError(
                    f"{source} has no column {printable(text_column)!r} (columns: {found}); choose it with --text-column"
                )
            text_at = header.index(text_column)
            label_at = header.index(label_column) if label_column in header else None

            def rows():
                for number, fields in numbered:
                    labels = None
                    if label_at is not None:
                        labels = split_labels(fields[label_at])
                        if not labels:
                            raise UserError(
                                f"{source}: row {number} has no {label_column!r} value; fill it, "
                                "or pass --label-column with another name to tag without metrics"
                            )
                    yield number, fields[text_at], labels

            records = rows()
        else:

            def lines():
                for number, line in enumerate(handle, start=1):
                    if "\x00" in line:
                        raise UserError(f"{source}: line {number} holds NUL bytes; this is a binary file, not text")
                    if line.strip():
                        yield number, line, None

            records = lines()
        chunk = []
        for number, text, labels in records:
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
        handle.close()


def spreadsheet_safe(cell):
    """A cell a spreadsheet will show as text, never run as a formula (OWASP CSV injection advice)."""
    return "'" + cell if cell.startswith(SPREADSHEET_FORMULA_STARTS) else cell


class ResultWriter:
    """Writes results as they come (CSV or JSONL by extension, or readable lines on stdout).

    A file is written under a temporary name beside it and renamed into place only when complete
    (`commit`), so a failed or interrupted run leaves no partial file that looks finished.
    """

    def __init__(self, path, labels, threshold_text, as_json):
        self.labels, self.threshold_text, self.as_json = labels, threshold_text, as_json
        self.path = path
        self.tmp_name = None
        if path:
            import tempfile

            folder = os.path.dirname(os.path.abspath(path))
            try:
                fd, self.tmp_name = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
                self.handle = os.fdopen(fd, "w", newline="", encoding="utf-8")
            except OSError as err:
                raise UserError(f"cannot write --output {path} ({err.strerror}); choose a writable path") from None
        else:
            self.handle = sys.stdout
        self.csv = None
        if path and path.lower().endswith(".csv"):
            self.csv = csv.writer(self.handle)
            self._guard(self.csv.writerow, ["description", "genres", *self.labels])

    def _guard(self, action, *args):
        try:
            action(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            where = self.path or "standard output"
            raise UserError(f"cannot write {where} ({err.strerror or err}); nothing partial was kept") from None

    def write(self, texts, probabilities, decoded):
        for text, row, genres in zip(texts, probabilities, decoded):
            if self.csv:
                line = [spreadsheet_safe(text), ",".join(g for g, _ in genres), *(f"{p:.4f}" for p in row)]
                self._guard(self.csv.writerow, line)
            elif self.as_json or self.path:
                record = {
                    "description": text,
                    "genres": [{"genre": g, "probability": round(p, 4)} for g, p in genres],
                    "probabilities": {label: round(float(p), 4) for label, p in zip(self.labels, row)},
                }
                self._guard(self.handle.write, json.dumps(record) + "\n")
            else:
                shown = format_genres(genres, self.threshold_text, row, self.labels)
                self._guard(self.handle.write, f"{shown}\t{printable(text)}\n")
        self._guard(self.handle.flush)

    def commit(self):
        """Close and, for a file, move the finished result into place."""
        if self.handle is sys.stdout:
            return
        self._guard(self.handle.close)
        if os.path.exists(self.path):
            kept, self.tmp_name = self.tmp_name, None
            raise UserError(f"{self.path} appeared while tagging; the result stays in {kept}")
        self._guard(os.chmod, self.tmp_name, 0o666 & ~_umask())
        self._guard(os.replace, self.tmp_name, self.path)
        self.tmp_name = None

    def discard(self):
        """Drop the unfinished file; a second write error while closing it changes nothing."""
        if self.handle is not sys.stdout:
            with contextlib.suppress(OSError):
                self.handle.close()
        if self.tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp_name)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tag_file(tagger, args, labels, thresholds):
    import numpy as np

    if args.input != "-" and Path(args.input).is_dir():
        raise UserError(f"--input {args.input} is a folder; give a file")
    if args.output and args.input != "-" and Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError("--output is the --input file; choose another name so the input is kept")
    if args.output and (Path(args.output).exists() or Path(args.output).is_symlink()):
        raise UserError(f"{args.output} already exists; choose another --output or delete it first")
    if args.output and not args.output.lower().endswith((".csv", ".jsonl")):
        raise UserError("--output must end in .csv or .jsonl")
    progress = None
    if args.output and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit=" rows", file=sys.stderr, mininterval=1.0, leave=False)
    writer = ResultWriter(args.output, labels, args.threshold, args.json)
    truth, predicted = [], []
    try:
        for chunk in iter_input_chunks(args.input, args.text_column, args.label_column, args.input_format):
            texts = [text for _, text, _ in chunk]
            probabilities = tagger.probabilities(texts, args.batch_size)
            warn_unknown(tagger, texts, [f"row {number}" for number, _, _ in chunk])
            writer.write(texts, probabilities, decode(probabilities, labels, thresholds, args.top_k))
            if chunk[0][2] is not None:
                truth.extend([[label in row for label in labels] for _, _, row in chunk])
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
    from genre_tagger.data import clean_text

    descriptions = [clean_text(d) for d in args.descriptions]
    if any(not d for d in descriptions):
        raise UserError("a description is empty; give some text to tag")
    opened = OpenRun(args.model)
    with opened as folder:
        if not opened.verified:
            note(
                f"{args.model} has no manifest.json (saved before runs checked themselves); its files are not verified"
            )
        labels = labels_of(folder)
        thresholds = thresholds_of(folder, args.threshold)
        tagger = open_tagger(folder, args.backend, args.onnx_variant, args.threads, origin=opened.origin)
        if args.input:
            tag_file(tagger, args, labels, thresholds)
            return
        probabilities = tagger.probabilities(descriptions, args.batch_size)
        warn_unknown(tagger, descriptions, [f"description {i}" for i in range(1, len(descriptions) + 1)])
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
        print(f"error: {printable(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; no partial output file was kept", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
    except Exception as err:
        if os.environ.get("GENRE_TAGGER_DEBUG"):
            raise
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        print(
            f"error: unexpected {type(err).__name__}: {printable(first)} (a bug: please report it; "
            "GENRE_TAGGER_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
