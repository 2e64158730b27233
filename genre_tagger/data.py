"""The dataset: download with a checksum, load, clean, validate, encode labels, split."""

import csv
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from genre_tagger import UserError
from genre_tagger.common import printable, sha256_of
from genre_tagger.settings import row_number

DATA_URL = (
    "https://raw.githubusercontent.com/donalcarr/Datasets/caf0f03a40407b752cbfbb817623816d3b9c3a78/IMDB-Movie-Data.csv"
)
DATA_SHA256 = "1f86628225db1e0b51a9aa2be10bdb98449c8f311d27b6c3c4845d723c5973b4"
DEFAULT_DATA_PATH = Path("data/IMDB-Movie-Data.csv")
CSV_FIELD_LIMIT = 131_072  # characters of one CSV field

# IMDb cut long plots and appended this link text; it says nothing about the genre.
_SCRAPED_TAIL = re.compile(r"\s*(\.\.\.|…)?\s*See full summary\s*»?\s*$")
_WHITESPACE = re.compile(r"\s+")


def ensure_dataset(path=DEFAULT_DATA_PATH, url=DATA_URL, sha256=DATA_SHA256, timeout_s=60):
    """Return `path`, downloading it first if it is missing.

    The download goes to a temporary file beside `path` and is renamed into place only after its
    checksum matches, so a failed or tampered download leaves nothing behind.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        tmp.write(block)
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise UserError(
                    f"could not download the dataset from {url} ({reason}); download it by hand and save it as {path}"
                ) from None
        actual = sha256_of(tmp_name)
        if actual != sha256:
            raise UserError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                f"nothing was saved. Download the file by hand and save it as {path}"
            )
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return path


def clean_text(text):
    """Drop IMDb's '... See full summary »' tail and collapse runs of whitespace."""
    return _WHITESPACE.sub(" ", _SCRAPED_TAIL.sub("", str(text))).strip()


def split_labels(field):
    """'Action, Crime,Drama' -> ['Action', 'Crime', 'Drama'] (trimmed, no empties, no repeats)."""
    labels = [label.strip() for label in str(field).split(",")]
    return list(dict.fromkeys(label for label in labels if label))


def _row_list(mask, source_rows):
    # Row numbers as a user sees them in a spreadsheet: the header is row 1.
    rows = np.asarray(source_rows)[np.flatnonzero(mask)].tolist()
    shown = ", ".join(map(str, rows[:10]))
    return shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


MAX_CSV_LINE_CHARS = 4 << 20  # one physical line of a training CSV; far above any real row


def csv_rows(handle, source, first_row=2):
    """Yield (row number, fields) of a CSV read strictly; the header is row 1, as in a spreadsheet (`first_row`:
    the number of the row after the header, for a piece of a file read with its header in front).

    Malformed input is an error naming its row, never a silently merged or shifted row: unclosed or
    stray quotes, rows with more or fewer fields than the header, NUL bytes (a binary file), and a
    quoted field that runs over several lines which themselves look like rows (an unclosed quote
    that a later quote happened to close).
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)  # Python's default, said here: no field grows past it
    reader = csv.reader(handle, strict=True)
    number = first_row - 1
    try:
        header = next(reader, None)
        if header is None:
            raise UserError(f"{source} is empty; give a CSV file with a header row")
        header = [name.strip() for name in header]
        _check_fields(source, 1, header)
        yield 1, header
        for number, fields in enumerate(reader, start=first_row):
            if not fields:
                continue  # a blank line
            _check_fields(source, number, fields)
            if len(fields) != len(header):
                raise UserError(
                    f"{source}: row {number} has {len(fields)} fields where the header has {len(header)}; "
                    "check that row's commas and quotes"
                )
            for field in fields:
                # Only what ends a physical line: str.splitlines also splits at U+0085, U+2028 and form feeds.
                for line in field.replace("\r\n", "\n").replace("\r", "\n").split("\n")[1:]:
                    if line.count(",") >= len(header) - 1 > 0:
                        raise UserError(
                            f"{source}: row {number} has a quoted field that swallows what looks like further rows "
                            "(an unclosed quote?); check that row's quotes"
                        )
            yield number, fields
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise UserError(
                f"{source}: row {number + 1} has a field longer than {CSV_FIELD_LIMIT} characters "
                "(an unclosed quote?); check that row's quotes"
            ) from None
        raise UserError(f"{source}: row {number + 1} is not valid CSV ({err}); check that row's quotes") from None
    except UnicodeDecodeError:
        raise UserError(f"{source} is not UTF-8 text; save it as UTF-8 CSV and try again") from None


def check_header(header, source):
    if len(set(header)) != len(header):
        raise UserError(f"{source}: the header names a column twice; rename one")


def _check_fields(source, number, fields):
    if any("\x00" in field for field in fields):
        raise UserError(f"{source}: row {number} holds NUL bytes; this is a binary file, not a CSV")


def open_text_file(path, what="--input"):
    """Open a UTF-8 text file (a BOM is dropped) for the csv module, or say in one line why not."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file")
    if not path.is_file():  # a device or a pipe: endless, or read only once (the data is read, then hashed)
        raise UserError(f"{what} {path} is not a regular file; give a CSV file")
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise UserError(f"cannot read {what} {path} ({err.strerror})") from None


def bounded_lines(handle, source, cap=MAX_CSV_LINE_CHARS):
    """The lines of a text file, each read in at most `cap` characters: a line without end is one clean error."""
    while line := handle.readline(cap + 1):
        if len(line) > cap:
            raise UserError(f"{source} has a line longer than {cap} characters; this is not a CSV of descriptions")
        yield line


def read_csv(path, what="--data"):
    """The whole CSV as a DataFrame of strings, read strictly (csv_rows); `source_row` is each row's number."""
    import pandas as pd  # imported here: predict.py uses clean_text without paying for pandas

    with open_text_file(path, what) as handle:
        rows = csv_rows(bounded_lines(handle, path), path)
        _, header = next(rows)
        check_header(header, path)
        numbered = list(rows)
    frame = pd.DataFrame([fields for _, fields in numbered], columns=header, dtype=str)
    if frame.empty:
        frame = pd.DataFrame(columns=header, dtype=str)
    frame.attrs["source_rows"] = [number for number, _ in numbered]
    return frame


def require_columns(frame, columns, path):
    for column in columns:
        if column not in frame.columns:
            available = ", ".join(frame.columns) or "none"
            raise UserError(
                f"{path} has no column {column!r} (columns: {available}); "
                "choose the right one with --text-column / --label-column"
            )


def load_labelled_csv(path, text_column="Description", label_column="Genre", what="--data"):
    """Load a CSV of texts with comma-separated labels, cleaned and validated.

    Returns (frame, report): frame has columns `text` (cleaned), `labels` (list of str) and
    `source_row` (the row number in the file, header = 1); report counts what cleaning changed.
    """
    import pandas as pd

    frame = read_csv(path, what)
    require_columns(frame, [text_column, label_column], path)
    source_rows = np.array(frame.attrs["source_rows"], dtype=np.int64)
    texts = frame[text_column].map(clean_text)
    labels = frame[label_column].map(split_labels)
    empty_text = texts.str.len() == 0
    if empty_text.any():
        raise UserError(
            f"{path}: empty {text_column!r} in rows {_row_list(empty_text, source_rows)}; fill or delete them"
        )
    no_labels = labels.map(len) == 0
    if no_labels.any():
        raise UserError(
            f"{path}: no labels in {label_column!r} in rows {_row_list(no_labels, source_rows)}; fill or delete them"
        )
    odd_labels = labels.map(lambda row: any(printable(label) != label for label in row))
    if odd_labels.any():
        raise UserError(
            f"{path}: control characters in {label_column!r} in rows {_row_list(odd_labels, source_rows)}; fix those labels"
        )
    clean = pd.DataFrame({"text": texts, "labels": labels, "source_row": source_rows})
    duplicated = clean["text"].duplicated()
    clean = clean[~duplicated].reset_index(drop=True)
    distinct = sorted({label for row in clean["labels"] for label in row})
    if len(distinct) < 2:
        raise UserError(
            f"{path}: column {label_column!r} has {len(distinct)} distinct label(s); "
            "multi-label training needs at least two"
        )
    report = {
        "rows_read": len(frame),
        "duplicates_dropped": int(duplicated.sum()),
        "scraped_tails_stripped": int(frame[text_column].str.contains("See full summary", regex=False).sum()),
        "rows_kept": len(clean),
        "labels": len(distinct),
    }
    return clean, report


def fit_binarizer(label_lists):
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer()
    binarizer.fit(label_lists)
    return binarizer


def encode_labels(binarizer, label_lists):
    """Multi-hot float32 matrix; labels the binarizer never saw are ignored (and reported by the caller)."""
    known = set(binarizer.classes_)
    return binarizer.transform([[label for label in row if label in known] for row in label_lists]).astype(np.float32)


def stratified_split(label_matrix, fraction, seed):
    """Split row indices into (rest, held_out) with about `fraction` held out, every label on both sides.

    Multi-label iterative stratification (Sechidis et al., 2011) from iterative-stratification keeps
    label proportions; at 10% a 5-movie genre still expects only half a movie in the held-out part, so
    a last step swaps single rows to put each label that has two or more rows on both sides.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    label_matrix = np.asarray(label_matrix)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    rest, held_out = next(splitter.split(np.zeros(len(label_matrix)), label_matrix))
    rest, held_out = _cover_every_label(label_matrix, list(rest), list(held_out))
    return np.sort(rest), np.sort(held_out)


def _cover_every_label(matrix, rest, held_out):
    for label in np.argsort(matrix.sum(axis=0), kind="stable"):  # rarest first
        for side, other in ((held_out, rest), (rest, held_out)):
            if matrix[side, label].sum() > 0 or matrix[other, label].sum() < 2:
                continue
            other_counts, side_counts = matrix[other].sum(axis=0), matrix[side].sum(axis=0)
            # Move a row that the other side can spare (it keeps every label it has), and send back
            # a row that this side can spare.
            donor = next((i for i in other if matrix[i, label] and (other_counts[matrix[i] > 0] >= 2).all()), None)
            back = next((i for i in side if (side_counts[matrix[i] > 0] >= 2).all() and not matrix[i, label]), None)
            if donor is None or back is None:
                continue
            other.remove(donor)
            side.remove(back)
            side.append(donor)
            other.append(back)
    return rest, held_out


def stratified_folds(label_matrix, folds, seed):
    """K (train, test) index pairs of iterative-stratified K-fold cross-validation."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(label_matrix)), label_matrix)]


def read_split(source):
    """A run's split.csv (a path or its bytes) as a frame of str columns, its text and labels as train.py had them."""
    import io

    import pandas as pd

    from genre_tagger.common import from_spreadsheet_safe

    frame = pd.read_csv(io.BytesIO(source) if isinstance(source, bytes) else source, keep_default_na=False, dtype=str)
    for column in ("labels", "text"):
        if column in frame.columns:
            frame[column] = frame[column].map(from_spreadsheet_safe)
    return frame


def read_corrections(path, movies, what, with_genres=False):
    """A CSV of row corrections (the label audit's format), checked against the loaded rows.

    It needs a `row` column (the row number in the --data CSV, header = row 1) and, with `with_genres`,
    a `genres` column of corrected comma-separated genres, each one the data already has. A row id that is not
    a whole number within the data's rows (settings.row_number), a row that is not a usable row of the data, a
    row named twice, or an unknown genre is an error naming it.
    Returns {"file", "sha256", "rows": {row number: [genres] or None}}.
    """
    from genre_tagger.common import from_spreadsheet_safe

    frame = read_csv(path, what)
    needed = ["row", "genres"] if with_genres else ["row"]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise UserError(
            f"{what} {path} has no column {missing[0]!r} (columns: {', '.join(frame.columns) or 'none'}); "
            f"it needs {' and '.join(repr(c) for c in needed)}, as the label audit writes them"
        )
    known_rows = set(movies["source_row"].tolist())
    row_numbers = row_number(max(known_rows, default=1))
    known_genres = {label for row in movies["labels"] for label in row}
    rows = {}
    for index, (number, cell) in enumerate(zip(frame.attrs["source_rows"], frame["row"])):
        row = row_numbers.parse(from_spreadsheet_safe(cell), f"{what} {path}, line {number}: 'row'")
        if row not in known_rows:
            raise UserError(
                f"{what} {path}: row {number} names row {row}, which is not a usable row of the data "
                "(absent, or dropped as a duplicate); check that the file was written for this CSV"
            )
        if row in rows:
            raise UserError(f"{what} {path}: row {number} names row {row} a second time; keep one")
        genres = None
        if with_genres:
            genres = split_labels(from_spreadsheet_safe(frame["genres"].iloc[index]))
            unknown = [genre for genre in genres if genre not in known_genres]
            if not genres or unknown:
                raise UserError(
                    f"{what} {path}: row {number} gives "
                    + (f"genres the data does not have: {printable(', '.join(unknown))}" if unknown else "no genres")
                    + f"; use genres of the data ({', '.join(sorted(known_genres))})"
                )
        rows[row] = genres
    return {"file": str(path), "sha256": sha256_of(path), "rows": rows}


def apply_corrections(movies, train_idx, exclude=None, relabel=None):
    """Drop `exclude`'s rows from the training rows and give `relabel`'s training rows their corrected genres.

    Only training rows change: validation and test rows keep their labels, so that runs with and without
    corrections are scored on the same rows and labels. Returns (movies, train_idx, record for train_config.json).
    """
    position = {row: i for i, row in enumerate(movies["source_row"].tolist())}
    training = set(np.asarray(train_idx).tolist())
    record = {}
    movies = movies.copy()
    for name, corrections in (("exclude_rows", exclude), ("relabel", relabel)):
        if corrections is None:
            continue
        hits = [position[row] for row in corrections["rows"] if row in position and position[row] in training]
        if name == "exclude_rows":
            train_idx = np.array([i for i in train_idx if i not in set(hits)], dtype=np.asarray(train_idx).dtype)
        else:
            by_position = {position[row]: genres for row, genres in corrections["rows"].items() if row in position}
            movies["labels"] = [by_position[i] if i in hits else labels for i, labels in enumerate(movies["labels"])]
        record[name] = {
            "file": corrections["file"],
            "sha256": corrections["sha256"],
            "rows_named": len(corrections["rows"]),
            "applied_to_training_rows": len(hits),
        }
    return movies, train_idx, record
