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
from genre_tagger.common import first_line, note, printable, spreadsheet_safe, umask_mode

CHUNK_ROWS = 2048  # rows read, tagged and written at a time: memory stays flat for any file size
CHARS_PER_TOKEN = 64  # a description is cut at 64 characters per token the model reads: far past what it sees
DEFAULT_DESCRIPTION_CHARS = 100_000
OUTPUT_EXTENSIONS = (".csv", ".jsonl", ".parquet")
MAX_ID_CHARS = 1024  # an --id-column value: a key, not a text
RECORD_EXTENSIONS = {"csv": (".csv",), "jsonl": (".jsonl",), "parquet": (".parquet", ".pq")}
LINE_CAP = 1 << 22  # characters of one line read at a time (a CSV row, a JSON line); a text line is cut instead
PARQUET_READ_BYTES = 1 << 20  # a column chunk is streamed through this buffer, not loaded whole with its row group


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
    if not output.lower().endswith(OUTPUT_EXTENSIONS):
        raise UserError("--output must end in .csv, .jsonl or .parquet")
    target = Path(output).resolve()
    if source != "-" and target == Path(source).resolve():
        raise UserError("--output is the --input file; choose another name so the input is kept")
    if model:
        run = Path(model).resolve()
        if target == run or target.is_relative_to(run):
            raise UserError(f"--output {output} is inside the run {model}; write results somewhere else")
    if Path(output).is_dir():
        raise UserError(f"--output {output} is a folder; give a file name ending in .csv, .jsonl or .parquet")
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


def bounded_lines(raw, name, cap, block=1 << 16, first_number=1):
    """Yield (line number, line, cut) from a binary stream of UTF-8 (a BOM dropped), each line at most `cap` characters.

    The stream is read and decoded in blocks: a longer line is dropped past `cap` (`cut` is then True), so memory
    stays bounded for a line without end (a 50 MB line, a device, a pipe). A line keeps its '\\n'. NUL bytes and
    text that is not UTF-8 are one clean error naming the line (and byte).
    """
    read = getattr(raw, "read1", raw.read)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    number, offset, newlines, started = first_number, 0, first_number - 1, False
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


def format_by_extension(path):
    """'csv', 'jsonl' or 'parquet' by a file's extension; 'txt' (one description per line) for anything else."""
    lowered = str(path).lower()
    return next((fmt for fmt, ends in RECORD_EXTENSIONS.items() if lowered.endswith(ends)), "txt")


def input_format(source, first_line, chosen, text_column):
    """'csv', 'jsonl', 'parquet' or 'txt' for --input: as chosen, by extension, or (stdin) sniffed from its first line
    and said."""
    if chosen != "auto":
        return chosen
    if source != "-":
        return format_by_extension(source)
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


def _fail(message):
    raise UserError(message)


def _column_missing(name, header, column, flag):
    found = ", ".join(printable(h) for h in header) or "none"
    return f"{name} has no column {printable(column)!r} (columns: {found}); choose it with {flag}"


def _identifier(value, where, id_column, bad_row):
    """An input's own id as text (a JSON or Parquet integer included), or None after reporting a bad row."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        bad_row(f"{where} has no {printable(id_column)!r} id; fill it or tag without --id-column")
        return None
    if len(value) > MAX_ID_CHARS or _character_problem(value):
        bad_row(
            f"{where}: its {printable(id_column)!r} is not a short plain text id (at most {MAX_ID_CHARS} characters)"
        )
        return None
    return value


def _csv_records(lines, name, text_column, label_column, id_column=None, bad_row=_fail, first_row=2):
    from genre_tagger.data import check_header, csv_rows, split_labels

    feed = _CsvFeed(lines, name, LINE_CAP)
    numbered = csv_rows(feed, name, first_row)
    _, header = next(numbered)
    check_header(header, name)
    if text_column not in header:
        raise UserError(_column_missing(name, header, text_column, "--text-column"))
    if id_column is not None and id_column not in header:
        raise UserError(_column_missing(name, header, id_column, "--id-column"))
    text_at = header.index(text_column)
    label_at = header.index(label_column) if label_column in header else None
    id_at = header.index(id_column) if id_column is not None else None
    for number, fields in numbered:
        feed.pending = 0
        labels = ident = None
        if label_at is not None:
            labels = split_labels(fields[label_at])
            if not labels:
                raise UserError(
                    f"{name}: row {number} has no {label_column!r} value; fill it, "
                    "or pass --label-column with another name to tag without metrics"
                )
        if (
            id_at is not None
            and (ident := _identifier(fields[id_at], f"{name}: row {number}", id_column, bad_row)) is None
        ):
            continue
        yield number, fields[text_at], labels, ident


def _character_problem(text):
    """What a JSON escape can put in a text that UTF-8 text cannot hold (NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "holds a NUL character; give plain text"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "holds a lone surrogate (a broken \\u escape); give valid Unicode text"
    return None


def _labels_value(value):
    """Labels given as 'A, B' or ['A', 'B'] (JSON lines, Parquet), as a list; [] for anything else."""
    from genre_tagger.data import split_labels

    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    return split_labels(value) if isinstance(value, str) else []


def _no_labels(where, label_column):
    return UserError(
        f"{where} has no {label_column!r} labels (a string or a list of strings); fill it, "
        "or pass --label-column with another name to tag without metrics"
    )


def _jsonl_records(lines, name, text_column, label_column, id_column=None, bad_row=_fail):
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
            bad_row(f"{where} is not JSON; each line must be one object with a {text_column!r} field")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
            bad_row(f"{where} is not a JSON object with a {text_column!r} text field; choose it with --text-column")
            continue
        if problem := _character_problem(record[text_column]):
            bad_row(f"{where}: its {text_column!r} {problem}")
            continue
        ident = None
        if id_column is not None and (ident := _identifier(record.get(id_column), where, id_column, bad_row)) is None:
            continue
        if with_labels is None:
            with_labels = label_column in record
        labels = None
        if with_labels and not (labels := _labels_value(record.get(label_column))):
            raise _no_labels(where, label_column)
        yield number, record[text_column], labels, ident


def _text_records(lines):
    for number, line, _ in lines:
        if line.strip():
            yield number, line, None, None


def open_parquet(path):
    """A pyarrow ParquetFile, or one line saying why not (pyarrow missing, not Parquet, unreadable)."""
    try:
        import pyarrow.parquet as pq
        from pyarrow import ArrowException
    except ImportError:
        raise UserError("Parquet needs pyarrow: pip install pyarrow (pinned in requirements.txt)") from None
    try:
        return pq.ParquetFile(path, buffer_size=PARQUET_READ_BYTES, pre_buffer=False)
    except (ArrowException, OSError) as err:
        raise UserError(f"{path} is not a readable Parquet file ({first_line(err, 120)})") from None


def parquet_columns(parquet, path, wanted):
    """The names of `wanted` (column, flag) that the file has; one it lacks is refused when it has a flag, and a name
    the file gives two columns is refused (a row would hold only one of them)."""
    names = parquet.schema_arrow.names
    for column, flag in wanted:
        if column is not None and column not in names and flag is not None:
            raise UserError(_column_missing(path, names, column, flag))
    present = [c for c in dict.fromkeys(column for column, _ in wanted) if c is not None and c in names]
    for column in present:
        if names.count(column) > 1:
            raise UserError(f"{path} has {names.count(column)} columns named {printable(column)!r}; rename all but one")
    return present


def parquet_batches(parquet, path, columns, batch_size, row_groups=None, first_row=1):
    """Yield (first row number, {column: Python values}) of each batch; a value Python cannot hold (a timestamp past
    year 9999) or a damaged page is one line naming where it stopped."""
    from pyarrow import ArrowException

    batches = parquet.iter_batches(batch_size=batch_size, row_groups=row_groups, columns=columns)
    number = first_row
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            values = {c: batch.column(c).to_pylist() for c in columns}
        except (ArrowException, OSError, OverflowError, ValueError) as err:
            raise UserError(
                f"{path}: row {number} and on could not be read as Parquet ({first_line(err, 120)})"
            ) from None
        yield number, values
        number += batch.num_rows


def _parquet_records(path, text_column, label_column, id_column=None, bad_row=_fail, row_groups=None, first_row=1):
    """Yield (row number, text, labels, id) from a Parquet file (or some of its row groups), a batch at a time."""
    parquet = open_parquet(path)
    wanted = parquet_columns(parquet, path, [(text_column, "--text-column"), (id_column, "--id-column"),
                                             (label_column, None)])  # fmt: skip
    for start, columns in parquet_batches(parquet, path, wanted, CHUNK_ROWS, row_groups, first_row):
        for i, text in enumerate(columns[text_column]):
            number = start + i
            where = f"{path}: row {number}"
            if not isinstance(text, str):
                missing = "no" if text is None else f"a {type(text).__name__}, not a text"
                bad_row(f"{where} has {missing} {printable(text_column)!r}; fill it or choose --text-column")
                continue
            if problem := _character_problem(text):
                bad_row(f"{where}: its {text_column!r} {problem}")
                continue
            ident = None
            if id_column is not None:
                ident = _identifier(columns[id_column][i], where, id_column, bad_row)
                if ident is None:
                    continue
            labels = None
            if label_column in columns and not (labels := _labels_value(columns[label_column][i])):
                raise _no_labels(where, label_column)
            yield number, text, labels, ident


def prepared_records(records, name, max_chars, bad_row=_fail, cut_rows=None):
    """Records with their text cleaned and cut at `max_chars` (numbers of cut rows appended to `cut_rows`);
    an empty description is a bad row."""
    from genre_tagger.data import clean_text

    for number, text, labels, ident in records:
        text = clean_text(text[: max_chars * 2])  # cut first: cleaning a huge text costs as much
        if not text:
            bad_row(f"{name}: row {number} has an empty description; fill or delete it")
            continue
        if len(text) > max_chars:
            text = text[:max_chars]
            if cut_rows is not None:
                cut_rows.append(number)
        yield number, text, labels, ident


def cut_note(cut_rows, max_chars):
    """The one note naming descriptions cut at `max_chars`."""
    if cut_rows:
        note(
            f"{len(cut_rows)} description(s) longer than {max_chars} characters were cut there (the model reads "
            f"only its first tokens): rows {_numbers(cut_rows)}"
        )


def iter_input_chunks(source, text_column, label_column, chosen_format="auto", max_chars=DEFAULT_DESCRIPTION_CHARS):
    """Yield lists of (row number, text, labels or None) from a CSV, JSON lines, Parquet, a text file or stdin, read
    strictly.

    Everything is streamed: memory is bounded by CHUNK_ROWS descriptions of at most `max_chars` characters
    (a longer description is cut there, and one note names the rows), whatever the input's size.
    """
    name = "stdin" if source == "-" else source
    if chosen_format == "parquet" or (
        chosen_format == "auto" and source != "-" and format_by_extension(source) == "parquet"
    ):
        if source == "-":
            raise UserError("Parquet cannot be read from stdin; give the file with --input")
        check_input_path(source)
        yield from _chunks(_parquet_records(source, text_column, label_column), name, max_chars)
        return
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
        yield from _chunks(records, name, max_chars)
    finally:
        if source != "-":
            stream.close()  # never the process's stdin


def _chunks(records, name, max_chars):
    chunk, cut_rows, rows = [], [], 0
    for number, text, labels, _ in prepared_records(records, name, max_chars, cut_rows=cut_rows):
        chunk.append((number, text, labels))
        rows += 1
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    if not rows:
        raise UserError(f"{name} has no descriptions to tag")
    cut_note(cut_rows, max_chars)


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
    """Writes results as they come (CSV, JSONL or Parquet by extension, or readable lines on stdout).

        A file is written under a temporary name beside it and renamed into place only when complete
        (`commit`), so a failed or interrupted run leaves no partial file that looks finished. `with_ids`: a first
        `id` column (the batch tool's); `replace`: a file that appeared meanwhile is replaced (the batch tool's shards,
    where a retried shard writes the same rows again). Parquet keeps full float32 probabilities, CSV and JSONL four decimals.
    """

    def __init__(self, path, labels, threshold_text, as_json, explain=False, with_ids=False, replace=False):
        self.labels, self.threshold_text, self.as_json, self.explain = labels, threshold_text, as_json, explain
        self.path, self.with_ids, self.replace = path, with_ids, replace
        kind = path.lower().rsplit(".", 1)[-1] if path else None
        self.tmp_name = None
        self.csv = self.parquet = None
        if path:
            import tempfile

            folder = os.path.dirname(os.path.abspath(path))
            try:
                fd, self.tmp_name = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
                if kind == "parquet":
                    self.handle = os.fdopen(fd, "wb")
                else:
                    self.handle = os.fdopen(fd, "w", newline="", encoding="utf-8")
            except OSError as err:
                raise UserError(f"cannot write --output {path} ({err.strerror}); choose a writable path") from None
        else:
            self.handle = sys.stdout
        if kind == "parquet":
            self._open_parquet()
        elif kind == "csv":
            self.csv = csv.writer(self.handle)
            header = [*(["id"] if with_ids else []), "description", "genres", *self.labels]
            header += ["explanations"] if explain else []
            self._guard(self.csv.writerow, [spreadsheet_safe(cell) for cell in header])

    def _open_parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field("id", pa.string())] if self.with_ids else []
        fields += [pa.field("description", pa.string()), pa.field("genres", pa.list_(pa.string()))]
        fields += [pa.field(label, pa.float32()) for label in self.labels]
        fields += [pa.field("explanations", pa.string())] if self.explain else []
        self.schema = pa.schema(fields)
        self.parquet = pq.ParquetWriter(self.handle, self.schema)

    def _write_parquet(self, ids, texts, probabilities, decoded, explanations):
        import numpy as np
        import pyarrow as pa

        from genre_tagger.explain import compact

        columns = [ids] if self.with_ids else []
        columns += [list(texts), [[g for g, _ in genres] for genres in decoded]]
        columns += [np.asarray(probabilities, dtype=np.float32)[:, j] for j in range(len(self.labels))]
        if self.explain:
            columns.append([None if e is None else compact(e) for e in explanations])
        self._guard(self.parquet.write_table, pa.Table.from_arrays(columns, schema=self.schema))

    def _guard(self, action, *args):
        try:
            action(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            where = self.path or "standard output"
            raise UserError(f"cannot write {where} ({err.strerror or err}); nothing partial was kept") from None

    def write(self, texts, probabilities, decoded, explanations=None, ids=None):
        """One result per text; `explanations` (genre_tagger.explain's, one per text) when --explain; `ids` (one
        per text) when written `with_ids`."""
        from genre_tagger.explain import compact, format_explanation

        explanations = explanations if explanations is not None else [None] * len(texts)
        if self.parquet is not None:
            self._write_parquet(ids, texts, probabilities, decoded, explanations)
            return
        ids = ids if self.with_ids else [None] * len(texts)
        for ident, text, row, genres, explanation in zip(ids, texts, probabilities, decoded, explanations):
            if self.csv:
                genre_cell = ",".join(g for g, _ in genres)
                line = [spreadsheet_safe(text), spreadsheet_safe(genre_cell), *(f"{p:.4f}" for p in row)]
                if self.with_ids:
                    line.insert(0, spreadsheet_safe(ident))
                if explanation is not None:
                    line.append(spreadsheet_safe(compact(explanation)))
                self._guard(self.csv.writerow, line)
            elif self.as_json or self.path:
                record = {
                    **({"id": ident} if self.with_ids else {}),
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
        if self.parquet is not None:
            self._guard(self.parquet.close)
        self._guard(self.handle.close)
        if os.path.exists(self.path) and not self.replace:
            kept, self.tmp_name = self.tmp_name, None
            raise UserError(f"{self.path} appeared while tagging; the result stays in {kept}")
        self._guard(os.chmod, self.tmp_name, umask_mode(0o666))
        self._guard(os.replace, self.tmp_name, self.path)
        self.tmp_name = None

    def discard(self):
        """Drop the unfinished file; a second write error while closing it changes nothing."""
        if self.handle is not sys.stdout:
            with contextlib.suppress(Exception):  # pyarrow's writer raises its own types on a failed close
                if self.parquet is not None:
                    self.parquet.close()
            with contextlib.suppress(OSError):
                self.handle.close()
        if self.tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp_name)
