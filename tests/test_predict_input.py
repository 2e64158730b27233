"""predict.py's input and output files (genre_tagger/textio.py), tested without a model: memory bounded by the
run's limits, one clean line for every bad input or output path, spreadsheet-safe CSV cells, JSON lines parsed
or refused, labels the model lacks noted.
"""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from genre_tagger import UserError
from genre_tagger.common import SPREADSHEET_FORMULA_STARTS, spreadsheet_safe
from genre_tagger.textio import (
    ResultWriter,
    check_output_path,
    description_limit,
    iter_input_chunks,
    unknown_labels_note,
)


def read_all(path, fmt="auto", max_chars=1000, text_column="Description"):
    return [row for chunk in iter_input_chunks(str(path), text_column, "Genre", fmt, max_chars) for row in chunk]


def refused(path, *fragments, fmt="auto"):
    with pytest.raises(UserError) as caught:
        read_all(path, fmt)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- memory bounded by the run's limits, not by the input ----------------------------------------

_MEASURE = """
import sys
from genre_tagger import UserError
from genre_tagger.textio import iter_input_chunks
try:
    rows = [(n, len(t)) for chunk in iter_input_chunks(sys.argv[1], "Description", "Genre", sys.argv[2], 32768)
            for n, t, _ in chunk]
    print("rows", rows)
except UserError as err:
    print("error", err)
# VmHWM: this process's own peak (ru_maxrss can carry the parent's peak across fork and exec).
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("maxrss_mb", peak_kb // 1024)
"""


def _measure(source, fmt, stdin=None):
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(source), fmt],
        cwd=ROOT,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.split("maxrss_mb")[-1])
    assert peak < 300, result.stdout  # a 50 MB line once took 6.9 GB; streamed it takes tens of MB
    return result


def test_a_50mb_line_is_read_in_bounded_pieces_and_cut_with_one_note(tmp_path):
    source = tmp_path / "one-line.txt"
    with source.open("w") as f:
        f.write("word " * 10_000_000 + "\nA second plot.\n")
    result = _measure(source, "auto")
    assert "rows [(1, 32768), (2, 14)]" in result.stdout
    assert result.stderr.count("note:") == 1 and "cut" in result.stderr and "rows 1" in result.stderr
    csv_source = tmp_path / "one-line.csv"
    csv_source.write_bytes(b"Description\n" + b"a" * 50_000_000)
    assert "longer than" in _measure(csv_source, "auto").stdout


def test_an_endless_stdin_stream_and_dev_zero_stay_bounded():
    # 300 MB on stdin without a line end: streamed in pieces, never read whole.
    producer = subprocess.Popen(["bash", "-c", "head -c 300000000 /dev/zero | tr '\\0' a"], stdout=subprocess.PIPE)
    try:
        result = _measure("-", "txt", stdin=producer.stdout)
    finally:
        producer.stdout.close()
        producer.wait()
    assert "rows [(1, 32768)]" in result.stdout
    assert "binary file" in _measure("/dev/zero", "txt").stdout


def test_description_limit_follows_the_model():
    assert description_limit(128) == 64 * 128
    assert description_limit(None) == 64 * 512


def test_a_csv_field_past_the_field_limit_is_one_line(tmp_path):
    source = tmp_path / "huge.csv"
    source.write_text('Description\n"' + "a\n" * 100_000 + '"\n')
    refused(source, "row 2", "longer than")


def test_a_long_csv_description_is_cut(tmp_path, capsys):
    source = tmp_path / "long.csv"
    source.write_text("Description\n" + "a" * 5000 + "\nshort\n")
    assert [len(text) for _, text, _ in read_all(source)] == [1000, 5]
    assert "1 description(s)" in capsys.readouterr().err


# --- every bad input is one line ------------------------------------------------------------------


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    source = tmp_path / "latin.txt"
    source.write_bytes(b"A plot.\nUn film \xe9trange.\n")
    refused(source, str(source), "line 2", "not UTF-8")
    csv_source = tmp_path / "latin.csv"
    csv_source.write_bytes(b"Description\nA plot\nUn film \xe9trange\n")
    refused(csv_source, "line 3", "not UTF-8")


def test_invalid_utf8_on_stdin_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"A plot\n\xff\xfe\n")))
    refused("-", "stdin", "line 2", "not UTF-8", fmt="txt")


@pytest.mark.parametrize("content", [b"A plot\n\x00\x01\x02", b"\x00" * 10])
def test_binary_files_are_refused(tmp_path, content):
    for suffix in (".txt", ".csv", ".jsonl"):
        source = tmp_path / f"binary{suffix}"
        source.write_bytes(content)
        refused(source, "binary file")


def test_folders_fifos_missing_and_empty_files_are_one_line(tmp_path):
    refused(tmp_path, "is a folder")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    refused(fifo, "named pipe")
    refused(tmp_path / "none.txt", "does not exist")
    for name, content in (
        ("empty.txt", ""),
        ("empty.csv", ""),
        ("blank.txt", "\n \n"),
        ("header.csv", "Description\n"),
    ):
        (tmp_path / name).write_text(content)
        refused(tmp_path / name, name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_one_line(tmp_path):
    source = tmp_path / "secret.txt"
    source.write_text("A plot\n")
    source.chmod(0)
    refused(source, "cannot read")


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("Description,Description\nA,B\n", ["names a column twice"]),
        ('Title,Description\nA,"An unclosed plot\n', ["row 2", "quotes"]),
        ('Title,Description\nA,"Unclosed, Drama\nB,Plot two, Comedy",x\n', ["row 2"]),
        ("Title,Plot\nA,B\n", ["no column 'Description'"]),
        ("Description,Genre\nA plot,\n", ["row 2", "no 'Genre' value"]),
    ],
)
def test_bad_csv_is_one_line(tmp_path, content, fragments):
    source = tmp_path / "movies.csv"
    source.write_text(content)
    refused(source, *fragments)


# --- output paths -----------------------------------------------------------------------------------


def test_output_paths_that_would_replace_something_are_refused(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("Description\nA plot\n")
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "folder.csv").mkdir()
    cases = [
        (source, "is the --input"),
        (tmp_path / "folder.csv", "is a folder"),
        (run / "out.csv", "inside the run"),
        (tmp_path / "run.zip", "must end in .csv"),
        (tmp_path / "no" / "such" / "out.csv", "does not exist"),
        (tmp_path / "out.txt", "must end in .csv"),
    ]
    for output, fragment in cases:
        with pytest.raises(UserError, match=fragment):
            check_output_path(str(output), str(source), str(run))
    (tmp_path / "there.csv").write_text("")
    with pytest.raises(UserError, match="already exists"):
        check_output_path(str(tmp_path / "there.csv"), "-", str(run))
    check_output_path(str(tmp_path / "fine.jsonl"), str(source), str(run))


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot write"):
        ResultWriter("/proc/out.csv", ["Drama"], "0.3", False)


# --- spreadsheet safety -------------------------------------------------------------------------------


def test_every_written_csv_cell_is_spreadsheet_safe(tmp_path):
    labels = ["=cmd|' /C calc'!A0", "+Drama", "-x", "@SUM(A1)", "\tTab", "\rCR", "Comedy"]
    texts = ['=HYPERLINK("http://x")', "+1 a romance", "-2", "@x", "\tplot", "\rplot", "plain plot"]
    probabilities = [[0.9] * len(labels) for _ in texts]
    decoded = [[(label, 0.9) for label in labels] for _ in texts]
    out = tmp_path / "tagged.csv"
    writer = ResultWriter(str(out), labels, "0.3", False)
    writer.write(texts, probabilities, decoded)
    writer.commit()
    rows = list(csv.reader(out.open(newline="")))
    assert len(rows) == len(texts) + 1
    for row in rows:
        for cell in row:
            assert not cell.startswith(SPREADSHEET_FORMULA_STARTS), (row, cell)
    assert rows[0][2] == "'=cmd|' /C calc'!A0" and rows[1][0] == '\'=HYPERLINK("http://x")'
    assert rows[-1][0] == "plain plot"


def test_spreadsheet_safe_leaves_plain_text_alone():
    assert spreadsheet_safe("A plot") == "A plot"
    assert spreadsheet_safe("=1+1") == "'=1+1"
    assert spreadsheet_safe("") == ""


# --- JSON lines ----------------------------------------------------------------------------------------


def test_jsonl_is_parsed_not_tagged_as_raw_text(tmp_path):
    source = tmp_path / "movies.jsonl"
    records = [
        {"Description": "A heist crew plans one last job.", "Genre": ["Crime", "Thriller"]},
        {"Description": "Two friends road-trip.", "Genre": "Comedy, Drama"},
    ]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_all(source) == [
        (1, "A heist crew plans one last job.", ["Crime", "Thriller"]),
        (2, "Two friends road-trip.", ["Comedy", "Drama"]),
    ]
    other = tmp_path / "movies.txt"
    other.write_text('{"Plot": "A plot"}\n')
    assert read_all(other, "jsonl", text_column="Plot") == [(1, "A plot", None)]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("A plot that is not JSON", "is not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"Title": "x"}', "not a JSON object with a 'Description'"),
        ('{"Description": 5}', "not a JSON object with a 'Description'"),
        ("[" * 100_000, "is not JSON"),
    ],
)
def test_bad_jsonl_is_refused_naming_the_line(tmp_path, line, fragment):
    source = tmp_path / "movies.jsonl"
    source.write_text('{"Description": "A fine plot"}\n' + line + "\n")
    refused(source, "line 2", fragment)


def test_stdin_is_sniffed_from_its_first_line_and_streamed(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"Description": "A plot"}\n')))
    assert read_all("-") == [(1, "A plot", None)]
    assert "JSON lines" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Title,Description\nA,A heist\n")))
    assert read_all("-") == [(2, "A heist", None)]
    assert "as CSV" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"A plot\n\nAnother\n")))
    assert [text for _, text, _ in read_all("-")] == ["A plot", "Another"]


# --- labels the model lacks ------------------------------------------------------------------------------


def test_unknown_labels_are_noted_once(capsys):
    unknown_labels_note({"Zzz", "Western\x1b"}, "Genre")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Zzz" in err and "\\x1b" in err and "metrics leave them out" in err
    unknown_labels_note(set(), "Genre")
    assert capsys.readouterr().err == ""


def test_predict_notes_unknown_labels_and_neutralises_cells(trained, tmp_path):
    source = tmp_path / "movies.csv"
    source.write_text(
        'Description,Genre\n=A heist crew plans one last job.,"Crime,Zzz"\nTwo friends road-trip.,Comedy\n'
    )
    out = tmp_path / "tagged.csv"
    result = subprocess.run(
        [sys.executable, "predict.py", "--model", str(trained["output"]), "--input", str(source), "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "'Genre' are not genres of this model" in result.stderr and "Zzz" in result.stderr
    assert "macro_f1=" in result.stderr
    rows = list(csv.reader(out.open(newline="")))
    assert rows[1][0] == "'=A heist crew plans one last job."
    inside = subprocess.run(
        [sys.executable, "predict.py", "--model", str(trained["output"]), "--input", str(source), "--output",
         str(trained["output"] / "tagged.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inside.returncode == 2 and "inside the run" in inside.stderr
    assert len(inside.stderr.strip().splitlines()) == 1


# --- Parquet in and out -------------------------------------------------------------------------------


def write_parquet(path, columns, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def test_parquet_is_read_in_bounded_pieces_with_predicts_row_numbers(tmp_path):
    from genre_tagger.textio import CHUNK_ROWS

    path = tmp_path / "in.parquet"
    rows = CHUNK_ROWS + 5
    texts = [f"a heist number {i}  See full summary »" for i in range(rows)]
    write_parquet(path, {"Description": texts, "Genre": [["Crime", "Drama"]] * rows}, row_group_size=700)
    chunks = list(iter_input_chunks(str(path), "Description", "Genre", "auto", 1000))
    assert [len(c) for c in chunks] == [CHUNK_ROWS, 5]
    first = chunks[0][0]
    assert first == (1, "a heist number 0", ["Crime", "Drama"])
    assert chunks[-1][-1][0] == rows


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"Plot": ["a heist"]}, "no column 'Description'"),
        ({"Description": ["a heist", None]}, "row 2 has no 'Description'"),
        ({"Description": [1, 2]}, "row 1 has a int, not a text"),
        ({"Description": ["a heist", "  "]}, "row 2 has an empty description"),
        ({"Description": ["a\x00heist"]}, "NUL"),
        ({"Description": ["a heist"], "Genre": [None]}, "no 'Genre' labels"),
    ],
)
def test_bad_parquet_is_one_line_naming_the_row(tmp_path, columns, fragment):
    path = tmp_path / "in.parquet"
    write_parquet(path, columns)
    with pytest.raises(UserError, match=fragment):
        read_all(path)


@pytest.mark.parametrize("content", [b"", b"Description\na heist\n", b"PAR1" + b"\x00" * 40, None])
def test_a_file_that_is_not_parquet_is_one_line(tmp_path, content):
    path = tmp_path / "in.parquet"
    if content is None:  # a real file cut short
        write_parquet(path, {"Description": ["a heist"] * 100})
        content = path.read_bytes()[:-30]
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable Parquet file"):
        read_all(path)


def test_parquet_cannot_come_from_stdin():
    with pytest.raises(UserError, match="Parquet cannot be read from stdin"):
        list(iter_input_chunks("-", "Description", "Genre", "parquet"))


def test_parquet_output_keeps_full_probabilities_and_appears_only_when_complete(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "tagged.parquet"
    writer = ResultWriter(str(out), ["Drama", "Crime"], "0.3", False, with_ids=True)
    writer.write(
        ["a heist", "a trial"], [[0.123456789, 0.9], [0.5, 0.25]], [[("Crime", 0.9)], [("Drama", 0.5)]], ids=["7", "8"]
    )
    assert not out.exists() and len(list(tmp_path.glob(".tagged.parquet.*.part"))) == 1
    writer.commit()
    table = pq.read_table(out).to_pylist()
    assert table[0] == {
        "id": "7",
        "description": "a heist",
        "genres": ["Crime"],
        "Drama": pytest.approx(0.123456789),
        "Crime": pytest.approx(0.9),
    }
    assert list(tmp_path.iterdir()) == [out]
    check_output_path(str(tmp_path / "other.parquet"), "-", None)
    with pytest.raises(UserError, match="already exists"):
        check_output_path(str(out), "-", None)


def test_an_interrupted_parquet_output_leaves_nothing(tmp_path):
    out = tmp_path / "tagged.parquet"
    writer = ResultWriter(str(out), ["Drama"], "0.3", False)
    writer.write(["a heist"], [[0.5]], [[("Drama", 0.5)]])
    writer.discard()
    assert list(tmp_path.iterdir()) == []
