"""Reading descriptions to tag and writing what predict.py found: CSV, text lines or stdin in; CSV, JSONL or
readable lines out. Memory stays flat for any input size; a file is written under a temporary name and
renamed into place only when complete.
"""

import contextlib
import csv
import json
import os
import sys

from genre_tagger import UserError
from genre_tagger.common import note, printable, umask_mode

CHUNK_ROWS = 2048  # rows read, tagged and written at a time: memory stays flat for any file size
SPREADSHEET_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list for CSV injection


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
        self._guard(os.chmod, self.tmp_name, umask_mode(0o666))
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
