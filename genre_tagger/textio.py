"""Reading descriptions to tag and writing what predict.py found: CSV, text lines or stdin in; CSV, JSONL or
readable lines out. Memory stays flat for any input size; a file is written under a temporary name and
renamed into place only when complete.
"""

import codecs
import contextlib
import csv
import itertools
import json
import os
import stat
import sys
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.common import note, printable, spreadsheet_safe, umask_mode

CHUNK_ROWS = 2048  # rows read, tagged and written at a time: memory stays flat for any file size
CHARS_PER_TOKEN = 64  # a description is cut at 64 characters per token the model reads: far past what it sees
DEFAULT_DESCRIPTION_CHARS = 100_000
LINE_CAP = 1 << 22  # characters of one line read at a time (a CSV row, a JSON line); a text line is cut instead


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


def threshold_words(choice):
    """How a threshold choice reads in a sentence: 'at or above 0.5', 'at or above the default thresholds'."""
    named = {
        "default": "the run's default thresholds",
        "tuned": "the tuned thresholds",
        "tuned-global": "the tuned global threshold",
    }
    return named.get(choice, str(choice))


def format_genres(genres, threshold_text, probabilities_row, labels):
    if genres:
        return ", ".join(f"{g} {p:.2f}" for g, p in genres)
    best = max(range(len(labels)), key=lambda j: probabilities_row[j])
    return (
        f"(no genre at or above {threshold_words(threshold_text)}; "
        f"most likely {labels[best]} {probabilities_row[best]:.2f})"
    )


def description_limit(max_length):
    """Characters kept of one description: far more than the `max_length` tokens the model reads."""
    return max(CHARS_PER_TOKEN * int(max_length or 512), 1000)


def check_input_path(source):
    """Refuse in one line an --input that cannot be read as a stream of text: missing, a folder, a named pipe."""
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError:
        raise UserError(f"--input {source} does not exist") from None
    except OSError as err:
        raise UserError(f"cannot read --input {source} ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"--input {source} is a folder; give a file")
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise UserError(f"--input {source} is a named pipe or socket; pipe it in with --input - instead")


def check_output_path(output, source, model):
    """Refuse in one line an --output that would replace something: a file, the input, the run it tags with."""
    if not output.lower().endswith((".csv", ".jsonl")):
        raise UserError("--output must end in .csv or .jsonl")
    target = Path(output).resolve()
    if source != "-" and target == Path(source).resolve():
        raise UserError("--output is the --input file; choose another name so the input is kept")
    if model:
        run = Path(model).resolve()
        if target == run or target.is_relative_to(run):
            raise UserError(f"--output {output} is inside the run {model}; write results somewhere else")
    if Path(output).is_dir():
        raise UserError(f"--output {output} is a folder; give a file name ending in .csv or .jsonl")
    if Path(output).exists() or Path(output).is_symlink():
        raise UserError(f"{output} already exists; choose another --output or delete it first")
    if not target.parent.is_dir():
        raise UserError(f"--output {output}: folder {target.parent} does not exist")


def _open_stream(source):
    """The bytes of --input (stdin for '-'), read in blocks."""
    if source == "-":
        return sys.stdin.buffer
    check_input_path(source)
    try:
        return open(source, "rb")  # noqa: SIM115 - closed by iter_input_chunks
    except OSError as err:
        raise UserError(f"cannot read --input {source} ({err.strerror})") from None


def bounded_lines(raw, name, cap, block=1 << 16):
    """Yield (line number, line, cut) from a binary stream of UTF-8 (a BOM dropped), each line at most `cap` characters.

    The stream is read and decoded in blocks: a longer line is dropped past `cap` (`cut` is then True), so memory
    stays bounded for a line without end (a 50 MB line, a device, a pipe). A line keeps its '\\n'. NUL bytes and
    text that is not UTF-8 are one clean error naming the line (and byte).
    """
    read = getattr(raw, "read1", raw.read)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    number, offset, newlines, started = 1, 0, 0, False
    parts, size, cut = [], 0, False
    while True:
        data = read(block)
        pending = decoder.getstate()[0]
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            line = newlines + 1 + (pending + data)[: err.start].count(b"\n")
            raise UserError(
                f"{name}: line {line} (byte {offset - len(pending) + err.start + 1}) "
                "is not UTF-8 text; save it as UTF-8 and try again"
            ) from None
        offset, newlines = offset + len(data), newlines + data.count(b"\n")
        if not started and text:
            text, started = text.removeprefix("\ufeff"), True
        if "\x00" in text:
            line = number + text[: text.index("\x00")].count("\n")
            raise UserError(f"{name}: line {line} holds NUL bytes; this is a binary file, not text")
        pieces = text.split("\n")
        for i, piece in enumerate(pieces):
            room = cap - size
            if len(piece) > room:
                piece, cut = piece[:room], True
            if piece:
                parts.append(piece)
                size += len(piece)
            if i < len(pieces) - 1:
                yield number, "".join(parts) + "\n", cut
                number, parts, size, cut = number + 1, [], 0, False
        if not data:
            if parts or cut:
                yield number, "".join(parts), cut
            return


def input_format(source, first_line, chosen, text_column):
    """'csv', 'jsonl' or 'txt' for --input: as chosen, by extension, or (stdin) sniffed from its first line and said."""
    if chosen != "auto":
        return chosen
    if source != "-":
        lowered = source.lower()
        return "csv" if lowered.endswith(".csv") else "jsonl" if lowered.endswith(".jsonl") else "txt"
    if first_line.lstrip().startswith("{"):
        note("reading stdin as JSON lines (its first line is a JSON object); --input-format txt tags every line")
        return "jsonl"
    try:
        header = [name.strip() for name in next(csv.reader([first_line]), [])]
    except csv.Error:
        header = []
    if text_column in header:
        note(f"reading stdin as CSV (its first line has a {text_column!r} column); --input-format txt tags every line")
        return "csv"
    note("reading stdin as one description per line; --input-format csv reads a CSV")
    return "txt"


class _CsvFeed:
    """The physical lines of a CSV for the csv module, refusing a line or a row longer than `cap` characters."""

    def __init__(self, lines, name, cap):
        self.lines, self.name, self.cap, self.pending = lines, name, cap, 0

    def __iter__(self):
        for number, line, cut in self.lines:
            self.pending += len(line)
            if cut or self.pending > self.cap:
                raise UserError(
                    f"{self.name}: the row at line {number} is longer than {self.cap} characters; "
                    "check its quotes (an unclosed quote?) or shorten it"
                )
            yield line


def _csv_records(lines, name, text_column, label_column):
    from genre_tagger.data import check_header, csv_rows, split_labels

    feed = _CsvFeed(lines, name, LINE_CAP)
    numbered = csv_rows(feed, name)
    _, header = next(numbered)
    check_header(header, name)
    if text_column not in header:
        found = ", ".join(printable(h) for h in header) or "none"
        raise UserError(
            f"{name} has no column {printable(text_column)!r} (columns: {found}); choose it with --text-column"
        )
    text_at = header.index(text_column)
    label_at = header.index(label_column) if label_column in header else None
    for number, fields in numbered:
        feed.pending = 0
        labels = None
        if label_at is not None:
            labels = split_labels(fields[label_at])
            if not labels:
                raise UserError(
                    f"{name}: row {number} has no {label_column!r} value; fill it, "
                    "or pass --label-column with another name to tag without metrics"
                )
        yield number, fields[text_at], labels


def _character_problem(text):
    """What a JSON escape can put in a text that UTF-8 text cannot hold (NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "holds a NUL character; give plain text"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "holds a lone surrogate (a broken \\u escape); give valid Unicode text"
    return None


def _jsonl_records(lines, name, text_column, label_column):
    from genre_tagger.data import split_labels

    with_labels = None
    for number, line, cut in lines:
        if not line.strip():
            continue
        where = f"{name}: line {number}"
        if cut:
            raise UserError(f"{where} is longer than {LINE_CAP} characters; shorten it")
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise UserError(f"{where} is not JSON; each line must be one object with a {text_column!r} field") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
            raise UserError(
                f"{where} is not a JSON object with a {text_column!r} text field; choose it with --text-column"
            )
        if problem := _character_problem(record[text_column]):
            raise UserError(f"{where}: its {text_column!r} {problem}")
        if with_labels is None:
            with_labels = label_column in record
        labels = None
        if with_labels:
            value = record.get(label_column)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = ",".join(value)
            labels = split_labels(value) if isinstance(value, str) else []
            if not labels:
                raise UserError(
                    f"{where} has no {label_column!r} labels (a string or a list of strings); fill it, "
                    "or pass --label-column with another name to tag without metrics"
                )
        yield number, record[text_column], labels


def _text_records(lines):
    for number, line, _ in lines:
        if line.strip():
            yield number, line, None


def iter_input_chunks(source, text_column, label_column, chosen_format="auto", max_chars=DEFAULT_DESCRIPTION_CHARS):
    """Yield lists of (row number, text, labels or None) from a CSV, JSON lines, a text file or stdin, read strictly.

    Everything is streamed: memory is bounded by CHUNK_ROWS descriptions of at most `max_chars` characters
    (a longer description is cut there, and one note names the rows), whatever the input's size.
    """
    from genre_tagger.data import clean_text

    name = "stdin" if source == "-" else source
    stream = _open_stream(source)
    try:
        lines = bounded_lines(stream, name, max(LINE_CAP, max_chars + 2))
        first = next(lines, None)
        fmt = input_format(source, first[1] if first else "", chosen_format, text_column)
        if first is None:
            raise UserError(
                f"{name} is empty; give {'a CSV with a header row' if fmt == 'csv' else 'some descriptions'}"
            )
        lines = itertools.chain([first], lines)
        if fmt == "csv":
            records = _csv_records(lines, name, text_column, label_column)
        elif fmt == "jsonl":
            records = _jsonl_records(lines, name, text_column, label_column)
        else:
            records = _text_records(lines)
        chunk, cut_rows, rows = [], [], 0
        for number, text, labels in records:
            text = clean_text(text[: max_chars * 2])  # cut first: cleaning a huge text costs as much
            if not text:
                raise UserError(f"{name}: row {number} has an empty description; fill or delete it")
            if len(text) > max_chars:
                text = text[:max_chars]
                cut_rows.append(number)
            chunk.append((number, text, labels))
            rows += 1
            if len(chunk) == CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        if not rows:
            raise UserError(f"{name} has no descriptions to tag")
        if cut_rows:
            note(
                f"{len(cut_rows)} description(s) longer than {max_chars} characters were cut there (the model reads "
                f"only its first tokens): rows {_numbers(cut_rows)}"
            )
    finally:
        if source != "-":
            stream.close()  # never the process's stdin


def _numbers(numbers, shown=10):
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return ", ".join(map(str, numbers[:shown])) + more


def unknown_labels_note(unknown, label_column):
    """One note listing labels of the input's label column that the model does not have."""
    if unknown:
        names = sorted(unknown)
        note(
            f"{len(names)} label(s) in {label_column!r} are not genres of this model, so metrics leave them out: "
            + ", ".join(printable(n) for n in names[:20])
            + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        )


class ResultWriter:
    """Writes results as they come (CSV or JSONL by extension, or readable lines on stdout).

    A file is written under a temporary name beside it and renamed into place only when complete
    (`commit`), so a failed or interrupted run leaves no partial file that looks finished.
    """

    def __init__(self, path, labels, threshold_text, as_json, explain=False):
        self.labels, self.threshold_text, self.as_json, self.explain = labels, threshold_text, as_json, explain
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
            header = ["description", "genres", *self.labels] + (["explanations"] if explain else [])
            self._guard(self.csv.writerow, [spreadsheet_safe(cell) for cell in header])

    def _guard(self, action, *args):
        try:
            action(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            where = self.path or "standard output"
            raise UserError(f"cannot write {where} ({err.strerror or err}); nothing partial was kept") from None

    def write(self, texts, probabilities, decoded, explanations=None):
        """One result per text; `explanations` (genre_tagger.explain's, one per text) when --explain."""
        from genre_tagger.explain import compact, format_explanation

        explanations = explanations if explanations is not None else [None] * len(texts)
        for text, row, genres, explanation in zip(texts, probabilities, decoded, explanations):
            if self.csv:
                genre_cell = ",".join(g for g, _ in genres)
                line = [spreadsheet_safe(text), spreadsheet_safe(genre_cell), *(f"{p:.4f}" for p in row)]
                if explanation is not None:
                    line.append(spreadsheet_safe(compact(explanation)))
                self._guard(self.csv.writerow, line)
            elif self.as_json or self.path:
                record = {
                    "description": text,
                    "genres": [{"genre": g, "probability": round(p, 4)} for g, p in genres],
                    "probabilities": {label: round(float(p), 4) for label, p in zip(self.labels, row)},
                }
                if explanation is not None:
                    record["explanations"] = explanation
                self._guard(self.handle.write, json.dumps(record) + "\n")
            else:
                shown = format_genres(genres, self.threshold_text, row, self.labels)
                self._guard(self.handle.write, f"{shown}\t{printable(text)}\n")
                if explanation is not None:
                    self._guard(self.handle.write, format_explanation(explanation) + "\n")
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
