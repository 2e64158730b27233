"""A hostile-input corpus for the newer surfaces: the review loop (CLI, store, HTTP API, page), Parquet in
predict.py's reader and writer checks, and the batch tool's refusals before Ray starts. Every case ends one of
three ways: one `error:` line and exit 2 (a UserError in process), a 4xx JSON body, or the right result; and
nothing the user had is replaced or lost."""

import contextlib
import csv
import decimal
import json
import os
import sqlite3
import subprocess
import sys
import threading
from argparse import Namespace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_review import LABELS, THRESHOLDS, FakeTagger, filled_store

from conftest import ROOT, free_port, one_line_error, run_script
from genre_tagger import UserError
from genre_tagger.common import SPREADSHEET_FORMULA_STARTS, from_spreadsheet_safe
from genre_tagger.review import ReviewStore, read_audit_scores, read_titles

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FAR_FUTURE_MS = 2**62  # a timestamp[ms] past year 9999: Arrow holds it, Python's datetime cannot


def review(*args):
    return run_script("-m", "genre_tagger.review", *args)


def single_line(err):
    message = str(err)
    assert message.strip() and "\n" not in message.strip(), message
    return message


# %% The review store: hostile --db values


def _store(path):
    filled_store(path, 2).close()
    return path


def _store_at_version(version):
    def build(path):
        _store(path)
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE review_meta SET value = ?", (version,))
        return path

    return build


def _truncated_store(path):
    _store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _sqlite_of_another_application(path):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")
    return path


def _meta_table_only(path):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE review_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT INTO review_meta VALUES ('schema_version', '2')")
    return path


def _write(content):
    def build(path):
        path.write_bytes(content)
        return path

    return build


def _folder(path):
    path.mkdir()
    return path


def _contents(path):
    """What a --db file holds: its rows when SQLite can read it (SQLite rewrites its own header on close), else its bytes."""
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            return list(connection.iterdump())
    except sqlite3.DatabaseError:
        return path.read_bytes()


HOSTILE_DBS = [
    ("folder", _folder, "is a folder"),
    ("text file", _write(b"not a database\n"), "is not a SQLite database"),
    ("empty file", _write(b""), "is empty; import titles into it first"),
    ("header then garbage", _write(b"SQLite format 3\x00" + b"\xff" * 300), "file is not a database"),
    ("truncated store", _truncated_store, "review store"),
    ("newer schema", _store_at_version("99"), "schema version 99, newer than"),
    ("schema version 0", _store_at_version("0"), "has no valid schema version (0)"),
    ("schema version in superscript", _store_at_version("²"), "has no valid schema version (²)"),
    ("negative schema version", _store_at_version("-1"), "has no valid schema version (-1)"),
    ("schema version with a space", _store_at_version(" 2"), "has no valid schema version"),
    ("another application's SQLite", _sqlite_of_another_application, "holds other tables (photos)"),
    ("a review_meta table and nothing else", _meta_table_only, "no decisions, items, runs table; it is damaged"),
    ("a missing folder", None, "does not exist"),
]


@pytest.mark.parametrize("build, says", [case[1:] for case in HOSTILE_DBS], ids=[case[0] for case in HOSTILE_DBS])
def test_a_hostile_db_is_one_line_and_left_as_it_was(tmp_path, build, says):
    path = tmp_path / "review.sqlite" if build else tmp_path / "missing" / "review.sqlite"
    if build:
        build(path)
    before = _contents(path)
    one_line_error(review("status", "--db", path), says)
    one_line_error(review("export", "--db", path, "--output", tmp_path / "out.csv"), says)
    assert _contents(path) == before
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://example.com/review", "is not a database URL"),
        ("file:///tmp/review.sqlite", "is not a database URL"),
        ("nosuchdb://x", "is not a database URL"),
        ("://x", "is not a database URL"),
        ("postgresql://user:secret@host:notaport/db", "is not a database URL"),
        ("sqlite:////nonexistent-folder/review.sqlite", "does not exist"),
    ],
)
def test_a_url_with_a_bad_scheme_or_port_is_one_line_without_its_password(url, says):
    line = one_line_error(review("status", "--db", url), says)
    assert "secret" not in line


@pytest.mark.parametrize("name", ["new\nline.sqlite", "\u202eevil.sqlite", "-dash.sqlite", "tab\there.sqlite"])
def test_a_db_path_with_odd_characters_is_named_printably(tmp_path, name):
    line = one_line_error(review("status", "--db", tmp_path / name), "does not exist")
    assert "\u202e" not in line and "\t" not in line


@pytest.mark.parametrize("name", ["x?y.sqlite", "x%41.sqlite", "x#y.sqlite", "a b@c.sqlite", "é:ü.sqlite"])
def test_a_db_path_that_looks_like_a_url_is_that_file_and_no_other(tmp_path, name):
    filled_store(tmp_path / name, 3).close()
    other = tmp_path / "xA.sqlite"  # what 'x%41.sqlite' would mean in a URL
    filled_store(other, 1).close()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = review("status", "--db", tmp_path / name)
    assert result.returncode == 0 and result.stdout.startswith("titles=3 "), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_serve_names_its_own_flag_for_a_hostile_review_store(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("keep me\n")
    for store in (tmp_path, text, tmp_path / "missing" / "r.sqlite"):
        result = run_script("serve.py", "--model", tmp_path / "no-run", "--review", store, "--port", free_port())
        assert "--db" not in one_line_error(result, f"--review {store}")
    assert text.read_text() == "keep me\n"


def test_a_device_is_not_a_db(tmp_path):
    one_line_error(review("status", "--db", "/dev/null"), "is not a regular file")


def test_an_import_with_an_unusable_db_stops_before_the_model_and_stores_nothing(tmp_path):
    source = tmp_path / "new.csv"
    source.write_text("Description\na heist\n")
    text = tmp_path / "notes.sqlite"
    text.write_text("keep me\n")
    for db, says in ((text, "is not a SQLite database"), (tmp_path, "is a folder")):
        one_line_error(review("import", "--db", db, "--model", tmp_path / "no-run", "--input", source), says)
    assert text.read_text() == "keep me\n"


# %% Importing: hostile --input files


def _parquet(columns, names=None):
    def build(path):
        if names:
            table = pa.Table.from_arrays([pa.array(values) for values in columns], names=names)
        else:
            table = pa.table(columns)
        pq.write_table(table, path)

    return build


HOSTILE_IMPORTS = [
    ("empty.csv", b"", "is empty"),
    ("header-only.csv", b"Title,Description\n", "has no titles to import"),
    ("header-only.jsonl", b"", "has no titles to import"),
    ("huge-line.csv", b"Title,Description\nA," + b"x" * ((1 << 22) + 10) + b"\n", "longer than 4194304 characters"),
    ("huge-field.csv", b'Title,Description\nA,"' + b"x y\n" * 40_000 + b'"\n', "has a field longer than"),
    ("nul.csv", b"Title,Description\nA,p\x00q\n", "holds NUL bytes"),
    ("latin1.csv", b"Title,Description\nA,caf\xe9\n", "is not UTF-8"),
    ("utf16.csv", "Title,Description\nA,plot\n".encode("utf-16"), "is not UTF-8"),
    ("utf16.jsonl", '{"Description": "a"}\n'.encode("utf-16"), "is not UTF-8"),
    ("dup-ids.csv", b"id,Description\n7,a\n7,b\n", "repeats the id '7'"),
    ("dup-header.csv", b"Description,Description\na,b\n", "names a column twice"),
    ("no-text.csv", b"Title,Plot\nA,b\n", "has no column 'Description'"),
    ("no-id.csv", b"Description\na\n", "has no column 'id'"),
    ("long-id.csv", b"id,Description\n" + b"9" * 300 + b",a\n", "id is 300 characters long"),
    ("tab-id.csv", b'id,Description\n"a\tb",a\n', "control character (U+0009)"),
    ("fake.parquet", b"Title,Description\nA,plot\n", "not a readable Parquet file"),
    ("short.parquet", b"PAR1" + b"\x00" * 40, "not a readable Parquet file"),
    ("number.jsonl", b'{"Description": 5}\n', "'Description' must be text, not int"),
    ("list.jsonl", b'{"Description": ["a", "b"]}\n', "'Description' must be text, not list"),
    ("deep.jsonl", b'{"Description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line 1 is not JSON"),
    ("huge-int.jsonl", b'{"id": ' + b"9" * 5000 + b', "Description": "a"}\n', "line 1 is not JSON"),
    ("bool-id.jsonl", b'{"id": true, "Description": "a"}\n', "'id' must be text, not bool"),
    ("surrogate.jsonl", b'{"Description": "a\\ud800"}\n', "NUL or a lone surrogate"),
    ("int-genres.jsonl", b'{"Description": "a", "Genre": [1, 2]}\n', "'Genre' must be text, not list"),
    ("int.parquet", _parquet({"Description": [1, 2]}), "'Description' must be text, not int"),
    ("list.parquet", _parquet({"Description": [["a", "b"]]}), "'Description' must be text, not list"),
    ("null.parquet", _parquet({"Description": pa.array([None], pa.string())}), "row 1 has no 'Description'"),
    ("struct.parquet", _parquet({"Description": [{"a": 1}]}), "must be text, not dict"),
    ("binary.parquet", _parquet({"Description": pa.array([b"ab"], pa.binary())}), "must be text, not bytes"),
    (
        "decimal-id.parquet",
        _parquet({"Description": ["a"], "id": pa.array([decimal.Decimal("1.5")])}),
        "'id' must be text, not Decimal",
    ),
    (
        "far-future.parquet",
        _parquet({"Description": ["a"], "Title": pa.array([FAR_FUTURE_MS], pa.timestamp("ms"))}),
        "row 1 and on could not be read as Parquet",
    ),
    (
        "two-texts.parquet",
        _parquet([["a"], ["b"]], names=["Description", "Description"]),
        "has 2 columns named 'Description'",
    ),
    (
        "two-genres.parquet",
        _parquet([["a"], ["Drama"], ["Crime"]], names=["Description", "Genre", "Genre"]),
        "has 2 columns named 'Genre'",
    ),
    ("nested-genres.parquet", _parquet({"Description": ["a"], "Genre": [[["Drama"]]]}), "'Genre' must be text"),
    ("dup-ids.parquet", _parquet({"Description": ["a", "b"], "id": ["x", "x"]}), "repeats the id 'x'"),
    ("empty.parquet", _parquet({"Description": pa.array([], pa.string())}), "has no titles to import"),
    (
        "no-row-groups.parquet",
        lambda path: pq.ParquetWriter(path, pa.schema([("Description", pa.string())])).close(),
        "has no titles to import",
    ),
    ("a folder", _folder, "is a folder"),
    ("*.csv", None, "does not exist"),
]


def import_args(id_column=None):
    return Namespace(input_format="auto", text_column="Description", id_column=id_column, title_column="Title",
                     label_column="Genre")  # fmt: skip


def _id_column(name):
    """The --id-column an import case is read with: its file's name says whether it is about ids."""
    return (
        "id"
        if name.startswith(("dup-ids", "no-id", "long-id", "tab-id", "huge-int", "bool-id", "decimal-id"))
        else None
    )


@pytest.mark.parametrize("name, content, says", HOSTILE_IMPORTS, ids=[case[0] for case in HOSTILE_IMPORTS])
def test_a_hostile_import_file_is_one_line(tmp_path, name, content, says):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        for _ in read_titles(str(path), import_args(id_column=_id_column(name)), 1000):
            pass
    assert says in single_line(caught.value)


@pytest.mark.parametrize("name", ["far-future.parquet", "two-texts.parquet", "utf16.csv", "deep.jsonl"])
def test_hostile_imports_through_the_cli_store_nothing(tmp_path, name):
    content = {case[0]: case[1] for case in HOSTILE_IMPORTS}[name]
    path = tmp_path / name
    content(path) if callable(content) else path.write_bytes(content)
    db = tmp_path / "review.sqlite"
    one_line_error(review("import", "--db", db, "--model", tmp_path / "no-run", "--input", path))
    assert not db.exists()


@pytest.mark.parametrize(
    "name, build, keys, descriptions, titles",
    [
        ("bom.csv", _write("\ufeffTitle,Description\r\n=A,plot one\r\n".encode()), ["2"], ["plot one"], ["=A"]),
        (
            "dictionary.parquet",
            _parquet({"Description": pa.array(["a heist", "a trial"]).dictionary_encode()}),
            ["1", "2"],
            ["a heist", "a trial"],
            [None, None],
        ),
        (
            "large.parquet",
            _parquet({"Description": pa.array(["a heist"], pa.large_string()), "Title": [1917]}),
            ["1"],
            ["a heist"],
            ["1917"],
        ),
        (
            "nested-other.parquet",
            _parquet({"Description": ["a heist"], "meta": [{"x": [1, 2]}]}),
            ["1"],
            ["a heist"],
            [None],
        ),
        (
            "html.jsonl",
            _write(b'{"Description": "<script>alert(1)</script>", "Title": "<b>x</b>"}\n'),
            ["1"],
            ["<script>alert(1)</script>"],
            ["<b>x</b>"],
        ),
    ],
)
def test_odd_but_valid_import_files_are_read_as_written(tmp_path, name, build, keys, descriptions, titles):
    path = tmp_path / name
    build(path)
    rows = [row for chunk in read_titles(str(path), import_args(), 1000) for row in chunk]
    assert [r["key"] for r in rows] == keys and [r["description"] for r in rows] == descriptions
    assert [r["title"] for r in rows] == titles


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty"),
        (b"row,label_quality\n2,0.\x005\n", "NUL"),
        (b"row,label_quality\n2,\xff\n", "not UTF-8"),
        ("row,label_quality\n2,0.5\n".encode("utf-16"), "not UTF-8"),
        (b"row,label_quality\n2," + b"1" * (5 << 20) + b"\n", "longer than"),
        (b"row,row,label_quality\n2,3,0.5\n", "names a column twice"),
        (b"row,label_quality\n2,0.5\n2,0.7\n", "line 3 repeats row 2"),
        (b"row,label_quality\n-2,0.5\n", "'row' must be a whole number"),
        (b"row,label_quality\n2,-0.1\n", "'label_quality' must be a number between 0 and 1"),
        (b"title,score\nA,0.5\n", "has no column 'row'"),
    ],
)
def test_a_hostile_audit_file_is_one_line(tmp_path, content, says):
    path = tmp_path / "audit.csv"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_audit_scores(path)
    assert says in single_line(caught.value)


# %% Exporting: hostile outputs, and cells a spreadsheet would run


HOSTILE_TEXTS = [
    '=HYPERLINK("http://evil","click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "'quoted already",
    'a "quoted" word, and a comma',
    "two\nlines\r\nand a CR",
    "emoji 🎬🍿 and a ZWJ 👩‍👩‍👧",
    "\u200fright-to-left mark \u202bembedding\u202c",
    "<script>alert(1)</script>",
]


def hostile_store(path):
    store = ReviewStore.open(path)
    run_id = store.add_run("cd" * 32, "a-run", LABELS, THRESHOLDS)
    rows = [
        {"key": str(i + 2), "title": text, "description": text, "given": None, "probabilities": [0.5, 0.1, 0.9],
         "suggested": ["Action", "Drama"], "uncertainty": 0.2, "label_quality": None}
        for i, text in enumerate(HOSTILE_TEXTS)
    ]  # fmt: skip
    store.enqueue(run_id, rows)
    for item_id in range(1, len(rows) + 1):
        store.decide(item_id, "accept", f"@reviewer{item_id}+1")  # a name that starts like a formula
    return store


@pytest.mark.parametrize("fmt", ["labelled", "relabel"])
def test_exported_cells_are_spreadsheet_safe_and_read_back_exactly(tmp_path, fmt):
    db = tmp_path / "review.sqlite"
    hostile_store(db).close()
    out = tmp_path / "out.csv"
    result = review("export", "--db", db, "--output", out, "--format", fmt)
    assert result.returncode == 0, result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == len(HOSTILE_TEXTS) + 1
    for row in rows:
        for cell in row:
            assert not cell.startswith(SPREADSHEET_FORMULA_STARTS), cell
    if fmt == "labelled":
        assert [from_spreadsheet_safe(row[2]) for row in rows[1:]] == HOSTILE_TEXTS
        assert [from_spreadsheet_safe(row[1]) for row in rows[1:]] == HOSTILE_TEXTS


def test_export_column_names_that_start_like_formulas_are_made_safe_too(tmp_path):
    db = tmp_path / "review.sqlite"
    hostile_store(db).close()
    out = tmp_path / "out.csv"
    args = ["--format", "labelled", "--text-column", "=cmd|' /C calc'!A0", "--label-column", "@SUM(A1)"]
    assert review("export", "--db", db, "--output", out, *args).returncode == 0
    with open(out, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header[2:4] == ["'=cmd|' /C calc'!A0", "'@SUM(A1)"]


def test_export_never_replaces_a_file_the_db_or_writes_into_a_folder(tmp_path):
    db = tmp_path / "review.sqlite"
    hostile_store(db).close()
    db_bytes = db.read_bytes()
    existing = tmp_path / "kept.csv"
    existing.write_text("keep me\n")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "file").write_text("a file, not a folder\n")
    for output, says in (
        (existing, "already exists"),
        (tmp_path / "folder.csv", "is a folder"),
        (tmp_path / "dangling.csv", "already exists"),
        (tmp_path / "missing" / "out.csv", "does not exist"),
        (tmp_path / "file" / "out.csv", "does not exist"),
        (db, "must end in .csv"),
        (tmp_path / "out.xlsx", "must end in .csv"),
        (Path("/proc/out.csv"), "check the path, its permissions"),  # a folder no one can create files in
    ):
        one_line_error(review("export", "--db", db, "--output", output), says)
    assert existing.read_text() == "keep me\n" and db.read_bytes() == db_bytes
    assert not (tmp_path / "nowhere.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# %% The HTTP API


@pytest.fixture
def served(tmp_path):
    from fastapi.testclient import TestClient

    from genre_tagger.serving import ServedRun, create_app

    description = {"run": "fake", "base_model": "fake", "genres": 3, "onnx_variant": "int8", "model_sha256": "0" * 64}
    description.update(max_tokens=8, verified=True, metrics={}, settings={})
    run = ServedRun(LABELS, {"default": THRESHOLDS}, {}, description, FakeTagger())
    path = tmp_path / "review.sqlite"
    store = filled_store(path, 5)
    with TestClient(create_app(run, review=store), raise_server_exceptions=False) as client:
        yield client, store, path
    store.close()


HOSTILE_GETS = [
    "/v1/review/0", "/v1/review/-1", "/v1/review/1.5", "/v1/review/1e2", "/v1/review/0x1", "/v1/review/%00",
    "/v1/review/" + "9" * 5000, "/v1/review/%D9%A1", "/v1/review/NEXT", "/v1/review/999",
    "/v1/review/next?strategy=", "/v1/review/next?strategy=UNCERTAIN", "/v1/review/next?strategy=%00",
    "/v1/review/next?exclude=%D9%A1", "/v1/review/next?exclude=-1", "/v1/review/next?exclude=%00",
    "/v1/review/next?exclude=" + "1," * 2000, "/v1/review/next?exclude=" + ",".join(["9" * 19] * 101),
    "/v1/review/next?exclude=" + "9" * 20,
]  # fmt: skip
FINE_GETS = [
    "/v1/review/1", "/v1/review/+1", "/v1/review/next?exclude=", "/v1/review/next?exclude=,,,",
    "/v1/review/next?exclude=0,1", "/v1/review/next?strategy=audit&strategy=import", "/v1/review/next?limit=-1",
]  # fmt: skip


@pytest.mark.parametrize("path", HOSTILE_GETS + FINE_GETS)
def test_hostile_ids_and_queries_get_a_4xx_json_or_an_answer(served, path):
    client, _, _ = served
    response = client.get(path)
    if path in FINE_GETS:
        assert response.status_code == 200, response.text
        assert "item" in response.json()
    else:
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]


QUERY_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(list("0123456789,-+ %&=#")), max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item_id=QUERY_TEXT, strategy=QUERY_TEXT | st.sampled_from(["uncertain", "audit", "import"]), exclude=QUERY_TEXT)
def test_any_id_or_query_string_is_answered_or_refused_in_json(served, item_id, strategy, exclude):
    from urllib.parse import quote

    client, _, _ = served
    for response in (
        client.get(f"/v1/review/{quote(item_id, safe='')}"),
        client.get("/v1/review/next", params={"strategy": strategy, "exclude": exclude}),
    ):
        assert response.status_code in (200, 404, 422), response.text
        assert response.json()


HOSTILE_POSTS = [
    (b'{"reviewer": "ann", "action": "skip"}', "text/plain", 415),
    (b'{"reviewer": "ann", "action": "skip"}', "multipart/form-data; boundary=x", 415),
    (b'{"reviewer": "ann", "action": "skip"}', "application/xml", 415),
    (b"", "application/json", 422),
    (b"null", "application/json", 422),
    (b'"text"', "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip", "version": NaN}', "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip", "version": 1.0}', "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip", "version": true}', "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip", "version": 1' + b"0" * 5000 + b"}", "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip", "request_id": ""}', "application/json", 422),
    (b'{"reviewer": "ann", "action": "accept", "genres": "Drama"}', "application/json", 422),
    (json.dumps({"reviewer": "ann", "action": "accept", "genres": ["Drama"] * 5000}).encode(), "application/json", 422),
    (b'{"reviewer": "ann", "action": "skip"}' + b" " * (2 << 20), "application/json", 413),
    (b'{"reviewer": "\xed\xa0\x80", "action": "skip"}', "application/json", 422),
]


@pytest.mark.parametrize("body, content_type, status", HOSTILE_POSTS)
def test_hostile_decision_bodies_get_a_4xx_json_and_record_nothing(served, body, content_type, status):
    client, store, _ = served
    response = client.post("/v1/review/2", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert store.decisions() == []


def test_concurrent_conflicting_decisions_one_wins_the_rest_are_told(served):
    client, store, _ = served
    barrier, answers = threading.Barrier(8), []

    def decide(name):
        barrier.wait()
        body = {"reviewer": name, "action": "accept", "genres": [LABELS[len(name) % 3]], "version": None}
        answers.append(client.post("/v1/review/3", json=body))

    threads = [threading.Thread(target=decide, args=(f"r{'x' * i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200] + [409] * 7, [a.text for a in answers]
    winner = next(a.json() for a in answers if a.status_code == 200)["decision"]
    assert [d["id"] for d in store.decisions(3)] == [winner["id"]]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["item"]["decision"]["reviewer"] == winner["reviewer"]


def _delete(path):
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _replace(path):
    _delete(path)
    filled_store(path, 1).close()


@pytest.mark.parametrize("change", [_delete, _replace], ids=["deleted", "replaced"])
def test_a_store_deleted_or_replaced_while_serving_is_a_410_and_never_written(served, change):
    client, store, path = served
    assert client.post("/v1/review/1", json={"reviewer": "ann", "action": "skip"}).status_code == 200
    change(path)
    for response in (
        client.post("/v1/review/2", json={"reviewer": "ann", "action": "skip"}),
        client.get("/v1/review/next"),
        client.get("/v1/review/2"),
    ):
        assert response.status_code == 410, response.text
        assert "deleted or replaced" in response.json()["error"]
    if path.exists():  # the file put in its place is not written to
        with ReviewStore.open(path) as other:
            assert other.decisions() == [] and other.progress()["titles"] == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE items SET probabilities = 'nope'",
        "UPDATE items SET probabilities = '[1e999, \"x\", null]'",
        "UPDATE items SET suggested = '5'",
        "UPDATE items SET given = '[1'",
        "UPDATE items SET uncertainty = 'high'",
        "UPDATE items SET run_id = 99",
        "UPDATE items SET current_id = 99 WHERE id = 1",
        "UPDATE runs SET thresholds = '[0.1]'",
        "UPDATE runs SET labels = '{}'",
    ],
)
def test_a_store_edited_by_hand_is_a_4xx_json_and_an_export_one_line(served, statement):
    client, store, path = served
    store.decide(1, "accept", "ann")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER decisions_no_update")
        connection.execute(statement)
    shown = client.get("/v1/review/1")
    assert 400 <= shown.status_code < 500 and "the store is damaged" in shown.json()["error"], shown.text
    for response in (
        client.get("/v1/review/next"),
        client.post("/v1/review/2", json={"reviewer": "ann", "action": "accept"}),
    ):
        assert response.status_code < 500, response.text
        assert response.status_code == 200 or "the store is damaged" in response.json()["error"]
    if response.status_code != 200:  # the refused decision left nothing
        assert [d["item_id"] for d in store.decisions()] == [1]
    out = path.with_name("out.csv")
    result = review("export", "--db", path, "--output", out, "--format", "relabel")
    if result.returncode:
        one_line_error(result, "the store is damaged")
        assert not out.exists()


@contextlib.contextmanager
def read_only(*paths):
    """`paths` made immutable (chattr +i: read-only even for root, as the suite runs in CI), then restored."""
    done = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("chattr +i is not available here")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_store_made_read_only_while_serving_keeps_every_acknowledged_decision(served):
    client, store, path = served
    assert client.post("/v1/review/1", json={"reviewer": "ann", "action": "skip"}).status_code == 200
    with read_only(path):
        for item_id in (2, 3):
            response = client.post(f"/v1/review/{item_id}", json={"reviewer": "ann", "action": "skip"})
            assert response.status_code < 500 and ("decision" in response.json() or response.json()["error"])
        acknowledged = [1] + [i for i in (2, 3) if store.item(i)["decision"] is not None]
        store.close()
    with ReviewStore.open(path) as reopened:
        assert [d["item_id"] for d in reopened.decisions()] == acknowledged


def test_a_read_only_store_and_folder_are_one_line_for_every_command(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    db = folder / "review.sqlite"
    with filled_store(db, 2) as store:
        store.decide(1, "accept", "ann")
    source = tmp_path / "new.csv"
    source.write_text("Description\na heist\n")
    with read_only(db, folder):
        one_line_error(review("status", "--db", db), "review store")
        one_line_error(review("export", "--db", db, "--output", tmp_path / "out.csv"), "review store")
        one_line_error(review("export", "--db", db, "--output", folder / "out.csv"))
    assert sorted(p.name for p in folder.iterdir()) == ["review.sqlite"] and not (tmp_path / "out.csv").exists()


def test_the_page_renders_data_as_text_never_as_html(served):
    client, store, _ = served
    script = (ROOT / "genre_tagger" / "web" / "review.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", ".href",
                 ".src ="):  # fmt: skip
        assert sink not in script, sink
    for field in ("item.description", "item.title", "candidate.genre"):
        assert f"textContent = {field}" in script
    run_id = store.add_run("ef" * 32, "other", LABELS, THRESHOLDS)
    hostile = "<img src=x onerror=alert(1)> javascript:alert(2) <script>alert(3)</script>"
    row = {"key": "html", "title": hostile, "description": hostile, "given": None, "probabilities": [0.5, 0.1, 0.9],
           "suggested": ["Drama"], "uncertainty": 0.0, "label_quality": None}  # fmt: skip
    store.enqueue(run_id, [row])
    item = client.get("/v1/review/6").json()["item"]
    assert item["title"] == hostile and item["description"] == hostile  # data, escaped only by JSON


# %% Parquet in predict.py (genre_tagger/textio.py)


def predict_rows(path, text_column="Description"):
    from genre_tagger.textio import iter_input_chunks

    return [row for chunk in iter_input_chunks(str(path), text_column, "Genre", "auto", 1000) for row in chunk]


PREDICT_PARQUET = [
    ("empty", _parquet({"Description": pa.array([], pa.string())}), "has no descriptions to tag"),
    (
        "no row groups",
        lambda path: pq.ParquetWriter(path, pa.schema([("Description", pa.string())])).close(),
        "has no descriptions to tag",
    ),
    ("a null description", _parquet({"Description": pa.array(["a", None], pa.string())}), "row 2 has no"),
    ("an int column", _parquet({"Description": [1]}), "has a int, not a text"),
    ("a list column", _parquet({"Description": [["a"]]}), "has a list, not a text"),
    ("a struct column", _parquet({"Description": [{"a": 1}]}), "has a dict, not a text"),
    ("a binary column", _parquet({"Description": pa.array([b"a"], pa.binary())}), "has a bytes, not a text"),
    (
        "a far-future timestamp",
        _parquet({"Description": pa.array([FAR_FUTURE_MS], pa.timestamp("ms"))}),
        "row 1 and on could not be read as Parquet",
    ),
    (
        "far-future genres",
        _parquet({"Description": ["a"], "Genre": pa.array([FAR_FUTURE_MS], pa.timestamp("ms"))}),
        "row 1 and on could not be read as Parquet",
    ),
    (
        "two text columns",
        _parquet([["a"], ["b"]], names=["Description", "Description"]),
        "has 2 columns named 'Description'",
    ),
    (
        "two label columns",
        _parquet([["a"], ["Drama"], ["Crime"]], names=["Description", "Genre", "Genre"]),
        "has 2 columns named 'Genre'",
    ),
    ("int genres", _parquet({"Description": ["a"], "Genre": [5]}), "has no 'Genre' labels"),
    ("a CSV named .parquet", _write(b"Description\na heist\n"), "not a readable Parquet file"),
]


@pytest.mark.parametrize("build, says", [c[1:] for c in PREDICT_PARQUET], ids=[c[0] for c in PREDICT_PARQUET])
def test_hostile_parquet_for_predict_is_one_line(tmp_path, build, says):
    path = tmp_path / "in.parquet"
    build(path)
    with pytest.raises(UserError) as caught:
        predict_rows(path)
    assert says in single_line(caught.value)


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"Description": pa.array(["a heist", "a trial"]).dictionary_encode()}, ["a heist", "a trial"]),
        ({"Description": pa.array(["a heist"], pa.large_string())}, ["a heist"]),
        ({"Description": ["a heist"], "meta": [{"nested": [1, 2]}]}, ["a heist"]),
        ({"Description": ["a heist"], "Genre": pa.array(["Crime"]).dictionary_encode()}, ["a heist"]),
    ],
)
def test_odd_but_valid_parquet_for_predict_is_read(tmp_path, columns, expected):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(columns), path)
    assert [text for _, text, _ in predict_rows(path)] == expected


_PEAK = """
import sys
from genre_tagger.textio import iter_input_chunks
rows = sum(len(chunk) for chunk in iter_input_chunks(sys.argv[1], "Description", None, "auto", 1000))
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rows, peak_kb // 1024)
"""


def _peak(path):
    result = subprocess.run([sys.executable, "-c", _PEAK, str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows, peak_mb = map(int, result.stdout.split())
    return rows, peak_mb


def test_a_huge_row_group_is_read_in_pieces(tmp_path):
    small, huge = tmp_path / "small.parquet", tmp_path / "huge.parquet"
    pq.write_table(pa.table({"Description": ["a heist"]}), small)
    rows = 100_000  # 1,000 characters each, one uncompressed row group of about 100 MB
    texts = pa.array([os.urandom(500).hex() for _ in range(rows)])
    pq.write_table(pa.table({"Description": texts}), huge, row_group_size=rows, compression="none")
    del texts
    assert pq.ParquetFile(huge).metadata.num_row_groups == 1
    _, baseline = _peak(small)
    count, peak = _peak(huge)
    assert count == rows
    assert peak - baseline < 64, (baseline, peak)  # the whole row group would be about 100 MB more


def test_predict_parquet_outputs_that_would_replace_something_are_refused(tmp_path):
    from genre_tagger.textio import check_output_path

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"Description": ["a heist"]}), source)
    existing = tmp_path / "old.parquet"
    existing.write_bytes(b"keep me")
    (tmp_path / "folder.parquet").mkdir()
    for output, says in (
        (existing, "already exists"),
        (source, "is the --input file"),
        (tmp_path / "missing" / "out.parquet", "does not exist"),
        (tmp_path / "folder.parquet", "is a folder"),
        (tmp_path / "out.xlsx", "must end in"),
    ):
        with pytest.raises(UserError) as caught:
            check_output_path(str(output), str(source), None)
        assert says in single_line(caught.value)
    assert existing.read_bytes() == b"keep me"


# Arrow types a column of a hostile Parquet file may have, with values of each (nulls and extremes included).
ARROW_COLUMNS = st.sampled_from(
    [
        (pa.string(), st.text(max_size=20)),
        (pa.large_string(), st.text(max_size=20)),
        (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        (pa.float64(), st.floats(allow_nan=True)),
        (pa.bool_(), st.booleans()),
        (pa.binary(), st.binary(max_size=10)),
        (pa.timestamp("ms"), st.integers(-(2**62), 2**62)),
        (pa.date32(), st.integers(-(2**31), 2**31 - 1)),
        (pa.list_(pa.string()), st.lists(st.text(max_size=5), max_size=3)),
        (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), max_size=3)),
        (pa.struct([("a", pa.int32())]), st.fixed_dictionaries({"a": st.integers(-5, 5)})),
        (pa.decimal128(10, 2), st.decimals(-(10**7), 10**7, places=2, allow_nan=False, allow_infinity=False)),
    ]
)


@st.composite
def parquet_tables(draw):
    rows = draw(st.integers(0, 4))
    columns = {}
    for name in draw(st.lists(st.sampled_from(["Description", "Title", "Genre", "id"]), min_size=1, unique=True)):
        arrow_type, values = draw(ARROW_COLUMNS)
        cells = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        if arrow_type == pa.timestamp("ms"):
            columns[name] = pa.array(cells, pa.int64()).cast(arrow_type)
        elif arrow_type == pa.date32():
            columns[name] = pa.array(cells, pa.int32()).cast(arrow_type)
        else:
            columns[name] = pa.array(cells, arrow_type)
    return pa.table(columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=parquet_tables(), id_column=st.sampled_from([None, "id"]))
def test_any_parquet_gives_rows_or_one_line_in_predict_and_review(tmp_path, table, id_column):
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    try:
        rows = predict_rows(path)
        assert all(isinstance(text, str) and text for _, text, _ in rows)
    except UserError as err:
        single_line(err)
    try:
        titles = [title for chunk in read_titles(str(path), import_args(id_column=id_column), 1000) for title in chunk]
        assert all(isinstance(t["description"], str) and t["description"] for t in titles)
    except UserError as err:
        single_line(err)


# %% The batch tool: refusals before Ray starts


def batch(*args):
    return run_script("-m", "genre_tagger.batch", *args)


def test_batch_inputs_and_outputs_refused_before_any_run_or_ray(tmp_path):
    missing_run = tmp_path / "no-run"
    data = tmp_path / "in.csv"
    data.write_text("Description\na heist\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("keep me")
    (mixed / "zero.csv").symlink_to("/dev/zero")
    (mixed / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    output_file = tmp_path / "out-file"
    output_file.write_text("keep me too")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "job.json.bak").write_text("{}")
    cases = [
        (["--input", tmp_path / "*.nothing"], "matches no file"),
        (["--input", "["], "matches no file"),
        (["--input", "/dev/zero"], "matches no file"),
        (["--input", mixed], "holds no .csv, .jsonl or .parquet file"),
        (["--input", mixed / "zero.csv"], "matches no file"),
        (["--input", data, "--output", output_file], "is a file"),
        (["--input", data, "--output", data / "sub"], "--output"),
        (["--input", data, "--output", tmp_path], "is inside --output"),
        (["--input", data, "--output", foreign], "did not write (job.json.bak)"),
        (["--input", data, "--rows-per-shard", "0"], "--rows-per-shard"),
        (["--input", data, "--rows-per-shard", str(10**7 + 1)], "--rows-per-shard"),
        (["--input", data, "--rows-per-shard", "9" * 400], "--rows-per-shard"),
        (["--input", data, "--workers", "-1"], "--workers"),
        (["--input", data, "--workers", "4097"], "--workers"),
        (["--input", data, "--threads-per-worker", "0"], "--threads-per-worker"),
        (["--input", data, "--min-genres", "3", "--max-genres", "2"], "must not exceed"),
    ]
    for args, says in cases:
        if "--output" not in args:
            args = [*args, "--output", tmp_path / "o"]
        one_line_error(batch("--model", missing_run, *args), says)
    assert (mixed / "notes.txt").read_text() == "keep me" and output_file.read_text() == "keep me too"
    assert not (tmp_path / "o").exists() and sorted(p.name for p in foreign.iterdir()) == ["job.json.bak"]


@pytest.mark.parametrize("kind", ["folder", "link", "dangling link"])
@pytest.mark.parametrize("name", ["part-00000-00000.parquet", "summary.json", "job.json"])
def test_batch_output_entries_with_the_tools_names_that_are_not_its_files_are_foreign(tmp_path, name, kind):
    from genre_tagger.batch import check_output_folder

    output = tmp_path / "out"
    output.mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me")
    entry = output / name
    if kind == "folder":
        entry.mkdir()
    else:
        entry.symlink_to(elsewhere if kind == "link" else tmp_path / "nowhere")
    for create in (False, True):
        with pytest.raises(UserError) as caught:
            check_output_folder(output, create=create)
        assert f"did not write ({name})" in single_line(caught.value)
    assert elsewhere.read_text() == "keep me" and [p.name for p in output.iterdir()] == [name]


def _job():
    return {"format_version": 1, "written_by": "genre_tagger.batch", "run_sha256": "ab" * 32, "onnx_variant": "int8",
            "settings": {"format": "parquet"}, "inputs": [{"path": "in.csv"}], "shards": [{"rows": 1}]}  # fmt: skip


@pytest.mark.parametrize(
    "content, says",
    [
        (b"{nope", "is damaged"),
        (b"\xff\xfe{}", "is damaged"),
        (b"[" * 1500 + b"]" * 1500, "is damaged"),  # deeper than Python's recursion limit, shorter than a job
        (b"[1, 2]", "was not written by genre_tagger.batch"),
        (b'{"written_by": 7}', "was not written by genre_tagger.batch"),
        (json.dumps({**_job(), "settings": "parquet"}).encode(), "other settings"),
        (json.dumps({**_job(), "shards": {"rows": 1}}).encode(), "another cut of the inputs"),
        (json.dumps({**_job(), "format_version": "1"}).encode(), "another version of this tool"),
        (b" " * (1 << 24) + json.dumps(_job()).encode(), "far larger than this job's"),
        ("/dev/zero", "far larger than this job's"),
        ("folder", "is damaged"),
    ],
    ids=[
        "not JSON",
        "not UTF-8",
        "too deep",
        "a list",
        "another writer",
        "settings text",
        "shards an object",
        "version text",
        "padded to 16 MB",
        "/dev/zero",
        "a folder",
    ],
)
def test_a_tampered_job_json_is_one_line_and_kept(tmp_path, content, says):
    from genre_tagger.batch import check_or_write_job

    path = tmp_path / "job.json"
    if content == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    before = path.read_bytes()[:100] if path.is_file() and content != "/dev/zero" else None
    with pytest.raises(UserError) as caught:
        check_or_write_job(tmp_path, _job())
    assert says in single_line(caught.value)
    if before is not None:
        assert path.read_bytes()[:100] == before


def test_the_same_job_json_resumes(tmp_path):
    from genre_tagger.batch import check_or_write_job

    assert check_or_write_job(tmp_path, _job()) is False
    assert check_or_write_job(tmp_path, _job()) is True
