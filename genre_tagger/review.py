"""The review loop: titles tagged by a run wait in a review store for a person to confirm or fix them.

    python -m genre_tagger.review import --db review.sqlite --model RUN --input new.csv
    python serve.py --model RUN --review review.sqlite          # the page at /review, the API under /v1/review
    python -m genre_tagger.review export --db review.sqlite --output corrections.csv
    python train.py --relabel corrections.csv                    # or --data, with --format labelled

The store is a database reached through SQLAlchemy Core: a SQLite file by default (created on first use,
WAL journal, foreign keys on, every commit synced to disk), or any SQLAlchemy URL (`postgresql://...`).
It holds the runs that made suggestions (their sha256), the titles with their suggested genres and every
genre's probability, and the reviewers' decisions. Decisions are append-only: a decision is never changed
or deleted (SQLite triggers refuse it), an undo is a decision of its own. Each title caches which decision
stands (`current_id`) and the last decision made on it (`version`), written in the same transaction.

Two reviewers deciding one title at once: the writes are serialised (SQLite's write lock, taken at the
start of the transaction; elsewhere a row lock on the title), the first to commit wins and the second is
told it was already decided (`AlreadyDecided`, HTTP 409), with the decision that stands. A decision is
acknowledged only after its COMMIT; a client's `request_id` makes a retried request return the decision it
already made instead of a second one.

The queue: `uncertain` orders titles by how close their most uncertain genre is to that genre's default
threshold on the calibrated scale (the active-learning order), `audit` by label quality (lowest first:
the label audit's suspects; for titles imported with their genres), `import` by import order.
"""

import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser
from genre_tagger.common import first_line, note, printable, spreadsheet_safe
from genre_tagger.settings import bounded_float, bounded_int, row_number, threads

SCHEMA_VERSION = 2  # 1: no request ids; 2: decisions.request_id, unique (retries are not decided twice)
STRATEGIES = ("uncertain", "audit", "import")
ACTIONS = ("accept", "skip", "undo")
MAX_KEY_CHARS = 200  # an imported title's id
MAX_TITLE_CHARS = 500
MAX_REVIEWER_CHARS = 100
MAX_REQUEST_ID_CHARS = 100
MAX_DB_ID = 2**63 - 1  # SQL's BIGINT: ids and versions past it are refused where they are parsed
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another's write lock before giving up
AUDIT_ROWS_AT_MOST = 10**18  # an audit row id past this is no row of any CSV that can be imported
CANDIDATES = 9  # genres offered as toggles (keys 1-9), the suggested ones and then the most probable
IMPORT_CHUNK_ROWS = (
    2048  # rows read, tagged and stored at a time (one transaction each), as predict.py --input tags them
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class StoreUnavailable(UserError):
    """The database could not be reached or stayed locked past BUSY_TIMEOUT_MS (HTTP 503: retry)."""


class StoreGone(UserError):
    """The SQLite file the store was opened from was deleted or replaced since (HTTP 410): writing on would write
    into a file no one can open again."""


class StoreDamaged(UserError):
    """A row of the store holds what this code never writes there (edited or corrupted by hand)."""


class NotFound(UserError):
    """No title with this id in the store (HTTP 404)."""


class AlreadyDecided(UserError):
    """The title changed since the client saw it: another decision came first (HTTP 409). `.item` is the title now."""

    def __init__(self, message, item):
        super().__init__(message)
        self.item = item


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def text_problem(value, what, limit):
    """Why a reviewer name, id or title cannot be stored as it is, or None."""
    if not isinstance(value, str) or not value.strip():
        return f"{what} must be non-empty text"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long; at most {limit}"
    if found := _CONTROL.search(value):
        return f"{what} has a control character (U+{ord(found.group()):04X}); use plain text"
    return None


# %% The schema


def _tables(metadata):
    from sqlalchemy import BigInteger, CheckConstraint, Column, Float, ForeignKey, Index, Integer, Table, Text

    key = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid alias must be spelled INTEGER
    Table(
        "review_meta",
        metadata,
        Column("name", Text, primary_key=True),
        Column("value", Text, nullable=False),
    )
    Table(
        "runs",
        metadata,
        Column("id", key, primary_key=True, autoincrement=True),
        Column("sha256", Text, nullable=False, unique=True),
        Column("origin", Text, nullable=False),
        Column("labels", Text, nullable=False),  # JSON list, the model's output order
        Column("thresholds", Text, nullable=False),  # JSON list: each genre's default threshold (calibrated scale)
        Column("added_at", Text, nullable=False),
    )
    Table(
        "items",
        metadata,
        Column("id", key, primary_key=True, autoincrement=True),
        Column("key", Text, nullable=False, unique=True),  # the id it was imported with
        Column("title", Text),
        Column("description", Text, nullable=False),
        Column("given", Text),  # JSON list of the genres the input gave, if any
        Column("run_id", key, ForeignKey("runs.id"), nullable=False),
        Column("probabilities", Text, nullable=False),  # JSON list in the run's label order
        Column("suggested", Text, nullable=False),  # JSON list: the run's default decisions
        Column("uncertainty", Float, nullable=False),  # min over genres of |p - threshold|: lower = less sure
        Column("label_quality", Float),  # with given genres: lower = the genres are more likely wrong
        Column("position", key, nullable=False),  # import order
        Column("imported_at", Text, nullable=False),
        Column("current_id", key),  # the decision that stands (NULL: to review); a cache of the decisions
        Column("version", key),  # the last decision made on it, undo included (NULL: none yet)
    )
    Table(
        "decisions",
        metadata,
        Column("id", key, primary_key=True, autoincrement=True),
        Column("item_id", key, ForeignKey("items.id"), nullable=False),
        Column("action", Text, CheckConstraint("action IN ('accept', 'skip', 'undo')"), nullable=False),
        Column("genres", Text),  # accept: JSON list, the genres as decided
        Column("added", Text),  # accept: JSON list, genres added to the suggestion
        Column("removed", Text),  # accept: JSON list, suggested genres taken away
        Column("reviewer", Text, nullable=False),
        Column("decided_at", Text, nullable=False),
        Column("run_id", key, ForeignKey("runs.id"), nullable=False),  # whose suggestion it decided on
        Column("replaces", key, ForeignKey("decisions.id")),  # the decision that stood before (undo restores it)
        Column("request_id", Text, unique=True),
    )
    Index("items_queue", metadata.tables["items"].c.current_id, metadata.tables["items"].c.uncertainty)
    Index("decisions_item", metadata.tables["decisions"].c.item_id)
    return metadata


# SQLite only: the database itself refuses to change or delete a decision.
_APPEND_ONLY = (
    "CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions "
    "BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions "
    "BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END",
)


def _upgrade_from_1(connection):
    connection.exec_driver_sql("ALTER TABLE decisions ADD COLUMN request_id TEXT")
    connection.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)")


UPGRADES = {1: _upgrade_from_1}  # version -> the step to the next, run in one transaction with the version bump


def database_url(target, create=True, flag="--db"):
    """A SQLAlchemy URL for --db (or serve.py's `flag` --review): a URL as given, or a path to a SQLite file (which need not exist yet if `create`)."""
    target = str(target)
    if "://" in target:
        if create or not target.startswith("sqlite:///") or target == "sqlite:///:memory:":
            return target
        path = Path(target.removeprefix("sqlite:///").split("?")[0])
        if not path.exists():
            raise UserError(f"{flag} {target}: {path} does not exist; import titles into it first")
        return target
    path = Path(target)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise UserError(f"{flag} {target} is not a regular file; give a file name such as review.sqlite")
    if not create and not path.exists():
        raise UserError(
            f"{flag} {target} does not exist; import titles into it first (python -m genre_tagger.review import)"
        )
    if path.is_dir():
        raise UserError(f"{flag} {target} is a folder; give a file name such as review.sqlite")
    if not path.resolve().parent.is_dir():
        raise UserError(f"{flag} {target}: folder {path.resolve().parent} does not exist; create it first")
    if not create and not path.stat().st_size:
        raise UserError(f"{flag} {target} is empty; import titles into it first (python -m genre_tagger.review import)")
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise UserError(f"{flag} {target} is not a SQLite database; give a review store or a new file name")
    return f"sqlite:///{path.resolve()}"


def _engine(url, flag="--db"):
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        engine = create_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as err:  # ValueError: a port that is not a number
        raise UserError(
            f"{flag} {str(url).split('@')[-1]!r} is not a database URL SQLAlchemy can open ({err})"
        ) from None
    except ImportError as err:
        raise UserError(f"{flag} needs the database driver {err.name}: pip install it (see docs/REVIEW.md)") from None
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_settings(dbapi_connection, record):
            dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below, not the driver's deferred one
            for pragma in (
                "journal_mode=WAL",
                "foreign_keys=ON",
                "synchronous=FULL",
                f"busy_timeout={BUSY_TIMEOUT_MS}",
            ):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _write_lock_first(connection):
            # A writer takes the write lock at the start: a transaction that reads then writes never fails half-way.
            write = connection.get_execution_options().get("review_write", True)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _database_error(err, url):
    shown = url.split("@")[-1]  # never print a password
    return StoreUnavailable(f"review store {shown}: {first_line(getattr(err, 'orig', None) or err)}")


# %% The store


class ReviewStore:
    """A review store: `ReviewStore.open("review.sqlite")` creates it on first use and upgrades an older one."""

    def __init__(self, engine, url):
        from sqlalchemy import MetaData

        self.engine, self.url = engine, url
        self.tables = _tables(MetaData()).tables
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self.file = None if database in (None, "", ":memory:") else Path(database)
        self.file_identity = None  # (device, inode) once prepared: the file every later transaction must still be

    @classmethod
    def open(cls, target, create=True, flag="--db"):
        """The store at `target` (a SQLite path or a SQLAlchemy URL); a missing SQLite file is created if `create`."""
        from sqlalchemy.engine import URL
        from sqlalchemy.exc import SQLAlchemyError

        url = database_url(target, create, flag)
        # A path goes in as the database itself: parsed as a URL, 'a?b.sqlite' would open 'a', 'x%41' 'xA'.
        path = url.removeprefix("sqlite:///") if "://" not in str(target) else None
        store = cls(_engine(url if path is None else URL.create("sqlite", database=path), flag), url)
        try:
            store._prepare()
            if store.file is not None:
                store.file_identity = store._identity()
        except SQLAlchemyError as err:
            store.close()
            raise _database_error(err, url) from None
        except BaseException:
            store.close()
            raise
        return store

    def close(self):
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self, write=True):
        """One transaction: committed (and, on SQLite, synced) when the block ends, rolled back on any error.

        On SQLite a writing transaction takes the write lock when it begins; a reading one (`write=False`)
        reads a snapshot and never waits for a writer (WAL).
        """
        from sqlalchemy.exc import SQLAlchemyError

        if self.file_identity is not None and self._identity() != self.file_identity:
            raise StoreGone(
                f"the review store {self.file} was deleted or replaced after it was opened; nothing was recorded "
                "(restart with the store's file back in place, or a new --review file)"
            )
        try:
            with self.engine.connect() as connection:
                connection.execution_options(review_write=write)
                with connection.begin():
                    yield connection
        except SQLAlchemyError as err:  # locked past the busy timeout, unreachable, out of connections
            raise _database_error(err, self.url) from None

    def _identity(self):
        try:
            found = os.stat(self.file)
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _prepare(self):
        from sqlalchemy import inspect

        with self.transaction() as connection:
            names = set(inspect(connection).get_table_names())
            if "review_meta" not in names:
                if names:
                    raise UserError(
                        f"{self.shown} holds other tables ({', '.join(sorted(names)[:5])}) and is not a review "
                        "store; give a new file name"
                    )
                self.tables["review_meta"].metadata.create_all(connection)
                self._version(connection, SCHEMA_VERSION)
            else:
                version = self.schema_version(connection)
                if version > SCHEMA_VERSION:
                    raise UserError(
                        f"{self.shown} is a review store of schema version {version}, newer than this genre-tagger "
                        f"reads ({SCHEMA_VERSION}); upgrade genre-tagger"
                    )
                if missing := {"runs", "items", "decisions"} - names:
                    raise UserError(
                        f"{self.shown} has a review_meta table but no {', '.join(sorted(missing))} table; it is "
                        "damaged or not a review store"
                    )
                while version < SCHEMA_VERSION:
                    UPGRADES[version](connection)
                    version += 1
                    self._version(connection, version)
            if connection.dialect.name == "sqlite":
                for statement in _APPEND_ONLY:
                    connection.exec_driver_sql(statement)

    @property
    def shown(self):
        return self.url.split("@")[-1].removeprefix("sqlite:///")

    def schema_version(self, connection):
        from sqlalchemy import select

        meta = self.tables["review_meta"]
        value = connection.execute(select(meta.c.value).where(meta.c.name == "schema_version")).scalar()
        if value is None or not (str(value).isascii() and str(value).isdigit()) or int(value) < 1:
            raise UserError(f"{self.shown} has no valid schema version ({printable(str(value))}); it is damaged")
        return int(value)

    def _version(self, connection, version):
        meta = self.tables["review_meta"]
        connection.execute(meta.delete().where(meta.c.name == "schema_version"))
        connection.execute(meta.insert().values(name="schema_version", value=str(version)))

    # %% Writing titles

    def add_run(self, sha256, origin, labels, thresholds):
        """The id of the run with this sha256, added if new."""
        from sqlalchemy import select

        runs = self.tables["runs"]
        with self.transaction() as connection:
            found = connection.execute(select(runs.c.id, runs.c.labels).where(runs.c.sha256 == sha256)).first()
            if found is not None:
                return found.id
            values = dict(sha256=sha256, origin=str(origin), labels=json.dumps(list(labels)), added_at=now())
            values["thresholds"] = json.dumps([float(t) for t in thresholds])
            return connection.execute(runs.insert().values(**values)).inserted_primary_key[0]

    def enqueue(self, run_id, rows):
        """Add titles (dicts: key, title, description, given, probabilities, suggested, uncertainty,
        label_quality) in one transaction; a key already in the store is kept as it is. Returns (added, kept)."""
        from sqlalchemy import func, select

        items = self.tables["items"]
        with self.transaction() as connection:
            keys = [row["key"] for row in rows]
            existing = set(connection.execute(select(items.c.key).where(items.c.key.in_(keys))).scalars())
            position = connection.execute(select(func.coalesce(func.max(items.c.position), 0))).scalar()
            fresh = []
            for row in rows:
                if row["key"] in existing:
                    continue
                position += 1
                fresh.append(
                    {
                        **row,
                        "given": None if row.get("given") is None else json.dumps(row["given"]),
                        "probabilities": json.dumps([round(float(p), 6) for p in row["probabilities"]]),
                        "suggested": json.dumps(row["suggested"]),
                        "run_id": run_id,
                        "position": position,
                        "imported_at": now(),
                    }
                )
            if fresh:
                connection.execute(items.insert(), fresh)
        return len(fresh), len(rows) - len(fresh)

    # %% Reading titles

    def _item_record(self, connection, row):
        from sqlalchemy import select

        runs, decisions = self.tables["runs"], self.tables["decisions"]
        run = connection.execute(select(runs).where(runs.c.id == row.run_id)).first()
        where = f"title {row.id}"
        if run is None:
            raise StoreDamaged(
                f"{where} names run {row.run_id}, which is not in the review store; the store is damaged"
            )
        labels = stored_list(run.labels, "names", f"{where}'s run labels")
        thresholds = stored_list(run.thresholds, "numbers", f"{where}'s run thresholds", len(labels))
        probabilities = stored_list(row.probabilities, "numbers", f"{where}'s probabilities", len(labels))
        suggested = stored_list(row.suggested, "names", f"{where}'s suggestion")
        for name, value in (("uncertainty", row.uncertainty), ("label_quality", row.label_quality)):
            if value is not None and not _finite(value):
                raise StoreDamaged(f"{where}'s {name} is not a finite number; the store is damaged")
        order = sorted(range(len(labels)), key=lambda j: (labels[j] not in suggested, -probabilities[j]))
        candidates = order[: max(CANDIDATES, len(suggested))]
        current = None
        if row.current_id is not None:
            standing = connection.execute(select(decisions).where(decisions.c.id == row.current_id)).first()
            if standing is None:
                raise StoreDamaged(
                    f"{where} names decision {row.current_id}, not in the review store; the store is damaged"
                )
            current = _decision_record(standing)
        return {
            "id": row.id,
            "key": row.key,
            "title": row.title,
            "description": row.description,
            "given": None if row.given is None else stored_list(row.given, "names", f"{where}'s given genres"),
            "suggested": suggested,
            "candidates": [
                {
                    "genre": labels[j],
                    "probability": round(probabilities[j], 4),
                    "threshold": round(thresholds[j], 4),
                    "suggested": labels[j] in suggested,
                }
                for j in candidates
            ],
            "genres": labels,
            "run_sha256": run.sha256,
            "uncertainty": round(row.uncertainty, 6),
            "label_quality": None if row.label_quality is None else round(row.label_quality, 6),
            "version": row.version,
            "decision": current,
        }

    def item(self, item_id):
        from sqlalchemy import select

        items = self.tables["items"]
        with self.transaction(write=False) as connection:
            row = connection.execute(select(items).where(items.c.id == item_id)).first()
            if row is None:
                raise NotFound(f"no title {item_id} in the review store")
            return self._item_record(connection, row)

    def next_item(self, strategy="uncertain", excluded=()):
        """The next title to review by `strategy` (see STRATEGIES), or None when none is left."""
        from sqlalchemy import select

        items = self.tables["items"]
        query = select(items).where(items.c.current_id.is_(None))
        if excluded:
            query = query.where(items.c.id.not_in(list(excluded)))
        if strategy == "uncertain":
            query = query.order_by(items.c.uncertainty, items.c.position)
        elif strategy == "audit":
            query = query.order_by(items.c.label_quality.is_(None), items.c.label_quality, items.c.position)
        elif strategy == "import":
            query = query.order_by(items.c.position)
        else:
            raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, not {printable(str(strategy))!r}")
        with self.transaction(write=False) as connection:
            row = connection.execute(query.limit(1)).first()
            return None if row is None else self._item_record(connection, row)

    def progress(self):
        """How many titles there are, how many are decided (accepted or skipped), and how many are left."""
        from sqlalchemy import func, select

        items, decisions = self.tables["items"], self.tables["decisions"]
        with self.transaction(write=False) as connection:
            total = connection.execute(select(func.count()).select_from(items)).scalar()
            by_action = dict(
                connection.execute(
                    select(decisions.c.action, func.count())
                    .select_from(items.join(decisions, items.c.current_id == decisions.c.id))
                    .group_by(decisions.c.action)
                ).all()
            )
        decided = sum(by_action.values())
        return {
            "titles": total,
            "decided": decided,
            "accepted": by_action.get("accept", 0),
            "skipped": by_action.get("skip", 0),
            "left": total - decided,
        }

    def decisions(self, item_id=None):
        """Every decision (of one title), oldest first."""
        from sqlalchemy import select

        decisions = self.tables["decisions"]
        query = select(decisions).order_by(decisions.c.id)
        if item_id is not None:
            query = query.where(decisions.c.item_id == item_id)
        with self.transaction(write=False) as connection:
            return [_decision_record(row) for row in connection.execute(query)]

    # %% Deciding

    def decide(self, item_id, action, reviewer, genres=None, seen="current", request_id=None):
        """Record one decision and return (decision, item, repeated).

        accept: `genres` as decided (default: the suggestion); skip; undo: the decision that stands is
        undone and the one before it stands again. `seen` is the title's `version` the reviewer saw (None:
        no decision yet); another version means someone decided first: AlreadyDecided. Without `seen`,
        accept and skip expect a title still to review, undo the decision that stands now. A `request_id`
        already recorded returns that decision (`repeated` True): a retry is never decided twice.
        """
        from sqlalchemy import select

        items, decisions = self.tables["items"], self.tables["decisions"]
        if action not in ACTIONS:
            raise UserError(f"action must be one of {', '.join(ACTIONS)}, not {printable(str(action))!r}")
        if problem := text_problem(reviewer, "reviewer", MAX_REVIEWER_CHARS):
            raise UserError(problem)
        with self.transaction() as connection:
            # The title's row lock first (SQLite: the write lock is already held), so that two requests with one
            # request_id are serialised too and the second finds the first's decision.
            row = connection.execute(select(items).where(items.c.id == item_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no title {item_id} in the review store")
            if request_id is not None:
                earlier = connection.execute(select(decisions).where(decisions.c.request_id == request_id)).first()
                if earlier is not None:
                    if earlier.item_id != item_id:
                        raise UserError(f"request_id {printable(request_id)!r} was already used for another title")
                    return _decision_record(earlier), self._item_record(connection, row), True
            self._check_seen(connection, row, action, seen)
            values = {"item_id": item_id, "action": action, "reviewer": reviewer, "decided_at": now()}
            values.update(run_id=row.run_id, replaces=row.current_id, request_id=request_id)
            stands = None
            if action == "accept":
                labels = stored_list(connection.execute(select(self.tables["runs"].c.labels).where(
                    self.tables["runs"].c.id == row.run_id)).scalar(), "names", f"title {item_id}'s run labels")  # fmt: skip
                suggested = stored_list(row.suggested, "names", f"title {item_id}'s suggestion")
                decided = suggested if genres is None else _checked_genres(genres, labels)
                values.update(
                    genres=json.dumps(decided),
                    added=json.dumps([g for g in decided if g not in suggested]),
                    removed=json.dumps([g for g in suggested if g not in decided]),
                )
            elif action == "undo":
                stands = connection.execute(
                    select(decisions.c.replaces).where(decisions.c.id == row.current_id)
                ).scalar()
            decision_id = connection.execute(decisions.insert().values(**values)).inserted_primary_key[0]
            current = stands if action == "undo" else decision_id
            connection.execute(
                items.update().where(items.c.id == item_id).values(current_id=current, version=decision_id)
            )
            decision = _decision_record(
                connection.execute(select(decisions).where(decisions.c.id == decision_id)).one()
            )
            row = connection.execute(select(items).where(items.c.id == item_id)).one()
            return decision, self._item_record(connection, row), False

    def _check_seen(self, connection, row, action, seen):
        def refuse(message):
            raise AlreadyDecided(message, self._item_record(connection, row))

        if seen == "current":  # no version given: what the action needs
            if action == "undo" and row.current_id is None:
                refuse(f"title {row.id} has no decision standing to undo")
            if action != "undo" and row.current_id is not None:
                current = self._item_record(connection, row)["decision"]
                refuse(
                    f"title {row.id} was already decided ({current['action']} by {current['reviewer']} at "
                    f"{current['decided_at']}); send its version to change that decision"
                )
            return
        if seen != row.version:
            refuse(
                f"title {row.id} changed since version {seen}: it is at version {row.version} now "
                "(another decision came first); look at it again"
            )
        if action == "undo" and row.current_id is None:
            refuse(f"title {row.id} has no decision standing to undo")

    # %% Reading what was decided

    def reviewed(self):
        """Yield (item record without candidates, the accept decision that stands) for every accepted title."""
        from sqlalchemy import select

        items, decisions = self.tables["items"], self.tables["decisions"]
        query = (
            select(
                items,
                decisions.c.genres.label("decided"),
                decisions.c.reviewer,
                decisions.c.decided_at,
                decisions.c.id.label("decision_id"),
            )  # fmt: skip
            .select_from(items.join(decisions, items.c.current_id == decisions.c.id))
            .where(decisions.c.action == "accept")
            .order_by(items.c.position)
        )
        with self.transaction(write=False) as connection:
            yield from connection.execution_options(yield_per=IMPORT_CHUNK_ROWS).execute(query)


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stored_list(text, kind, what, length=None):
    """A JSON list this code wrote into the store: of "names" (text) or "numbers" (finite), `length` long if given;
    anything else is StoreDamaged, never a crash (or a NaN that no JSON answer can carry)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = None

    def fits(item):
        return isinstance(item, str) if kind == "names" else _finite(item)

    if not isinstance(value, list) or not all(fits(v) for v in value) or length not in (None, len(value)):
        shape = kind if length is None else f"{length} {kind}"
        raise StoreDamaged(f"{what} in the review store is not a list of {shape}; the store is damaged")
    return value


def _decision_record(row):
    def listed(value):
        return None if value is None else stored_list(value, "names", f"decision {row.id}'s genres")

    return {
        "id": row.id,
        "item_id": row.item_id,
        "action": row.action,
        "genres": listed(row.genres),
        "added": listed(row.added),
        "removed": listed(row.removed),
        "reviewer": row.reviewer,
        "decided_at": row.decided_at,
        "replaces": row.replaces,
        "request_id": row.request_id,
    }


def _checked_genres(genres, labels):
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
        raise UserError("genres must be a list of genre names")
    unknown = [g for g in genres if g not in labels]
    if unknown:
        shown = printable(", ".join(unknown))[:200]
        raise UserError(f"genres the run does not tag: {shown}; the genres are {', '.join(labels)}")
    if len(set(genres)) != len(genres):
        raise UserError("genres names a genre twice; give each once")
    return [label for label in labels if label in genres]  # the run's order


# %% Scores for the queue


def uncertainty(probabilities, thresholds):
    """Per row: how close its most uncertain genre is to that genre's threshold (calibrated scale); lower first."""
    import numpy as np

    return np.abs(np.asarray(probabilities, dtype=np.float64) - np.asarray(thresholds, dtype=np.float64)).min(axis=1)


def label_quality(given, probabilities, labels):
    """Per row: the label audit's score (cleanlab's self-confidence, EMA over genres) of the given genres
    against the run's probabilities; lowest = most likely mislabelled."""
    import numpy as np

    from genre_tagger.audit import label_quality_scores

    Y = np.array([[label in row for label in labels] for row in given], dtype=np.int64)
    return label_quality_scores(Y, np.asarray(probabilities, dtype=np.float64))


def read_audit_scores(path):
    """{row number: label_quality} from the label audit's CSV (`python -m genre_tagger.audit --output`)."""
    from genre_tagger.data import read_csv

    frame = read_csv(path, "--audit")
    for column in ("row", "label_quality"):
        if column not in frame.columns:
            raise UserError(f"--audit {path} has no column {column!r}; give the CSV genre_tagger.audit wrote")
    # The audit is not checked against --input's rows here: a row it names that was not imported orders nothing.
    rows, qualities = row_number(AUDIT_ROWS_AT_MOST), bounded_float(0, 1)
    scores = {}
    for number, row, score in zip(frame.attrs["source_rows"], frame["row"], frame["label_quality"]):
        where = f"--audit {path}, line {number}"
        key = str(rows.parse(row, f"{where}: 'row'"))  # the id import gives a title imported without --id-column
        if key in scores:
            raise UserError(f"{where} repeats row {key}; give the CSV genre_tagger.audit wrote (one line per row)")
        scores[key] = qualities.parse(score, f"{where}: 'label_quality'")
    return scores


# %% Reading the titles to import


def _records(path, fmt, columns):
    """Yield (row number, {column: value}) from a CSV or JSON lines file, read strictly and in bounded lines."""
    from genre_tagger.data import check_header, csv_rows
    from genre_tagger.textio import LINE_CAP, _CsvFeed, bounded_lines, check_input_path

    check_input_path(path)
    if fmt == "parquet":
        yield from _parquet_records(path, columns)
        return
    with open(path, "rb") as stream:
        lines = bounded_lines(stream, path, LINE_CAP)
        if fmt == "csv":
            feed = _CsvFeed(lines, path, LINE_CAP)
            numbered = csv_rows(feed, path)
            _, header = next(numbered)
            check_header(header, path)
            for name, flag in columns:
                if name is not None and name not in header and flag is not None:
                    found = ", ".join(printable(h) for h in header) or "none"
                    raise UserError(
                        f"{path} has no column {printable(name)!r} (columns: {found}); choose it with {flag}"
                    )
            for number, fields in numbered:
                feed.pending = 0
                yield number, dict(zip(header, fields))
            return
        for number, line, cut in lines:
            if not line.strip():
                continue
            if cut:
                raise UserError(f"{path}: line {number} is longer than {LINE_CAP} characters; shorten it")
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise UserError(f"{path}: line {number} is not JSON; each line must be one object") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {number} is not a JSON object")
            yield number, record


def _parquet_records(path, columns):
    """Yield (record number, {column: value}) from a Parquet file, IMPORT_CHUNK_ROWS rows at a time (pyarrow)."""
    from genre_tagger.textio import open_parquet, parquet_batches, parquet_columns

    parquet = open_parquet(path)
    wanted = parquet_columns(parquet, path, columns)
    for start, values in parquet_batches(parquet, path, wanted, IMPORT_CHUNK_ROWS):
        for i, row in enumerate(zip(*(values[name] for name in wanted))):
            yield start + i, dict(zip(wanted, row))


def _field(record, name, number, path, required=True, kind="text"):
    """A text field of one input record, or None when absent (and not required). A whole number is taken as its
    digits (a JSON id such as 7, a title such as 1917), except as a "description"; "labels" takes a list of names."""
    value = record.get(name) if name is not None else None
    if kind == "labels" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if kind != "description" and isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_DB_ID:
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise UserError(f"{path}: row {number} has no {printable(name)!r}; fill it or delete the row")
        return None
    if not isinstance(value, str):
        raise UserError(f"{path}: row {number}: {printable(name)!r} must be text, not {type(value).__name__}")
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise UserError(f"{path}: row {number}: {printable(name)!r} holds a NUL or a lone surrogate; give plain text")
    return value


def read_titles(path, args, max_chars):
    """Yield chunks of title dicts (key, title, description, given) read from the --input file."""
    from genre_tagger.data import clean_text, split_labels

    fmt = args.input_format
    if fmt == "auto":
        lowered = path.lower()
        fmt = "jsonl" if lowered.endswith((".jsonl", ".json")) else "parquet" if lowered.endswith(".parquet") else "csv"
    columns = [(args.text_column, "--text-column"), (args.id_column, "--id-column")]
    columns += [(args.title_column, None), (args.label_column, None)]
    seen, chunk, rows = set(), [], 0
    for number, record in _records(path, fmt, columns):
        text = clean_text(_field(record, args.text_column, number, path, kind="description")[: max_chars * 2])
        if not text:
            raise UserError(f"{path}: row {number} has an empty description; fill or delete it")
        key = _field(record, args.id_column, number, path) if args.id_column else str(number)
        if problem := text_problem(key, f"{path}: row {number}'s id", MAX_KEY_CHARS):
            raise UserError(problem)
        if key in seen:
            raise UserError(f"{path}: row {number} repeats the id {printable(key)!r}; ids must be unique")
        seen.add(key)
        title = _field(record, args.title_column, number, path, required=False)
        given = _field(record, args.label_column, number, path, required=False, kind="labels")
        chunk.append(
            {
                "key": key,
                "title": None if title is None else printable(title)[:MAX_TITLE_CHARS],
                "description": text[:max_chars],
                "given": None if given is None else split_labels(given),
            }
        )
        rows += 1
        if len(chunk) == IMPORT_CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    if not rows:
        raise UserError(f"{path} has no titles to import")


# %% The commands


def run_identity(run):
    """The sha256 that names a run in the store: its manifest's (which covers every file of the run)."""
    from genre_tagger.run import MANIFEST

    if not run.verified:
        raise UserError(
            f"{run.origin} has no manifest.json, so it has no sha256 to record its suggestions by; "
            "re-save it (python -m genre_tagger.export RUN)"
        )
    return run.sha256(MANIFEST)


def import_titles(args):
    from genre_tagger.metrics import decode
    from genre_tagger.run import Run
    from genre_tagger.tagger import open_tagger
    from genre_tagger.textio import DEFAULT_DESCRIPTION_CHARS, description_limit

    audit_scores = read_audit_scores(args.audit) if args.audit else None
    if audit_scores is not None and args.id_column:
        raise UserError("--audit names rows by number: leave out --id-column (the id is then the row number)")
    for _ in read_titles(args.input, args, DEFAULT_DESCRIPTION_CHARS):
        pass  # the whole file is checked before any model loads or any title is stored: a bad row stores nothing
    database_url(args.db)  # a --db that cannot be a store is refused before the model loads
    with Run.open(args.model) as run:
        sha256, labels = run_identity(run), run.labels
        thresholds = run.thresholds_for("default")
        tagger = open_tagger(run, "auto", None, args.threads)
    with ReviewStore.open(args.db) as store:  # created only now: a bad run leaves no empty store behind
        per_genre = [thresholds] * len(labels) if isinstance(thresholds, float) else list(thresholds)
        run_id = store.add_run(sha256, args.model, labels, per_genre)
        added = kept = 0
        unknown = set()
        for chunk in read_titles(args.input, args, description_limit(tagger.max_length)):
            texts = [row["description"] for row in chunk]
            probabilities = tagger.probabilities(texts, args.batch_size)
            decoded = decode(probabilities, labels, thresholds)
            scores = uncertainty(probabilities, per_genre)
            quality = [None] * len(chunk)
            if audit_scores is not None:
                quality = [audit_scores.get(row["key"]) for row in chunk]
            elif all(row["given"] is not None for row in chunk):
                unknown.update(g for row in chunk for g in row["given"] if g not in labels)
                quality = label_quality([row["given"] for row in chunk], probabilities, labels).tolist()
            for row, p, genres, score, q in zip(chunk, probabilities, decoded, scores, quality):
                row.update(probabilities=p.tolist(), suggested=[g for g, _ in genres], uncertainty=float(score))
                row["label_quality"] = q
            fresh, old = store.enqueue(run_id, chunk)
            added, kept = added + fresh, kept + old
        if unknown:
            note(f"genres of {args.label_column!r} the run does not tag (their rows' label quality ignores them): "
                 f"{printable(', '.join(sorted(unknown)))[:300]}")  # fmt: skip
        if kept:
            note(f"{kept} title(s) already in the store kept as they were (their ids were imported before)")
        progress = store.progress()
    print(
        f"enqueued {added} title(s) from {args.input} into {store.shown}, suggested by {args.model} "
        f"(sha256 {sha256[:12]}); {progress['left']} of {progress['titles']} left to review"
    )
    return 0


def _check_new_output(output, db):
    path = Path(output)
    if not output.lower().endswith(".csv"):
        raise UserError("--output must end in .csv")
    if path.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name ending in .csv")
    if path.exists() or path.is_symlink():
        raise UserError(f"{output} already exists; choose another --output or delete it first")
    if not path.resolve().parent.is_dir():
        raise UserError(f"--output {output}: folder {path.resolve().parent} does not exist")
    if "://" not in db and path.resolve() == Path(db).resolve():
        raise UserError("--output is the --db file; choose another name")


def export_reviewed(args):
    """The accepted titles as the label audit's --relabel file (row, genres) or as a labelled CSV (--data)."""
    import csv

    _check_new_output(args.output, args.db)
    with ReviewStore.open(args.db, create=False) as store:
        folder = os.path.dirname(os.path.abspath(args.output))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{os.path.basename(args.output)}.", suffix=".part", dir=folder)
        written = 0
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                if args.format == "relabel":
                    header = ["row", "genres", "suggested", "given", "reviewer", "decided_at", "decision"]
                else:
                    header = ["id", "Title", args.text_column, args.label_column, "reviewer", "decided_at", "decision"]
                writer.writerow([spreadsheet_safe(cell) for cell in header])
                for row in store.reviewed():
                    decided = ",".join(stored_list(row.decided, "names", f"decision {row.decision_id}'s genres"))
                    if not decided:
                        continue  # a title reviewed as having none of the genres: nothing to train on
                    given = (
                        ""
                        if row.given is None
                        else ",".join(stored_list(row.given, "names", f"title {row.id}'s given genres"))
                    )
                    if args.format == "relabel":
                        if not (row.key.isascii() and row.key.isdigit()):
                            raise UserError(
                                f"title {row.id} has the id {printable(row.key)!r}, not a row number of a --data "
                                "CSV; --relabel needs titles imported without --id-column (or use --format labelled)"
                            )
                        suggested = stored_list(row.suggested, "names", f"title {row.id}'s suggestion")
                        cells = [row.key, decided, ",".join(suggested), given]
                    else:
                        cells = [row.key, row.title or "", row.description, decided]
                    cells += [row.reviewer, row.decided_at, row.decision_id]
                    writer.writerow([spreadsheet_safe(cell) for cell in cells])
                    written += 1
            if os.path.exists(args.output):
                raise UserError(f"{args.output} appeared while exporting; nothing was replaced")
            os.replace(tmp_name, args.output)
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
    use = "--relabel" if args.format == "relabel" else "--data"
    print(f"exported {written} reviewed title(s) to {args.output} (train on it with train.py {use} {args.output})")
    return 0


def show_status(args):
    with ReviewStore.open(args.db, create=False) as store:
        progress = store.progress()
    print(" ".join(f"{key}={value}" for key, value in progress.items()))
    return 0


def build_parser():
    p = ArgumentParser(
        prog="python -m genre_tagger.review",
        description="The review loop: tag titles into a review store, then export what reviewers decided.",
    )
    commands = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    db_help = "review store: a SQLite file (created on first use) or a SQLAlchemy URL such as postgresql://..."
    tag = commands.add_parser(
        "import", help="tag the titles of a CSV, JSON lines or Parquet file with a run and enqueue them"
    )
    tag.add_argument("--db", required=True, help=db_help)
    tag.add_argument("--model", required=True, help="run folder or zip whose suggestions are reviewed")
    tag.add_argument(
        "--input", required=True, help="CSV, JSON lines (.jsonl) or Parquet (.parquet) of titles to review"
    )
    tag.add_argument("--input-format", choices=["auto", "csv", "jsonl", "parquet"], default="auto",
                     help="by extension: .jsonl is JSON lines, .parquet Parquet (needs pyarrow), anything else CSV "
                          "(default: %(default)s)")  # fmt: skip
    tag.add_argument("--text-column", default="Description", help="column with the text (default: %(default)s)")
    tag.add_argument(
        "--id-column",
        default=None,
        help="column with each title's unique id (default: none; the id is the row number, header = row 1, which "
        "is what --relabel and --audit name rows by)",
    )
    tag.add_argument(
        "--title-column", default="Title", help="column shown as the title, if present (default: %(default)s)"
    )
    tag.add_argument(
        "--label-column",
        default="Genre",
        help="column with the genres already given, if present: they are shown and scored for the audit order "
        "(default: %(default)s)",
    )
    tag.add_argument("--audit", default=None, metavar="AUDIT_CSV",
                     help="the label audit's CSV for this --input: its out-of-fold label quality orders the audit queue "
                          "(default: the run's own probabilities score the given genres)")  # fmt: skip
    tag.add_argument("--batch-size", type=bounded_int(1, 1024), default=32,
                     help="descriptions per forward pass, 1 to 1024 (default: %(default)s)")  # fmt: skip
    tag.add_argument("--threads", type=threads(), default=0,
                     help="CPU threads for inference (default: 0 = all cores)")  # fmt: skip
    out = commands.add_parser("export", help="write the accepted titles as a --relabel file or a labelled CSV")
    out.add_argument("--db", required=True, help=db_help)
    out.add_argument("--output", required=True, help="CSV to write (never replaces a file)")
    out.add_argument(
        "--format",
        choices=["relabel", "labelled"],
        default="relabel",
        help="relabel: row and genres columns for train.py --relabel (the label audit's format; titles imported "
        "without --id-column); labelled: id, title, text and genres for train.py --data (default: %(default)s)",
    )
    out.add_argument(
        "--text-column", default="Description", help="labelled: the text column's name (default: %(default)s)"
    )
    out.add_argument(
        "--label-column", default="Genre", help="labelled: the genres column's name (default: %(default)s)"
    )
    status = commands.add_parser("status", help="how many titles are in the store, decided and left")
    status.add_argument("--db", required=True, help=db_help)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "import":
        return import_titles(args)
    if args.command == "export":
        return export_reviewed(args)
    return show_status(args)


if __name__ == "__main__":
    from genre_tagger import cli

    cli.run_main(main)
