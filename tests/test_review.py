"""The review loop (genre_tagger/review.py, review_api.py): the store, its concurrency and crashes, imports,
the API, and (slow) import -> review -> export -> train.py, SIGKILL of serve.py --review, the page in chromium."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import browser, wait_for  # noqa: F401 - the page tests' chromium fixture, reused

from conftest import ROOT, one_line_error, run_script
from genre_tagger import UserError
from genre_tagger.review import SCHEMA_VERSION, AlreadyDecided, NotFound, ReviewStore

LABELS = ["Action", "Comedy", "Drama"]
THRESHOLDS = [0.3, 0.25, 0.4]


def filled_store(path, titles=10):
    """A store with one run and `titles` titles whose uncertainty falls with their number (title 10 first)."""
    store = ReviewStore.open(path)
    run_id = store.add_run("ab" * 32, "a-run", LABELS, THRESHOLDS)
    rows = []
    for i in range(1, titles + 1):
        p = [0.3 + 0.5 * (titles - i) / titles, 0.1, 0.9]
        rows.append(
            {"key": str(i + 1), "title": f"Title {i}", "description": f"Plot number {i}.", "given": ["Drama"],
             "probabilities": p, "suggested": ["Action", "Drama"] if p[0] >= 0.3 else ["Drama"],
             "uncertainty": abs(p[0] - 0.3), "label_quality": i / 100}
        )  # fmt: skip
    assert store.enqueue(run_id, rows) == (titles, 0)
    return store


# %% The store


def test_store_is_created_on_first_use_with_wal_foreign_keys_and_a_version(tmp_path):
    path = tmp_path / "review.sqlite"
    filled_store(path, 3).close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = connection.execute("SELECT value FROM review_meta WHERE name = 'schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION
        foreign_keys = connection.execute("PRAGMA foreign_key_list(decisions)").fetchall()
        assert {row[2] for row in foreign_keys} == {"items", "runs", "decisions"}
    with ReviewStore.open(path) as store:  # reopened, not recreated
        assert store.progress() == {"titles": 3, "decided": 0, "accepted": 0, "skipped": 0, "left": 3}
        with store.transaction() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_decisions_are_recorded_against_the_suggestion_and_never_changed(tmp_path):
    store = filled_store(tmp_path / "review.sqlite")
    first = store.next_item("uncertain")
    assert first["key"] == "11" and first["version"] is None and first["decision"] is None
    assert [c["genre"] for c in first["candidates"]][:2] == ["Drama", "Action"]  # suggested first, most probable
    decision, item, repeated = store.decide(first["id"], "accept", "ann", ["Comedy", "Drama"])
    assert decision["added"] == ["Comedy"] and decision["removed"] == ["Action"] and not repeated
    assert decision["genres"] == ["Comedy", "Drama"] and item["version"] == decision["id"]
    assert store.next_item("uncertain")["key"] == "10"  # the queue moved on
    assert store.next_item("import")["key"] == "2"
    assert store.next_item("audit")["key"] == "2"  # lowest label quality first
    with pytest.raises(AlreadyDecided, match="already decided .*accept by ann"):
        store.decide(first["id"], "skip", "bob")
    with pytest.raises(AlreadyDecided, match="changed since version 0"):
        store.decide(first["id"], "skip", "bob", seen=0)
    with pytest.raises(UserError, match="genres the run does not tag: Western"):
        store.decide(2, "accept", "ann", ["Western"])
    with pytest.raises(NotFound):
        store.decide(999, "accept", "ann")
    # undo: the decision before stands again (here: none), and is itself a decision
    _, item, _ = store.decide(first["id"], "undo", "ann", seen=item["version"])
    assert item["decision"] is None and store.next_item("uncertain")["id"] == first["id"]
    assert [d["action"] for d in store.decisions(first["id"])] == ["accept", "undo"]
    # a retried request is not decided twice
    once = store.decide(first["id"], "skip", "ann", request_id="r-1")
    again = store.decide(first["id"], "skip", "ann", request_id="r-1")
    assert again[2] and again[0] == once[0] and len(store.decisions(first["id"])) == 3
    assert store.progress() == {"titles": 10, "decided": 1, "accepted": 0, "skipped": 1, "left": 9}
    store.close()
    with sqlite3.connect(tmp_path / "review.sqlite") as connection:  # append-only, in the database itself
        for statement in ("UPDATE decisions SET reviewer = 'eve'", "DELETE FROM decisions"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                connection.execute(statement)


WRITER = textwrap.dedent(
    """
    import json, sys
    from genre_tagger.review import AlreadyDecided, ReviewStore
    store = ReviewStore.open(sys.argv[1])
    outcomes = {}
    print("ready", flush=True)
    sys.stdin.readline()  # both writers start together
    for item_id in range(1, int(sys.argv[3]) + 1):
        try:
            store.decide(item_id, "accept", sys.argv[2])
            outcomes[item_id] = "decided"
        except AlreadyDecided as err:
            outcomes[item_id] = str(err)
    print(json.dumps(outcomes), flush=True)
    """
)


def test_two_concurrent_writers_each_title_decided_once_and_the_later_told(tmp_path):
    path = tmp_path / "review.sqlite"
    filled_store(path, 60).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, "60"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("ann", "bob")
    ]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outcomes = [json.loads(writer.communicate(timeout=120)[0]) for writer in writers]
    with ReviewStore.open(path) as store:
        decisions = store.decisions()
    assert len(decisions) == 60 and len({d["item_id"] for d in decisions}) == 60  # each title exactly once
    winner = {d["item_id"]: d["reviewer"] for d in decisions}
    for name, outcome in zip(("ann", "bob"), outcomes):
        for item_id, said in outcome.items():
            if winner[int(item_id)] == name:
                assert said == "decided"
            else:  # the later one sees who decided first
                assert said.startswith(f"title {item_id} was already decided (accept by {winner[int(item_id)]}")


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from genre_tagger.review import ReviewStore
    store = ReviewStore.open(sys.argv[1])
    with store.transaction() as connection:  # a write left open: the kill lands before its COMMIT
        connection.exec_driver_sql("UPDATE items SET title = 'half-written' WHERE id = 1")
        print("open", flush=True)
        sys.stdin.readline()
    """
)

DECIDING_WRITER = textwrap.dedent(
    """
    import sys
    from genre_tagger.review import ReviewStore
    store = ReviewStore.open(sys.argv[1])
    for item_id in range(1, 10_000):
        decision, _, _ = store.decide(item_id, "accept", "ann", request_id=f"r{item_id}")
        print(decision["id"], flush=True)  # acknowledged: committed
    """
)


def test_a_kill_in_the_middle_of_a_write_loses_only_what_was_not_committed(tmp_path):
    path = tmp_path / "review.sqlite"
    filled_store(path, 400).close()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert writer.stdout.readline().strip() == "open"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer = subprocess.Popen([sys.executable, "-c", DECIDING_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    acknowledged = [int(writer.stdout.readline()) for _ in range(40)]
    writer.send_signal(signal.SIGKILL)  # in the middle of its stream of writes
    writer.wait()
    acknowledged += [int(line) for line in writer.stdout.read().split()]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ReviewStore.open(path) as store:
        assert store.item(1)["title"] == "Title 1"  # the uncommitted write left nothing
        stored = {d["id"] for d in store.decisions()}
        assert set(acknowledged) <= stored and len(stored) <= len(acknowledged) + 1
        for item_id in range(1, len(stored) + 1):  # the decided titles are those it acknowledged, in order
            assert store.item(item_id)["decision"]["request_id"] == f"r{item_id}"
        store.decide(400, "skip", "bob")  # the killed writers left no lock behind


# The schema of version 1 as it was written: decisions had no request_id.
SCHEMA_V1 = """
CREATE TABLE review_meta (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, origin TEXT NOT NULL,
  labels TEXT NOT NULL, thresholds TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "key" TEXT NOT NULL UNIQUE, title TEXT,
  description TEXT NOT NULL, given TEXT, run_id INTEGER NOT NULL REFERENCES runs (id), probabilities TEXT NOT NULL,
  suggested TEXT NOT NULL, uncertainty FLOAT NOT NULL, label_quality FLOAT, position INTEGER NOT NULL,
  imported_at TEXT NOT NULL, current_id INTEGER, version INTEGER);
CREATE TABLE decisions (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, item_id INTEGER NOT NULL REFERENCES items (id),
  action TEXT NOT NULL CHECK (action IN ('accept', 'skip', 'undo')), genres TEXT, added TEXT, removed TEXT,
  reviewer TEXT NOT NULL, decided_at TEXT NOT NULL, run_id INTEGER NOT NULL REFERENCES runs (id),
  replaces INTEGER REFERENCES decisions (id));
INSERT INTO review_meta VALUES ('schema_version', '1');
INSERT INTO runs VALUES (1, 'cd', 'old-run', '["Action", "Drama"]', '[0.3, 0.4]', '2026-11-01T00:00:00Z');
INSERT INTO items VALUES (1, '2', 'Old', 'An old plot.', NULL, 1, '[0.5, 0.2]', '["Action"]', 0.2, NULL, 1,
  '2026-11-01T00:00:00Z', 1, 1);
INSERT INTO items VALUES (2, '3', 'Other', 'Another plot.', NULL, 1, '[0.1, 0.9]', '["Drama"]', 0.2, NULL, 2,
  '2026-11-01T00:00:00Z', NULL, NULL);
INSERT INTO decisions VALUES (1, 1, 'accept', '["Action"]', '[]', '[]', 'ann', '2026-11-01T00:00:01Z', 1, NULL);
"""


def test_a_store_of_the_previous_schema_version_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_V1)
    with ReviewStore.open(path) as store:
        assert store.item(1)["decision"]["reviewer"] == "ann"  # kept
        store.decide(2, "accept", "bob", request_id="new")
        assert store.decide(2, "accept", "bob", request_id="new")[2]  # the new column works
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM review_meta").fetchone()[0] == str(SCHEMA_VERSION)
        assert connection.execute("SELECT count(*) FROM decisions").fetchone()[0] == 2


def test_stores_it_cannot_use_are_one_line_errors(tmp_path):
    newer = tmp_path / "newer.sqlite"
    filled_store(newer, 1).close()
    with sqlite3.connect(newer) as connection:
        connection.execute("UPDATE review_meta SET value = '99'")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database\n")
    for db, says in (
        (newer, "schema version 99, newer than"),
        (other, "holds other tables (photos) and is not a review store"),
        (text, "is not a SQLite database"),
        (tmp_path, "is a folder"),
        (tmp_path / "missing" / "r.sqlite", "does not exist"),
        (tmp_path / "never-imported.sqlite", "does not exist; import titles into it first"),
        ("nosuchdb://x", "is not a database URL"),
    ):
        one_line_error(run_script("-m", "genre_tagger.review", "status", "--db", db), says)
    assert text.read_text() == "not a database\n"  # never overwritten
    assert not (tmp_path / "never-imported.sqlite").exists()


# %% Importing titles


@pytest.mark.parametrize(
    "name, content, flags, says",
    [
        ("new.csv", "Title,Description\nA,\n", [], "row 2 has no 'Description'"),
        ("new.csv", "Title,Plot\nA,b\n", [], "has no column 'Description'"),
        ("new.csv", 'Title,Description\nA,"open quote\n', [], "not valid CSV"),
        ("new.csv", "Title,Description\nA,x,y\n", [], "row 2 has 3 fields"),
        ("new.csv", "id,Description\n7,a\n7,b\n", ["--id-column", "id"], "repeats the id '7'"),
        ("new.csv", "Description\na\n", ["--id-column", "id"], "has no column 'id'"),
        ("new.csv", "Title,Description\n", [], "has no titles to import"),
        ("new.csv", b"Title,Description\nA,\xff\xfe\n", [], "not UTF-8"),
        ("new.jsonl", '{"Description": "a"}\n[1, 2]\n', [], "line 2 is not a JSON object"),
        ("new.jsonl", '{"Description": "a"}\n{"Description": 5e999}\n', [], "row 2: 'Description' must be text"),
        ("new.jsonl", '{"Description": {"nested": 1}}\n', [], "must be text"),
        ("new.jsonl", '{"Description": "a\\u0000b"}\n', [], "NUL"),
        ("new.jsonl", "{nope\n", [], "line 1 is not JSON"),
    ],
)
def test_a_malformed_import_is_one_line_and_stores_nothing(tmp_path, name, content, flags, says):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    db = tmp_path / "review.sqlite"
    result = run_script("-m", "genre_tagger.review", "import", "--db", db, "--model", tmp_path / "no-run",
                        "--input", source, *flags)  # fmt: skip
    one_line_error(result, says)
    assert not db.exists()  # refused before the store was created or a model loaded


def test_parquet_titles_are_read_in_chunks_and_a_broken_file_is_one_line(tmp_path):
    import argparse

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from genre_tagger.review import read_titles

    path = tmp_path / "new.parquet"
    table = pa.table({"id": [7, 8], "Title": ["A", None], "Description": ["  A   plot. ", "Another plot."],
                      "Genre": [["Drama", "Crime"], ["Comedy"]]})  # fmt: skip
    pq.write_table(table, path)
    args = argparse.Namespace(input_format="auto", text_column="Description", id_column="id", title_column="Title",
                              label_column="Genre")  # fmt: skip
    (titles,) = list(read_titles(str(path), args, 1000))
    assert [t["key"] for t in titles] == ["7", "8"] and titles[0]["description"] == "A plot."
    assert titles[0]["given"] == ["Drama", "Crime"] and titles[1]["title"] is None
    args.text_column = "Plot"
    with pytest.raises(UserError, match="has no column 'Plot'"):
        list(read_titles(str(path), args, 1000))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    result = run_script("-m", "genre_tagger.review", "import", "--db", tmp_path / "r.sqlite", "--model", "x",
                        "--input", broken)  # fmt: skip
    one_line_error(result, "not a readable Parquet file")


def test_bad_flags_and_outputs_are_one_line_errors(tmp_path):
    db = tmp_path / "review.sqlite"
    filled_store(db, 2).close()
    existing = tmp_path / "old.csv"
    existing.write_text("keep me\n")
    source = tmp_path / "new.csv"
    source.write_text("Description\na plot\n")
    for args, says in (
        (["import", "--db", db, "--model", "x", "--input", source, "--batch-size", "0"], "--batch-size must be"),
        (["import", "--db", db, "--model", "x", "--input", source, "--batch-size", "9" * 400], "--batch-size must be"),
        (["import", "--db", db, "--model", "x", "--input", source, "--threads", "²"], "--threads must be"),
        (["export", "--db", db, "--output", existing], "already exists"),
        (["export", "--db", db, "--output", tmp_path / "out.txt"], "must end in .csv"),
        (["export", "--db", db, "--output", db.with_suffix(".csv"), "--format", "json"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["import", "--db", tmp_path / "new.sqlite", "--model", source, "--input", source], "neither a run folder"),
    ):
        one_line_error(run_script("-m", "genre_tagger.review", *args), says)
    assert existing.read_text() == "keep me\n"
    assert not (tmp_path / "new.sqlite").exists()  # a bad run leaves no empty store behind


def test_export_writes_the_relabel_format_or_a_labelled_csv(tmp_path):
    from genre_tagger.data import read_csv

    db = tmp_path / "review.sqlite"
    with filled_store(db, 4) as store:
        store.decide(1, "accept", "ann", ["Comedy"])
        store.decide(2, "skip", "ann")
        store.decide(3, "accept", "=cmd|' /C calc'!A0")  # a reviewer name that looks like a formula
    relabel, labelled = tmp_path / "fixes.csv", tmp_path / "reviewed.csv"
    assert run_script("-m", "genre_tagger.review", "export", "--db", db, "--output", relabel).returncode == 0
    assert run_script("-m", "genre_tagger.review", "export", "--db", db, "--output", labelled, "--format",
                      "labelled").returncode == 0  # fmt: skip
    fixes = read_csv(relabel)
    assert fixes["row"].tolist() == ["2", "4"] and fixes["genres"].tolist() == ["Comedy", "Action,Drama"]
    assert fixes["reviewer"].tolist()[1].startswith("'=")  # spreadsheet-safe
    reviewed = read_csv(labelled)
    assert reviewed["Description"].tolist() == ["Plot number 1.", "Plot number 3."]
    assert reviewed["Genre"].tolist() == ["Comedy", "Action,Drama"]


def test_the_label_audits_scores_are_read_range_checked(tmp_path):
    from genre_tagger.review import read_audit_scores

    audit = tmp_path / "audit.csv"
    audit.write_text("row,title,label_quality\n5,A,0.25\n3,B,1\n")
    assert read_audit_scores(audit) == {"5": 0.25, "3": 1.0}
    for rows, says in (
        ("x,A,0.2", "line 2: 'row' must be a whole number between 2 and"),
        ("9" * 30 + ",A,0.2", "'row' must be a whole number"),
        ("²,A,0.2", "'row' must be a whole number"),
        ("5,A,1.5", "line 2: 'label_quality' must be a number between 0 and 1, not 1.5"),
        ("5,A,nan", "'label_quality' must be a number between 0 and 1, not nan"),
        ("5,A," + "9" * 400, r"'label_quality' must be a number between 0 and 1, not 9{100}\.\.\. \(400 characters\)$"),
    ):
        audit.write_text(f"row,title,label_quality\n{rows}\n")
        with pytest.raises(UserError, match=says):
            read_audit_scores(audit)
    audit.write_text("row,score\n5,0.2\n")
    with pytest.raises(UserError, match="no column 'label_quality'"):
        read_audit_scores(audit)


# %% The API, on a fake tagger (no trained run)


class FakeTagger:
    max_length = 8

    def probabilities(self, texts, batch_size):
        return np.full((len(texts), len(LABELS)), 0.5, dtype=np.float32)


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from genre_tagger.serving import ServedRun, create_app

    description = {"run": "fake", "base_model": "fake", "genres": 3, "onnx_variant": "int8", "model_sha256": "0" * 64}
    description.update(max_tokens=8, verified=True, metrics={}, settings={})
    run = ServedRun(LABELS, {"default": THRESHOLDS}, {}, description, FakeTagger())
    store = filled_store(tmp_path / "review.sqlite", 5)
    with TestClient(create_app(run, review=store)) as client:
        yield client
    store.close()


def test_api_next_decide_conflict_undo_and_progress(api):
    answer = api.get("/v1/review/next").json()
    item = answer["item"]
    assert answer["progress"]["left"] == 5 and answer["strategy"] == "uncertain" and item["key"] == "6"
    assert api.get("/v1/review/next", params={"strategy": "import", "exclude": "1,2"}).json()["item"]["id"] == 3
    body = {"reviewer": "ann", "action": "accept", "genres": ["Drama"], "version": None, "request_id": "a1"}
    first = api.post(f"/v1/review/{item['id']}", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["decision"]["removed"] == ["Action"] and first.json()["progress"]["decided"] == 1
    again = api.post(f"/v1/review/{item['id']}", json=body)  # a retry: the same decision, not a second
    assert (
        again.status_code == 200 and again.json()["repeated"] and again.json()["decision"] == first.json()["decision"]
    )
    late = api.post(f"/v1/review/{item['id']}", json={**body, "request_id": "b1", "reviewer": "bob"})
    assert late.status_code == 409 and "changed since version None" in late.json()["error"]
    assert late.json()["item"]["decision"]["reviewer"] == "ann"  # the later one sees what stands
    version = first.json()["item"]["version"]
    undone = api.post(f"/v1/review/{item['id']}", json={"reviewer": "ann", "action": "undo", "version": version})
    assert undone.status_code == 200 and undone.json()["item"]["decision"] is None
    shown = api.get(f"/v1/review/{item['id']}").json()
    assert [d["action"] for d in shown["decisions"]] == ["accept", "undo"]
    assert api.get("/v1/review/next").json()["item"]["id"] == item["id"]  # back in the queue


@pytest.mark.parametrize(
    "path, body, status, says",
    [
        ("/v1/review/1", {"reviewer": "ann", "action": "accept", "genres": ["Western"]}, 422, "does not tag: Western"),
        ("/v1/review/1", {"reviewer": "ann", "action": "maybe"}, 422, "action"),
        ("/v1/review/1", {"reviewer": "", "action": "skip"}, 422, "reviewer must be non-empty"),
        ("/v1/review/1", {"reviewer": "a\u0000b", "action": "skip"}, 422, "control character"),
        ("/v1/review/1", {"reviewer": "x" * 101, "action": "skip"}, 422, "at most 100"),
        ("/v1/review/1", {"reviewer": "ann", "action": "skip", "version": 10**400}, 422, "version"),
        ("/v1/review/1", {"reviewer": "ann", "action": "skip", "version": -1}, 422, "version"),
        ("/v1/review/1", {"reviewer": "ann", "action": "skip", "version": "3"}, 422, "version"),
        ("/v1/review/1", {"reviewer": "ann", "action": "skip", "colour": "red"}, 422, "unknown field"),
        ("/v1/review/1", {"reviewer": "ann", "action": "undo"}, 409, "no decision standing to undo"),
        ("/v1/review/1", [1, 2], 422, "must be a JSON object"),
        ("/v1/review/999", {"reviewer": "ann", "action": "skip"}, 404, "no title 999"),
        (f"/v1/review/{10**30}", {"reviewer": "ann", "action": "skip"}, 422, "item_id"),
        ("/v1/review/abc", {"reviewer": "ann", "action": "skip"}, 422, "item_id"),
    ],
)
def test_api_refusals_are_4xx_json(api, path, body, status, says):
    response = api.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_api_refuses_bodies_that_are_not_json_and_bad_queries(api):
    for content, headers, status in (
        (b"{nope", {"content-type": "application/json"}, 422),
        (b'{"reviewer": "\xff"}', {"content-type": "application/json"}, 422),
        (b"reviewer=ann", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b"[" * 100_000 + b"]" * 100_000, {"content-type": "application/json"}, 422),
    ):
        response = api.post("/v1/review/1", content=content, headers=headers)
        assert response.status_code == status and "error" in response.json()
    assert api.get("/v1/review/next", params={"strategy": "random"}).status_code == 422
    assert api.get("/v1/review/next", params={"exclude": "1,x"}).status_code == 422
    assert api.get("/v1/review/next", params={"exclude": "9" * 30}).status_code == 422
    assert api.get("/v1/review/next", params={"exclude": ",".join(map(str, range(1, 200)))}).status_code == 422


def test_api_is_in_the_docs_and_the_page_is_served(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/review/next", "/v1/review/{item_id}"} <= set(paths)
    assert "version" in json.dumps(paths["/v1/review/{item_id}"]["post"]["requestBody"])
    page = api.get("/review")
    assert page.status_code == 200 and "not a login" in page.text
    for asset in ("/static/review.js", "/static/review.css"):
        assert api.get(asset).status_code == 200


def test_without_review_there_is_no_review_api(tmp_path):
    from fastapi.testclient import TestClient

    from genre_tagger.serving import ServedRun, create_app

    description = {"run": "fake", "base_model": "fake", "genres": 3, "onnx_variant": "int8", "model_sha256": "0" * 64}
    description.update(max_tokens=8, verified=True, metrics={}, settings={})
    run = ServedRun(LABELS, {"default": THRESHOLDS}, {}, description, FakeTagger())
    with TestClient(create_app(run)) as client:
        assert client.get("/v1/review/next").status_code == 404


# %% Fuzzing (hypothesis): decision bodies and import files

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ODD_TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from(list("\ud800\x00\x1b\x85\n\t")), max_size=120)
DECISION_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "reviewer": ODD_TEXT | JSON_VALUES,
        "action": st.sampled_from(["accept", "skip", "undo", "ACCEPT", ""]) | JSON_VALUES,
        "genres": st.lists(st.sampled_from(LABELS) | ODD_TEXT, max_size=4) | JSON_VALUES,
        "version": st.integers() | JSON_VALUES,
        "request_id": ODD_TEXT | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
RAW_BODIES = (
    DECISION_BODIES.map(lambda body: json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    | JSON_VALUES.map(lambda body: json.dumps(body).encode())
    | st.binary(max_size=100)
)


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory):
    from fastapi.testclient import TestClient

    from genre_tagger.serving import ServedRun, create_app

    description = {"run": "fake", "base_model": "fake", "genres": 3, "onnx_variant": "int8", "model_sha256": "0" * 64}
    description.update(max_tokens=8, verified=True, metrics={}, settings={})
    run = ServedRun(LABELS, {"default": THRESHOLDS}, {}, description, FakeTagger())
    store = filled_store(tmp_path_factory.mktemp("fuzz") / "review.sqlite", 5)
    with TestClient(create_app(run, review=store), raise_server_exceptions=False) as client:
        yield client, store
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=RAW_BODIES, item_id=st.sampled_from(["1", "2", "5", "6", "0", "-1", "1e3", "99999999999999999999"]))
def test_arbitrary_decision_bodies_never_get_a_5xx(fuzzed_api, body, item_id):
    client, store = fuzzed_api
    response = client.post(f"/v1/review/{item_id}", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 404, 409, 422), (body[:300], response.text[:300])
    assert ("decision" if response.status_code == 200 else "error") in response.json()
    for item in range(1, 6):  # whatever was accepted, the store stays consistent: what stands is a decision of it
        shown = store.item(item)["decision"]
        assert shown is None or shown["item_id"] == item


IMPORT_ALPHABET = st.sampled_from(list('abc ,"\n\r\t\x00é🎬=-{}[]:12'))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.text(IMPORT_ALPHABET, max_size=200) | st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    fmt=st.sampled_from(["csv", "jsonl"]),
    header=st.sampled_from(["Title,Description\n", "id,Description,Genre\n", ""]),
    id_column=st.sampled_from([None, "id"]),
)
def test_arbitrary_import_files_give_titles_or_one_clean_error(tmp_path_factory, content, fmt, header, id_column):
    import argparse

    from genre_tagger.review import read_titles

    path = tmp_path_factory.mktemp("import") / f"new.{fmt}"
    path.write_bytes((header + content).encode("utf-8", "surrogatepass"))
    args = argparse.Namespace(input_format=fmt, text_column="Description", id_column=id_column,
                              title_column="Title", label_column="Genre")  # fmt: skip
    try:
        chunks = list(read_titles(str(path), args, 1000))
    except UserError as err:
        assert "\n" not in str(err).strip()
        return
    titles = [title for chunk in chunks for title in chunk]
    assert titles and len({title["key"] for title in titles}) == len(titles)
    for title in titles:
        assert title["description"].strip() and len(title["description"]) <= 1000
        assert "\x00" not in title["description"]


# %% With a trained run (slow): import -> review -> export -> train.py


@pytest.fixture(scope="module")
def labelled_rows(tmp_path_factory, imdb_csv):
    """The first 260 rows of the real data (with Rank, Title, Genre), as a CSV to import."""
    from genre_tagger.data import read_csv

    folder = tmp_path_factory.mktemp("review-input")
    frame = read_csv(imdb_csv).head(260)
    path = folder / "new.csv"
    frame.to_csv(path, index=False)
    return path


def test_import_review_export_and_train_on_the_corrections(trained, labelled_rows, imdb_csv, tmp_path):
    from genre_tagger.review import uncertainty
    from genre_tagger.run import Run

    db = tmp_path / "review.sqlite"
    result = run_script("-m", "genre_tagger.review", "import", "--db", db, "--model", trained["output"], "--input",
                        labelled_rows)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "enqueued 260 title(s)" in result.stdout
    again = run_script("-m", "genre_tagger.review", "import", "--db", db, "--model", trained["zip"], "--input",
                       labelled_rows)  # fmt: skip
    assert again.returncode == 0 and "enqueued 0 title(s)" in again.stdout and "260 title(s) already" in again.stderr
    with Run.open(trained["output"]) as run:
        thresholds = run.thresholds_for("default")
    with ReviewStore.open(db) as store:
        first = store.next_item("uncertain")
        by_import = store.next_item("import")
        assert by_import["key"] == "2" and by_import["given"] is not None
        stored = [store.item(i) for i in range(1, 261)]
    tagged = tmp_path / "tagged.jsonl"  # the same tagging code as predict.py --input: the same numbers
    assert run_script("predict.py", "--model", trained["output"], "--input", labelled_rows, "--output",
                      tagged).returncode == 0  # fmt: skip
    for item, line in zip(stored, tagged.read_text().splitlines()):
        expected = json.loads(line)
        assert item["description"] == expected["description"]
        assert sorted(item["suggested"]) == sorted(g["genre"] for g in expected["genres"])
        for candidate in item["candidates"]:
            assert candidate["probability"] == pytest.approx(expected["probabilities"][candidate["genre"]], abs=1.01e-4)
    with ReviewStore.open(db) as store:
        assert first["uncertainty"] == min(item["uncertainty"] for item in stored)  # nearest a threshold first
        expected = json.loads(tagged.read_text().splitlines()[first["id"] - 1])["probabilities"]
        row = [expected[label] for label in first["genres"]]
        assert first["uncertainty"] == pytest.approx(uncertainty([row], thresholds)[0], abs=2e-4)
        assert store.next_item("audit")["label_quality"] is not None
        kept = 0  # titles left with a genre (one whose genres the run lacks is exported as nothing)
        for _ in range(60):  # "review" 60 titles by the queue, fixing their genres to the data's
            item = store.next_item("uncertain")
            genres = [g for g in item["genres"] if g in item["given"]]
            store.decide(item["id"], "accept", "ann", genres)
            kept += bool(genres)
    fixes = tmp_path / "fixes.csv"
    exported = run_script("-m", "genre_tagger.review", "export", "--db", db, "--output", fixes)
    assert exported.returncode == 0, exported.stderr
    output = tmp_path / "run"
    trained_again = run_script(
        "train.py", "--data", imdb_csv, "--limit", "260", "--model", trained["base"], "--epochs", "1",
        "--batch-size", "16", "--relabel", fixes, "--output", output, "--checkpoint-dir", tmp_path / "ck",
    )  # fmt: skip
    assert trained_again.returncode == 0, trained_again.stderr[-3000:]
    config = json.loads((output / "train_config.json").read_text())
    record = json.dumps(config)
    from genre_tagger.common import sha256_of

    assert sha256_of(fixes) in record and f'"rows_named": {kept}' in record
    labelled = tmp_path / "reviewed.csv"
    exported = run_script("-m", "genre_tagger.review", "export", "--db", db, "--output", labelled, "--format",
                          "labelled")  # fmt: skip
    assert exported.returncode == 0 and f"exported {kept} reviewed title(s)" in exported.stdout
    from genre_tagger.data import load_labelled_csv

    movies, _ = load_labelled_csv(labelled)  # what train.py --data reads
    assert len(movies) == kept > 50 and all(movies["labels"])


# %% SIGKILL of serve.py --review during a burst of decisions (slow)


def start_server(model, db, port):
    import httpx

    process = subprocess.Popen(
        [sys.executable, "serve.py", "--model", str(model), "--port", str(port), "--review", str(db)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("serve.py --review did not become ready")


def test_sigkill_during_200_decisions_from_4_clients_loses_no_acknowledged_decision(trained, labelled_rows, tmp_path):
    import httpx

    from conftest import free_port

    db = tmp_path / "review.sqlite"
    result = run_script("-m", "genre_tagger.review", "import", "--db", db, "--model", trained["output"], "--input",
                        labelled_rows)  # fmt: skip
    assert result.returncode == 0, result.stderr
    port = free_port()
    server = start_server(trained["output"], db, port)
    planned = {item_id: f"burst-{item_id}-{uuid.uuid4()}" for item_id in range(1, 201)}
    acknowledged, lock = {}, threading.Lock()

    def client(number):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for item_id in list(planned)[number::4]:
                body = {"reviewer": f"client-{number}", "action": "accept", "request_id": planned[item_id]}
                try:
                    response = http.post(f"/v1/review/{item_id}", json=body)
                except httpx.TransportError:
                    return  # the server was killed
                assert response.status_code == 200, response.text
                with lock:
                    acknowledged[item_id] = response.json()["decision"]["id"]

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.send_signal(signal.SIGKILL)
    server.wait()
    for thread in clients:
        thread.join(60)
    assert 60 <= len(acknowledged) < 200, len(acknowledged)
    server = start_server(trained["output"], db, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for item_id, decision_id in acknowledged.items():
                shown = http.get(f"/v1/review/{item_id}").json()
                assert [d["id"] for d in shown["decisions"]] == [decision_id]
            unanswered = 0  # committed when the server was killed, before its answer left: at most one per client
            for item_id, request_id in planned.items():  # every client retries all 200: nothing is decided twice
                body = {"reviewer": "retry", "action": "accept", "request_id": request_id}
                response = http.post(f"/v1/review/{item_id}", json=body)
                assert response.status_code == 200, response.text
                if item_id in acknowledged:
                    assert response.json()["repeated"]
                    assert response.json()["decision"]["id"] == acknowledged[item_id]
                else:
                    unanswered += response.json()["repeated"]
            assert unanswered <= 4
            assert http.get("/v1/review/next").json()["progress"]["decided"] == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    with ReviewStore.open(db) as store:
        decisions = store.decisions()
    assert len(decisions) == 200 and len({d["request_id"] for d in decisions}) == 200
    assert len({d["item_id"] for d in decisions}) == 200


# %% The page in a real browser (slow)


def card_id(driver):
    from selenium.webdriver.common.by import By

    card = driver.find_element(By.ID, "card")
    return None if card.get_attribute("hidden") else int(card.get_attribute("data-id"))


def test_review_page_by_keyboard_survives_a_restart_and_the_queue_moves_on(
    trained,
    labelled_rows,
    tmp_path,
    browser,  # noqa: F811 - the fixture imported above
):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from conftest import free_port

    db, port = tmp_path / "review.sqlite", free_port()
    result = run_script("-m", "genre_tagger.review", "import", "--db", db, "--model", trained["output"], "--input",
                        labelled_rows)  # fmt: skip
    assert result.returncode == 0, result.stderr
    server = start_server(trained["output"], db, port)
    try:
        browser.get(f"http://127.0.0.1:{port}/review")
        wait_for(browser, lambda d: card_id(d) is not None)
        keys = ActionChains(browser)  # typed into whatever has the focus, as a person types
        keys.send_keys("a").perform()  # no name yet: nothing is decided, the name field asks for one
        wait_for(browser, lambda d: "Type your name first" in d.find_element(By.ID, "error").text)
        name = browser.find_element(By.ID, "reviewer")
        name.send_keys("ann", Keys.ENTER)
        reviewed = []
        first_toggle = None
        for key in ("1a", "x", "a"):  # toggle the first genre and accept; skip; accept as suggested
            shown = card_id(browser)
            reviewed.append(shown)
            if key == "1a":
                first_toggle = browser.find_element(By.CSS_SELECTOR, "#toggles li").get_attribute("data-genre")
            for k in key:
                keys.send_keys(k).perform()
            wait_for(browser, lambda d, shown=shown: card_id(d) not in (None, shown))
        keys.send_keys(Keys.BACKSPACE).perform()  # undo the last: its title comes back
        wait_for(browser, lambda d: card_id(d) == reviewed[-1])
        keys.send_keys("a").perform()
        wait_for(browser, lambda d: card_id(d) not in (None, reviewed[-1]))
        wait_for(browser, lambda d: d.find_element(By.ID, "progress").get_attribute("data-decided") == "3")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    server = start_server(trained["output"], db, port)
    try:
        browser.get(f"http://127.0.0.1:{port}/review")
        wait_for(browser, lambda d: card_id(d) is not None)
        assert card_id(browser) not in reviewed  # the queue moved on
        assert browser.find_element(By.ID, "progress").get_attribute("data-decided") == "3"
        decisions = [httpx.get(f"http://127.0.0.1:{port}/v1/review/{i}").json() for i in reviewed]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    first, second, third = decisions
    assert [d["action"] for d in first["decisions"]] == ["accept"]
    accepted = first["decisions"][0]
    assert (first_toggle in accepted["removed"]) != (first_toggle in accepted["added"])  # key 1 changed it
    assert accepted["reviewer"] == "ann"
    assert [d["action"] for d in second["decisions"]] == ["skip"]
    assert [d["action"] for d in third["decisions"]] == ["accept", "undo", "accept"]
    assert sorted(third["item"]["decision"]["genres"]) == sorted(third["item"]["suggested"])
