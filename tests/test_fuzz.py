"""Property-based fuzzing (hypothesis) of the input readers and the settings that relate flags, bounded in time.

Each number's own range (genre_tagger.settings.Bounded) is fuzzed in test_settings.py.
"""

import argparse
import io
import json
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genre_tagger import UserError, common
from genre_tagger.data import csv_rows
from genre_tagger.settings import predict_settings_problem

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CSV_ALPHABET = st.sampled_from(list('abc ,"\n\r\t\x00é🎬=+-'))


@BOUNDED
@given(st.text(alphabet=CSV_ALPHABET, max_size=200))
def test_csv_reader_yields_whole_rows_or_one_clean_error(text):
    try:
        rows = list(csv_rows(io.StringIO(text, newline=""), "fuzz.csv"))
    except UserError as err:
        assert "fuzz.csv" in str(err) and "\n" not in str(err).strip()
        return
    _, header = rows[0]
    numbers = [number for number, _ in rows]
    assert numbers == sorted(set(numbers))
    for _, fields in rows[1:]:
        assert len(fields) == len(header)
        assert not any("\x00" in field for field in fields)


@BOUNDED
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30), max_size=5))
def test_well_formed_csv_round_trips(cells):
    import csv

    header = [f"c{i}" for i in range(len(cells))] or ["only"]
    row = cells or ["x"]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([header, row])
    buffer.seek(0)
    try:
        rows = list(csv_rows(buffer, "t.csv"))
    except UserError as err:
        # Refused only for NUL bytes or a field whose inner lines look like whole rows.
        assert any("\x00" in c for c in row) or any("\n" in c or "\r" in c for c in row), err
        return
    if any(field.strip() for field in row) or len(row) > 1:
        assert [fields for _, fields in rows[1:]] in ([row], [])


@BOUNDED
@given(max_genres=st.one_of(st.none(), st.integers(1, 5)), min_genres=st.integers(0, 5))
def test_predict_settings_refuse_more_genres_at_least_than_at_most(max_genres, min_genres):
    args = argparse.Namespace(
        descriptions=["a plot"], input=None, output=None, input_format="auto", max_genres=max_genres,
        min_genres=min_genres,
    )  # fmt: skip
    problem = predict_settings_problem(args)
    assert (problem is None) == (max_genres is None or min_genres <= max_genres)
    if problem:
        assert problem.startswith("--min-genres") and "\n" not in problem


@BOUNDED
@given(st.text(max_size=100))
def test_printable_leaves_no_control_characters(text):
    shown = common.printable(text)
    assert not any(unicodedata.category(ch) == "Cc" for ch in shown)
    if text.isprintable():
        assert shown == text


INPUT_BYTES = st.one_of(
    st.binary(max_size=300),
    st.text(alphabet=st.sampled_from(list('ab {}[]:,"\n\r\t\x00é🎬=Description')), max_size=200).map(str.encode),
    st.lists(st.fixed_dictionaries({"Description": st.one_of(st.text(max_size=20), st.integers())}), max_size=4).map(
        lambda records: "\n".join(json.dumps(r) for r in records).encode()
    ),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(content=INPUT_BYTES, suffix=st.sampled_from([".txt", ".csv", ".jsonl"]), max_chars=st.sampled_from([5, 1000]))
def test_input_files_yield_rows_or_one_clean_error(tmp_path, content, suffix, max_chars):
    from genre_tagger.textio import iter_input_chunks

    source = tmp_path / f"fuzz{suffix}"
    source.write_bytes(content)
    try:
        rows = [
            row for chunk in iter_input_chunks(str(source), "Description", "Genre", "auto", max_chars) for row in chunk
        ]
    except UserError as err:
        assert "\n" not in str(err).strip()
        return
    assert rows
    for number, text, labels in rows:
        assert isinstance(number, int) and number >= 1
        assert text and len(text) <= max_chars and "\x00" not in text
        assert labels is None or all(isinstance(label, str) for label in labels)
