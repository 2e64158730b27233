"""The HTTP service behind serve.py: the run it serves, the request schemas, the dynamic batcher, the app.

No torch here: the run is served on its ONNX export (onnxruntime + tokenizers), like predict.py's default.
The `probabilities` of a response are computed as predict.py computes them (same OnnxTagger, same `decode`,
same rounding): a request served alone gets exactly the numbers `predict.py --json` prints for it.
"""

import asyncio
import json
import logging
import math
import queue
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from genre_tagger.data import clean_text
from genre_tagger.deadlines import BodyTooSlow, receive_within
from genre_tagger.metrics import decode

API_VERSION = "v1"
WEB_FOLDER = Path(__file__).with_name("web")
METRIC_KEYS = ("macro_f1", "micro_f1", "hamming_loss", "macro_roc_auc")
LENGTH_RATIO = 1.3  # a gathered batch's chunk holds descriptions at most 1.3x as long (in tokens) as its shortest
DISCARD_LIMIT = 16 << 20  # bytes of a refused body read and dropped before answering; past it, the connection is cut
CHARS_PER_TOKEN = 64  # a description may have this many characters per token of the model's limit, and no more
DEFAULT_MAX_TOKENS = 512
RETRY_AFTER_S = 5  # what a 503 for a full queue tells the client to wait before trying again
# What the tokenizer cannot take (lone surrogates) or no plot description has: control characters other than
# ordinary whitespace (tab, newline, carriage return, vertical tab, form feed), NUL included.
_REFUSED_CHARACTER = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
log = logging.getLogger("genre_tagger.serving")


# %% The run being served


@dataclass
class ServedRun:
    """Everything the service needs from a run, read once at start; the run folder is not needed afterwards."""

    labels: list
    thresholds: dict  # choice ("default", "tuned", "tuned-global") -> thresholds as Run.thresholds_for returns them
    saved_thresholds: dict  # thresholds.json as train.py wrote it
    description: dict  # what GET /v1/model shows
    tagger: object  # anything with .probabilities(texts, batch_size) -> (len(texts), len(labels)) array


def load_served_run(path, variant=None, threads=0, spinning=False):
    """Open a run (folder or zip) once and load it on the ONNX backend, through predict.py's own open_tagger."""
    from genre_tagger.common import note
    from genre_tagger.run import MANIFEST, Run
    from genre_tagger.tagger import open_tagger

    with Run.open(path) as run:
        if not run.verified:
            note(f"{path} has no manifest.json (saved before runs checked themselves); its files are not verified")
        tagger = open_tagger(run, "onnx", variant, threads, spinning=spinning)
        if run.is_ensemble:  # each member on its own ONNX export; the manifest names every member file
            model_sha256 = run.sha256(MANIFEST)
        else:  # the backend has just checked the file against the manifest: its recorded hash is the file's
            model_sha256 = run.sha256(tagger.model_file)
        metrics = run.json("metrics.json") if run.has("metrics.json") else {}
        labels, train_config, saved_thresholds = run.labels, run.train_config, run.thresholds
        thresholds = {}
        for choice in ("default", "tuned", "tuned-global"):
            try:
                thresholds[choice] = run.thresholds_for(choice)
            except Exception:  # noqa: BLE001 - a run without tuned thresholds refuses that choice per request
                continue
    description = {
        "run": str(path),
        "base_model": train_config.get("base_model"),
        "genres": len(labels),
        "onnx_variant": tagger.variant,
        "model_sha256": model_sha256,
        "max_tokens": tagger.max_length,
        "verified": bool(run.verified),  # False: a run without manifest.json, its files unchecked
        "metrics": {
            split: {key: metrics[split][key] for key in METRIC_KEYS if key in metrics[split]}
            for split in ("test", "test_tuned_global", "test_tuned_per_genre")
            if isinstance(metrics.get(split), dict)
        },
        "settings": {key: train_config["settings"].get(key) for key in ("epochs", "lr", "batch_size", "seed")},
    }
    return ServedRun(labels, thresholds, saved_thresholds, description, tagger)


def finite_or_null(value):
    """`value` with every NaN and infinity as None: json.loads reads them from a run's files (a metric of a
    genre without positives, a hand-edited file), but a JSON response cannot carry them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


# %% Requests and responses

_THRESHOLD_HELP = (
    "'default' (the run's decisions: train.py's 0.3 on the uncalibrated scale, kept per genre on the calibrated "
    "one), a calibrated probability strictly between 0 and 1, 'tuned' (per-genre thresholds for train.py's "
    "--threshold-goal) or 'tuned-global'"
)


def text_problem(text, max_chars):
    """Why the tokenizer or the model would refuse this description (or memory would grow with it), or None."""
    if len(text) > max_chars:
        return f"is {len(text)} characters long; at most {max_chars} are accepted (shorten it)"
    if found := _REFUSED_CHARACTER.search(text):
        code = ord(found.group())
        if 0xD800 <= code <= 0xDFFF:
            what = f"a lone surrogate (U+{code:04X}), which is not Unicode text"
        elif code == 0:
            what = "a NUL character (U+0000)"
        else:
            what = f"a control character (U+{code:04X})"
        return f"has {what} at character {found.start()}; send plain text (tabs and newlines are fine)"
    return None


def _load_schemas(max_descriptions, max_chars=CHARS_PER_TOKEN * DEFAULT_MAX_TOKENS, max_explained=8):
    """Pydantic models for one server's limits (descriptions per request, explained ones, characters each)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class TagRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"examples": [{"descriptions": ["A retired hitman seeks revenge."], "min_genres": 1}]},
        )

        descriptions: Annotated[list[str], Field(min_length=1, max_length=max_descriptions)] = Field(
            description=(
                f"1 to {max_descriptions} movie plot descriptions of at most {max_chars} characters each, in plain "
                "text (no control characters but tabs and newlines); longer ones are tagged on their first tokens"
            )
        )
        threshold: float | Literal["default", "tuned", "tuned-global"] = Field(
            "default", description=f"when a genre is tagged: {_THRESHOLD_HELP}"
        )
        max_genres: int | None = Field(
            None, ge=1, description="tag at most N genres per description, the most probable"
        )
        top_k: int | None = Field(None, ge=1, description="the same as max_genres (its earlier name)")
        min_genres: int = Field(
            0, ge=0, description="tag at least N genres per description, adding the most probable below the threshold"
        )
        explain: bool = Field(
            False,
            description=(
                "also say, per tagged genre, which words pushed its probability up and which pushed it down "
                "(leave-one-word-out: one extra forward pass per word), with signed scores and character offsets "
                "into the description: each result gets `explanations`, as `predict.py --explain --json` prints; "
                f"at most {max_explained} descriptions per request with explain"
            ),
        )

        @field_validator("descriptions", mode="before")
        @classmethod
        def _a_list(cls, value):
            if isinstance(value, str):
                raise ValueError('must be a list of strings, e.g. ["A detective hunts a killer."], not one string')
            return value

        @field_validator("descriptions")
        @classmethod
        def _taggable(cls, value):
            for i, text in enumerate(value):
                if problem := text_problem(text, max_chars):
                    raise ValueError(f"descriptions[{i}] {problem}")
            cleaned = [clean_text(text) for text in value]
            blank = [i for i, text in enumerate(cleaned) if not text]
            if blank:
                raise ValueError(f"descriptions[{blank[0]}] is empty or whitespace; give some text to tag")
            return cleaned

        @field_validator("threshold", mode="before")
        @classmethod
        def _threshold(cls, value):
            from genre_tagger.run import THRESHOLD_CHOICES, is_probability

            if value in THRESHOLD_CHOICES or is_probability(value):  # the rule predict.py's --threshold follows
                return value
            raise ValueError(f"must be {_THRESHOLD_HELP}, not {json.dumps(value)[:40]}")

    class GenreScore(BaseModel):
        genre: str
        probability: float

    class TagResult(BaseModel):
        description: str = Field(description="the description as tagged (whitespace collapsed, as predict.py does)")
        genres: list[GenreScore] = Field(
            description="genres at or above the threshold (and up to min_genres below it), highest first"
        )
        probabilities: dict[str, float] = Field(description="every genre's probability, in the model's order")
        explanations: dict | None = Field(
            None,
            description='with "explain": {"truncated": bool, "genres": [{"genre", "probability", "up": [{"word", '
            '"start", "end", "score"}, ...], "down": [...]}, ...]}; truncated: only the words the model read count',
        )

    class TagResponse(BaseModel):
        threshold: float | str
        results: list[TagResult]

    return TagRequest, TagResponse


def result_record(text, row, genres, labels):
    """One description's result, the same record as predict.py --json prints (4 decimals)."""
    return {
        "description": text,
        "genres": [{"genre": g, "probability": round(p, 4)} for g, p in genres],
        "probabilities": {label: round(float(p), 4) for label, p in zip(labels, row)},
    }


# %% Dynamic batching


class ServerBusy(Exception):
    """More descriptions wait than the server accepts; the client should retry later (HTTP 503)."""


class NotServing(Exception):
    """The batcher has stopped (the server is shutting down): the client should retry elsewhere (HTTP 503)."""


class TaggingFailed(Exception):
    """The model failed on this request even run alone (HTTP 500); the other requests of its batch were served."""

    def __init__(self, index=None):
        where = f"descriptions[{index}]" if index is not None else "this request"
        super().__init__(f"the model failed on {where}; the server log has the details")
        self.index = index


@dataclass
class _Job:
    texts: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    # With explain()'s keyword arguments (an Explainer's job), its outcome is (rows, explanations).
    explain: dict | None = None


_STOP = object()


class Batcher:
    """Gathers concurrent requests into one forward pass, on a worker thread so the event loop stays free.

    Whatever queued while the previous batch ran joins the next one; beyond that, a batch waits for more
    only while other requests are on their way, and at most `wait_ms` after its first request arrived.
    A batch holds at most `max_batch` descriptions (a single larger request runs alone) and runs in
    length-sorted chunks of at most `batch_size` (see `_probabilities`). `max_batch=1` turns batching
    off: one forward pass per request. At most `max_waiting` descriptions wait; more are ServerBusy.
    """

    thread_name = "batcher"

    def __init__(self, tagger, max_batch=64, wait_ms=5.0, batch_size=32, max_waiting=2048):
        self.tagger, self.max_batch, self.wait_s, self.batch_size = tagger, max_batch, wait_ms / 1000, batch_size
        self.max_waiting = max_waiting
        self._queue = queue.Queue()
        self._waiting = 0
        self.arriving = 0  # POST /v1/tag requests received whose descriptions are not queued yet
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
        self._closing = False
        self.stats = {"requests": 0, "descriptions": 0, "batches": 0, "largest_batch": 0, "retried_batches": 0}
        self.stats["failed_requests"] = 0

    def start(self):
        self._thread.start()

    def stop(self):
        """Finish what is queued, then end the worker thread; anything queued after that is refused."""
        with self._lock:
            self._closing = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join()
        while True:  # the worker has ended: nothing may wait on it
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                _resolve(job, NotServing())

    @property
    def alive(self):
        return self._thread.is_alive()

    @property
    def waiting(self):
        """Descriptions (for an Explainer: requests) received and not yet in a forward pass."""
        return self._waiting

    def _cost(self, texts):
        """What a job counts against `max_waiting`."""
        return len(texts)

    async def probabilities(self, texts, explain=None):
        """The rows of `texts`; with `explain` (thresholds, top_k: an Explainer's jobs), (rows, explanations)."""
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), loop.create_future(), loop, explain=explain)
        cost = self._cost(job.texts)
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise NotServing
            if self._waiting + cost > self.max_waiting:
                raise ServerBusy
            self._waiting += cost
            self._queue.put(job)
        return await job.future

    def _gather(self, jobs):
        """Adds to `jobs` (one job so far) the other jobs of its batch; returns the job left over for the next.

        It waits for more only while requests are on their way (received, body not yet parsed), and at
        most `wait_s` after the first arrived: a lone client never waits.
        """
        first = jobs[0]
        size = len(first.texts)
        deadline = first.enqueued + self.wait_s
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and self._queue.empty() and self.arriving > 0:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                if remaining > 0 and self.arriving > 0:
                    continue
                return None
            if job is _STOP or size + len(job.texts) > self.max_batch:
                return job
            jobs.append(job)
            size += len(job.texts)
        return None

    def _probabilities(self, texts, alone):
        """One request alone runs exactly as predict.py runs it (so their numbers agree). Requests gathered
        together are sorted by length and cut into chunks of similar length: random descriptions in one
        chunk would pad most of them to the longest, and the padding costs more than batching saves."""
        if alone:
            return self.tagger.probabilities(texts, self.batch_size)
        tokenizer = getattr(self.tagger, "tokenizer", None)
        lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)] if tokenizer else [len(t) for t in texts]
        chunks, chunk = [], []
        for i in sorted(range(len(texts)), key=lengths.__getitem__):
            if chunk and (len(chunk) == self.batch_size or lengths[i] > LENGTH_RATIO * lengths[chunk[0]]):
                chunks.append(chunk)
                chunk = []
            chunk.append(i)
        chunks.append(chunk)
        outputs = [None] * len(texts)
        for chunk in chunks:
            for i, row in zip(chunk, self.tagger.probabilities([texts[i] for i in chunk], len(chunk))):
                outputs[i] = row
        return np.stack(outputs)

    def arrived(self, scope):
        """A POST /v1/tag request came in (its body is still to be read and checked)."""
        with self._lock:
            self.arriving += 1
        scope["genre_tagger.arriving"] = True

    def settled(self, scope):
        """That request reached the queue, or ended before it (a bad request)."""
        if scope.pop("genre_tagger.arriving", False):
            with self._lock:
                self.arriving -= 1

    def _work(self):
        leftover = None
        while True:
            first = leftover if leftover is not None else self._queue.get()
            if first is _STOP:
                return
            jobs, leftover = [first], None
            try:
                leftover = self._gather(jobs)
                self._run(jobs)
            except BaseException as err:  # noqa: BLE001 - the worker outlives any error; only its requests fail
                log.exception("the batcher failed on a batch of %d requests; it keeps serving", len(jobs))
                for job in jobs:
                    _resolve(job, TaggingFailed() if isinstance(err, Exception) else NotServing())

    def _run(self, jobs):
        """One batch: every job gets its rows, or, if the batch fails, its own outcome run alone."""
        with self._lock:
            self._waiting -= sum(self._cost(job.texts) for job in jobs)
        # A request cut off while queued (uvicorn's graceful timeout at shutdown) has no one to answer: skipping
        # it keeps a queue of explanations from holding the shutdown for minutes.
        jobs = [job for job in jobs if not job.future.cancelled()]
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["descriptions"] += len(texts)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(texts))
        outcome = self._attempt(texts, alone=len(jobs) == 1, explain=jobs[0].explain)
        if isinstance(outcome, Exception) and len(jobs) > 1:
            # One bad request must not fail the others: each is run again on its own.
            log.warning("a batch of %d requests failed (%s); retrying them one by one", len(jobs), outcome)
            self.stats["retried_batches"] += 1
            for job in jobs:
                self._run_alone(job)
            return
        if isinstance(outcome, Exception):
            self._run_alone(jobs[0], outcome)
            return
        if jobs[0].explain is not None:  # always alone: (rows, explanations)
            _resolve(jobs[0], outcome)
            return
        start = 0
        for job in jobs:
            _resolve(job, outcome[start : start + len(job.texts)])
            start += len(job.texts)

    def _run_alone(self, job, failure=None):
        """A job on its own; if it fails, its request gets a 500 naming the description the model failed on."""
        outcome = failure if failure is not None else self._attempt(job.texts, alone=True, explain=job.explain)
        if not isinstance(outcome, Exception):
            _resolve(job, outcome)
            return
        log.error("inference failed on a request of %d descriptions: %r", len(job.texts), outcome)
        index = 0 if len(job.texts) == 1 else None
        for i, text in enumerate(job.texts if len(job.texts) > 1 else ()):
            if isinstance(self._attempt([text], alone=True), Exception):
                index = i
                break
        self.stats["failed_requests"] += 1
        _resolve(job, TaggingFailed(index))

    def _attempt(self, texts, alone, explain=None):
        """The probabilities of `texts` (with `explain`: and their explanations), or the exception that stopped
        them (the worker never raises it)."""
        try:
            rows = np.asarray(self._probabilities(texts, alone))
            if rows.ndim != 2 or len(rows) != len(texts):
                raise RuntimeError(f"the model returned {rows.shape} probabilities for {len(texts)} descriptions")
            if explain is not None:
                from genre_tagger.explain import explain as explain_texts

                return rows, explain_texts(self.tagger, texts, probabilities=rows, **explain)
            return rows
        except Exception as err:  # noqa: BLE001 - reported to the request(s) it belongs to
            return err


class Explainer(Batcher):
    """The worker of `"explain": true` requests, beside the Batcher: an explanation is one forward pass per
    word of each description, and on the Batcher's thread it would hold every plain request behind it.
    Each request runs alone (so its numbers are predict.py --explain --json's); at most `max_waiting`
    requests wait while one runs, more are ServerBusy."""

    thread_name = "explainer"

    def __init__(self, tagger, batch_size=32, max_waiting=4):
        super().__init__(tagger, max_batch=1, wait_ms=0, batch_size=batch_size, max_waiting=max_waiting)

    def _cost(self, texts):
        return 1

    def _gather(self, jobs):
        return None


def _resolve(job, outcome):
    """Hand a job's outcome to its request on the event loop; a loop already closed has no one waiting."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, outcome)
    except RuntimeError:
        pass


def _settle(future, outcome):
    if future.done():  # the client went away and its request was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# %% Body limits


class BodyLimits:
    """ASGI middleware for request bodies: over `max_bytes` gets 413 before the app reads any of it, a body
    that is not declared as JSON gets 415, one that is not UTF-8 gets 422 and one that is not all in within
    `body_timeout_s` gets 408. It also tells the batcher that a tag request is on its way, and counts the
    requests in flight and those cut off at shutdown."""

    def __init__(self, app, max_bytes, batcher, body_timeout_s=30.0):
        self.app, self.max_bytes, self.batcher, self.body_timeout_s = app, max_bytes, batcher, body_timeout_s
        self.in_flight = 0
        self.cut_off = 0  # requests cancelled before their answer (uvicorn's --graceful-timeout-s ran out)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.in_flight += 1
        try:
            if scope["method"] in ("GET", "HEAD", "OPTIONS"):
                return await self.app(scope, receive, tracked_send)
            if scope["path"] == f"/{API_VERSION}/tag":
                self.batcher.arrived(scope)
            try:
                await self._limited(scope, receive_within(receive, self.body_timeout_s), tracked_send)
            except BodyTooSlow:
                if not started:
                    message = f"the request body did not arrive within {self.body_timeout_s:g} s; send it whole"
                    await _error(send, 408, message)
            finally:
                self.batcher.settled(scope)
        except asyncio.CancelledError:  # uvicorn's --graceful-timeout-s ran out on this request
            self.cut_off += 1
            if not started:  # the client hears why, instead of a dropped connection
                message = "the server stopped before this request was answered; retry shortly"
                try:
                    await _error(send, 503, message)
                except Exception:  # noqa: BLE001 - the connection is already gone
                    pass
        finally:
            self.in_flight -= 1

    async def _limited(self, scope, receive, send):
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            shown = content_type.decode("latin-1")[:60]
            await self._discard_body(receive, headers)
            return await _error(send, 415, f"content-type must be application/json, not {shown!r}")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._discard_body(receive, headers)
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client disconnected
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._discard_body(receive, headers, more)
                return await self._too_large(send)
        if problem := _utf8_problem(b"".join(chunks)):
            return await _error(send, 422, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _discard_body(self, receive, headers, more=True):
        """Read and drop a refused body (up to DISCARD_LIMIT) so that a client which sends all of its body
        before reading the answer gets the 4xx instead of a broken pipe; larger ones are cut off."""
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > DISCARD_LIMIT:
            return
        read = 0
        while more and read <= DISCARD_LIMIT:
            try:
                message = await receive()
            except BodyTooSlow:  # the refusal is still what the client hears
                return
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _too_large(self, send):
        message = f"request body is larger than {self.max_bytes} bytes; send fewer or shorter descriptions"
        await _error(send, 413, message)


def _utf8_problem(body):
    """Why a body is not UTF-8 (naming the description that is not, where it can), or None."""
    try:
        body.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        message = f"body is not valid UTF-8 (byte {err.start}); send JSON encoded as UTF-8"
        try:  # where the rest is JSON, name the description that holds the bad bytes
            descriptions = json.loads(body.decode("utf-8", "surrogateescape"))["descriptions"]
            index = next(i for i, text in enumerate(descriptions) if re.search(r"[\udc80-\udcff]", str(text)))
        except Exception:  # noqa: BLE001 - not JSON, no descriptions list, nested too deep: the body as a whole
            return message
        return f"descriptions[{index}] is not valid UTF-8 (byte {err.start} of the body); send JSON encoded as UTF-8"


async def _error(send, status, message):
    """A JSON error sent before the app has read the body; the connection is closed after it."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# %% The app


def _validation_message(errors):
    """One line naming each problem, e.g. `descriptions[2]: Input should be a valid string`."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ""
        for part in location:
            if part.isdigit():
                where += f"[{part}]"
            elif not part.startswith(("function-", "literal[", "float", "int", "list[", "str", "none")):
                where += f".{part}" if where else part
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            parts.append('body is not valid JSON; send a JSON object like {"descriptions": ["A detective ..."]}')
        elif error.get("type") == "missing" and not where:
            parts.append('body is missing; send a JSON object like {"descriptions": ["A detective ..."]}')
        elif error.get("type") == "extra_forbidden":
            parts.append(
                f"unknown field {where!r}; the fields are descriptions, threshold, max_genres, min_genres, top_k, explain"
            )
        elif error.get("type") == "model_attributes_type":
            parts.append('body must be a JSON object like {"descriptions": ["A detective ..."]}')
        elif error.get("type") == "too_short" and where == "descriptions":
            parts.append("descriptions is empty; give at least one description to tag")
        elif error.get("type") == "too_long":
            limit, actual = error["ctx"]["max_length"], error["ctx"].get("actual_length")
            parts.append(f"{where}: at most {limit} per request, got {actual}; split them over several requests")
        elif not where or message.startswith(where):
            parts.append(message)
        else:
            parts.append(f"{where}: {message}")
    return "; ".join(dict.fromkeys(parts))


def create_app(
    run,
    max_batch=64,
    batch_wait_ms=5.0,
    batch_size=32,
    max_descriptions=64,
    max_body_bytes=1 << 20,
    max_explain_descriptions=8,
    max_explain_queue=4,
    body_timeout_s=30.0,
    review=None,
    review_strategy="uncertain",
):
    """The FastAPI app serving `run` (a ServedRun); with `review` (a ReviewStore), the review page and API too."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException

    max_chars = CHARS_PER_TOKEN * (run.description.get("max_tokens") or DEFAULT_MAX_TOKENS)
    TagRequest, TagResponse = _load_schemas(max_descriptions, max_chars, max_explain_descriptions)
    batcher = Batcher(run.tagger, max_batch=max_batch, wait_ms=batch_wait_ms, batch_size=batch_size)
    explainer = Explainer(run.tagger, batch_size=batch_size, max_waiting=max_explain_queue)
    settings = {
        "max_description_chars": max_chars,
        "max_batch": max_batch,
        "batch_wait_ms": batch_wait_ms,
        "batch_size": batch_size,
        "max_descriptions_per_request": max_descriptions,
        "max_body_bytes": max_body_bytes,
        "max_explain_descriptions": max_explain_descriptions,
        "max_explain_queue": max_explain_queue,
        "body_timeout_s": body_timeout_s,
    }

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        explainer.start()
        yield
        batcher.stop()  # uvicorn calls this after in-flight requests have finished
        explainer.stop()

    app = FastAPIOffline(
        title="genre-tagger",
        version=API_VERSION,
        description="Tags movie plot descriptions with every genre that fits. `POST /v1/tag` is the API; `/` is a page to try it.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no such page: {request.url.path}; the API is under /v1 (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        elif exc.status_code == 400 and message == "There was an error parsing the body":  # JSON past the parser
            message = (
                "body could not be read as JSON (nested too deeply, or a number with too many digits); "
                'send a JSON object like {"descriptions": ["A detective ..."]}'
            )
            return JSONResponse({"error": message}, status_code=422)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error while tagging; the server log has the details"}, status_code=500)

    @app.post(f"/{API_VERSION}/tag", response_model=TagResponse, summary="Tag descriptions with genres")
    async def tag(body: TagRequest, request: Request):
        """Per description: the genres at or above the threshold (highest first) and every genre's probability."""
        if isinstance(body.threshold, str) and body.threshold not in run.thresholds:
            return JSONResponse({"error": f"this run has no {body.threshold} thresholds; use a number"}, 422)
        thresholds = run.thresholds.get(body.threshold, body.threshold)
        if body.max_genres is not None and body.top_k is not None and body.max_genres != body.top_k:
            return JSONResponse({"error": "max_genres and top_k are the same setting; give one of them"}, 422)
        max_genres = body.max_genres if body.max_genres is not None else body.top_k
        if max_genres is not None and body.min_genres > max_genres:
            return JSONResponse({"error": f"min_genres ({body.min_genres}) exceeds max_genres ({max_genres})"}, 422)
        batcher.settled(request.scope)  # no longer on its way to the batcher, whichever worker takes it
        if body.explain and len(body.descriptions) > max_explain_descriptions:
            message = (
                f"explain takes at most {max_explain_descriptions} descriptions per request, got "
                f"{len(body.descriptions)}; split them over several requests"
            )
            return JSONResponse({"error": message}, 422)
        counts = {"top_k": max_genres, "min_genres": body.min_genres}
        explain = {"thresholds": thresholds, "labels": run.labels, **counts} if body.explain else None
        try:
            if body.explain:
                probabilities = await explainer.probabilities(body.descriptions, explain=explain)
            else:
                probabilities = await batcher.probabilities(body.descriptions)
        except ServerBusy:
            waiting = "explanations" if body.explain else "descriptions"
            message = f"server busy: too many {waiting} waiting; retry in {RETRY_AFTER_S} s"
            return JSONResponse({"error": message}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})
        except NotServing:
            return JSONResponse({"error": "server is shutting down; retry shortly"}, 503)
        except TaggingFailed as err:
            return JSONResponse({"error": str(err)}, 500)
        probabilities, explanations = probabilities if body.explain else (probabilities, None)
        decoded = decode(probabilities, run.labels, thresholds, max_genres, body.min_genres)
        results = [
            result_record(text, row, genres, run.labels)
            for text, row, genres in zip(body.descriptions, probabilities, decoded)
        ]
        for record, explanation in zip(results, explanations or ()):
            record["explanations"] = explanation
        return JSONResponse({"threshold": body.threshold, "results": results})

    @app.get(f"/{API_VERSION}/genres", summary="The genres the model tags, in its output order")
    async def genres():
        return {"genres": run.labels}

    @app.get(f"/{API_VERSION}/model", summary="The run being served: base model, metrics, thresholds, version")
    async def model():
        return finite_or_null(
            {"api_version": API_VERSION, **run.description, "thresholds": run.saved_thresholds, "serving": settings}
        )

    @app.get(f"/{API_VERSION}/stats", summary="Requests, descriptions and batches served so far")
    async def stats():
        explaining = {**explainer.stats, "waiting": explainer.waiting}
        return {**batcher.stats, "waiting": batcher.waiting, "arriving": batcher.arriving, "explain": explaining}

    @app.get("/healthz", summary="Alive: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: the model is loaded and the batcher runs")
    async def readyz():
        if not (batcher.alive and explainer.alive):
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "model": run.description["model_sha256"][:12]}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_FOLDER / "index.html")

    if review is not None:
        from genre_tagger.review_api import mount_review

        mount_review(app, review, review_strategy)
    app.mount("/static", StaticFiles(directory=WEB_FOLDER), name="static")
    limited = BodyLimits(app, max_body_bytes, batcher, body_timeout_s)
    limited.state = app.state
    return limited
