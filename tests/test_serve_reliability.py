"""One request can only fail itself: serve.py's app against a fake fast tagger (no trained run needed).

Refused text is a 4xx naming the description while a well-formed request in the same moment is served; a
batch that fails is run again request by request; the batcher outlives any error; arbitrary bodies never
get a 5xx (hypothesis); 32 clients keep being served while another sends malformed requests.
"""

import asyncio
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, free_port, run_script
from genre_tagger import UserError
from genre_tagger.serving import Batcher, Explainer, ServedRun, TaggingFailed, create_app

MAX_TOKENS = 8  # so descriptions over 8 * 64 = 512 characters are refused
FAIL_MARK = "MAKES-THE-MODEL-FAIL"


class FakeTagger:
    """Stands in for OnnxTagger: fast, records its batches, fails on any batch holding FAIL_MARK and, as the
    real tokenizer does, on text that is not Unicode (lone surrogates)."""

    max_length = MAX_TOKENS

    def __init__(self, delay_s=0.0):
        self.delay_s, self.batches = delay_s, []

    def probabilities(self, texts, batch_size):
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        for text in texts:
            text.encode("utf-8")  # UnicodeEncodeError on a lone surrogate, like tokenizers' own refusal
        if any(FAIL_MARK in text for text in texts):
            raise RuntimeError("the model choked")
        return np.array([[min(len(text), 100) / 100, 0.5] for text in texts], dtype=np.float32)


def fake_run(tagger):
    description = {"run": "fake", "base_model": "fake", "genres": 2, "onnx_variant": "int8"}
    description.update(model_sha256="0" * 64, max_tokens=MAX_TOKENS, verified=True, metrics={}, settings={})
    return ServedRun(["Action", "Drama"], {"default": 0.3}, {"default": 0.3}, description, tagger)


class LiveServer:
    """The app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app, **config):
        import uvicorn

        self.app = app
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", limit_concurrency=256, **config)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()


@pytest.fixture(scope="module")
def live():
    """A server whose batches wait up to 300 ms for requests on their way (so concurrent ones share one)."""
    tagger = FakeTagger()
    server = LiveServer(create_app(fake_run(tagger), batch_wait_ms=300))
    server.tagger = tagger
    yield server
    server.stop()


GOOD = json.dumps({"descriptions": ["A retired hitman seeks revenge.", "Two strangers fall in love."]}).encode()


def post(url, body, client=None):
    headers = {"content-type": "application/json"}
    if client is not None:
        return client.post(url + "/v1/tag", content=body, headers=headers)
    with httpx.Client(timeout=60) as fresh:
        return fresh.post(url + "/v1/tag", content=body, headers=headers)


def at_once(*calls):
    """Run each zero-argument call in its own thread at the same moment; their results in order."""
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def work(i):
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def deep(levels):
    return b'{"descriptions": ' + b"[" * levels + b"]" * levels + b"}"


# One body per class of input the tokenizer or model would refuse, each next to a well-formed description.
REFUSED = {
    "lone surrogate": (rb'{"descriptions": ["A heist.", "x \ud800 y"]}', "descriptions[1] has a lone surrogate"),
    "encoded surrogate": (b'{"descriptions": ["A heist.", "x \xed\xa0\x80 y"]}', "descriptions[1] is not valid UTF-8"),
    "invalid UTF-8": (b'{"descriptions": ["A heist.", "caf\xe9 noir"]}', "descriptions[1] is not valid UTF-8"),
    "invalid UTF-8 outside text": (b'{"descriptions": ["A heist."]}\xff', "body is not valid UTF-8"),
    "NUL": (rb'{"descriptions": ["A heist.", "nul \u0000 here"]}', "descriptions[1] has a NUL character"),
    "control character": (rb'{"descriptions": ["A heist.", "bell \u0007"]}', "descriptions[1] has a control char"),
    "C1 control": (rb'{"descriptions": ["A heist.", "\u009b31m red"]}', "descriptions[1] has a control char"),
    "too long": (json.dumps({"descriptions": ["A heist.", "word " * 103]}).encode(), "descriptions[1] is 515 char"),
    "not a string": (b'{"descriptions": ["A heist.", {"nested": [1, [2]]}]}', "descriptions[1]"),
    "a number": (b'{"descriptions": ["A heist.", 1e999]}', "descriptions[1]"),
    "huge top_k": (b'{"descriptions": ["A heist."], "top_k": 1e999}', "top_k"),
    "too many digits": (b'{"descriptions": ["A heist."], "top_k": ' + b"9" * 5000 + b"}", "too many digits"),
    "nested deep": (deep(50_000), "nested too deeply"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_text_is_a_4xx_naming_it_while_a_request_beside_it_is_served(live, name):
    body, says = REFUSED[name]
    refused, served = at_once(lambda: post(live.url, body), lambda: post(live.url, GOOD))
    assert 400 <= refused.status_code < 500, refused.text
    assert says in refused.json()["error"]
    assert "Traceback" not in refused.text
    assert served.status_code == 200, served.text
    assert len(served.json()["results"]) == 2


def test_ordinary_whitespace_and_any_unicode_are_tagged(live):
    body = json.dumps({"descriptions": ["Tabs\tand\r\nnewlines\x0b\x0c are fine.", "Émigrés 🎬 in 東京\u200d."]})
    response = post(live.url, body.encode())
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["description"] == "Tabs and newlines are fine."
    assert live.app.state.batcher.alive


def test_a_failing_batch_is_retried_request_by_request():
    tagger = FakeTagger()
    server = LiveServer(create_app(fake_run(tagger), batch_wait_ms=0))
    entered, held = threading.Event(), threading.Event()
    real = tagger.probabilities

    def hold_first_batch(texts, batch_size):  # the worker is busy while the next requests queue up together
        if texts == ["Hold."]:
            entered.set()
            held.wait(30)
        return real(texts, batch_size)

    tagger.probabilities = hold_first_batch
    bodies = [json.dumps({"descriptions": [f"Request {i}.", f"Plot {i}."]}).encode() for i in range(4)]
    bodies[2] = json.dumps({"descriptions": ["Fine.", f"Broken {FAIL_MARK}.", "Also fine."]}).encode()

    def release_when_queued():
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/v1/stats").json()["waiting"] < 9 and time.monotonic() < deadline:
            time.sleep(0.02)
        held.set()
        return post(server.url, json.dumps({"descriptions": ["Hold."]}).encode())

    try:
        holding = threading.Thread(target=lambda: post(server.url, json.dumps({"descriptions": ["Hold."]}).encode()))
        holding.start()
        assert entered.wait(30)
        *responses, _ = at_once(*(lambda body=body: post(server.url, body) for body in bodies), release_when_queued)
        holding.join(30)
        stats = httpx.get(server.url + "/v1/stats").json()
    finally:
        held.set()
        server.stop()
    for i, response in enumerate(responses):
        if i == 2:
            assert response.status_code == 500
            assert response.json()["error"].startswith("the model failed on descriptions[1]")
        else:
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["description"] == f"Request {i}."
    assert stats["retried_batches"] == 1 and stats["failed_requests"] == 1  # they met in one batch, which failed
    runs = [batch for batch in tagger.batches if batch != ["Hold."]]
    requests = [json.loads(body)["descriptions"] for body in bodies]
    assert all(request in runs for request in requests)  # after the failed batch, each request ran alone
    failing = runs.index(requests[2])
    assert runs[failing + 1 : failing + 3] == [["Fine."], [f"Broken {FAIL_MARK}."]]  # then one by one to the bad one


def test_an_explanation_that_fails_fails_only_its_own_request():
    tagger = FakeTagger(delay_s=0.01)
    real = tagger.probabilities

    def occlusion_fails(texts, batch_size):  # the plain pass of "doomed" works; its leave-one-out batch fails
        if len(texts) > 1 and any("doomed" in text for text in texts):
            raise RuntimeError("the model choked on the variants")
        return real(texts, batch_size)

    tagger.probabilities = occlusion_fails
    server = LiveServer(create_app(fake_run(tagger), batch_wait_ms=5))
    bodies = [{"descriptions": [f"Plot {i} of a film."]} for i in range(4)]
    bodies += [{"descriptions": ["A doomed explanation."], "explain": True}]
    bodies += [{"descriptions": ["A longer plot about a heist."], "explain": True, "threshold": 0.1}]
    try:
        responses = at_once(*(lambda body=body: post(server.url, json.dumps(body).encode()) for body in bodies))
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 500, 200]
    assert "the model failed" in responses[4].json()["error"]
    (explained,) = responses[5].json()["results"]
    assert [g["genre"] for g in explained["explanations"]["genres"]] == ["Drama", "Action"]
    assert all("explanations" not in r.json()["results"][0] for r in responses[:4])


class HeldExplanations:
    """Makes a FakeTagger's calls on the explainer's thread wait until released: an explanation in progress."""

    def __init__(self, tagger):
        self.entered, self.released, self.real = threading.Event(), threading.Event(), tagger.probabilities
        tagger.probabilities = self.probabilities

    def probabilities(self, texts, batch_size):
        if threading.current_thread().name == "explainer":
            self.entered.set()
            assert self.released.wait(60), "the explanation was never released"
        return self.real(texts, batch_size)


def in_background(call):
    """Start `call` in a thread; the returned function waits for it and gives its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()

    def outcome():
        thread.join(60)
        return result["value"]

    outcome.done = lambda: not thread.is_alive()
    return outcome


def explain_body(*descriptions):
    return json.dumps({"descriptions": list(descriptions), "explain": True, "threshold": 0.1}).encode()


def test_plain_tagging_is_answered_while_an_explanation_runs():
    tagger = FakeTagger()
    held = HeldExplanations(tagger)
    server = LiveServer(create_app(fake_run(tagger), batch_wait_ms=0))
    try:
        explaining = in_background(lambda: post(server.url, explain_body("A long plot about a heist.")))
        assert held.entered.wait(30)
        plain = post(server.url, GOOD)
        assert plain.status_code == 200, plain.text
        assert [r["description"] for r in plain.json()["results"]] == json.loads(GOOD)["descriptions"]
        assert not explaining.done()  # answered while the explanation still held its worker
        held.released.set()
        explained = explaining()
    finally:
        held.released.set()
        server.stop()
    assert explained.status_code == 200, explained.text
    assert [g["genre"] for g in explained.json()["results"][0]["explanations"]["genres"]] == ["Drama", "Action"]


def test_explain_requests_past_the_queue_bound_get_503_with_retry_after():
    tagger = FakeTagger()
    held = HeldExplanations(tagger)
    server = LiveServer(create_app(fake_run(tagger), batch_wait_ms=0, max_explain_queue=1))
    try:
        running = in_background(lambda: post(server.url, explain_body("The one being explained.")))
        assert held.entered.wait(30)
        queued = in_background(lambda: post(server.url, explain_body("The one waiting.")))
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/v1/stats").json()["explain"]["waiting"] < 1:
            assert time.monotonic() < deadline, "the second explanation never queued"
            time.sleep(0.02)
        refused = post(server.url, explain_body("One too many."))
        plain = post(server.url, GOOD)
        held.released.set()
        answered = [running(), queued()]
    finally:
        held.released.set()
        server.stop()
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"].isdigit()
    assert "too many explanations waiting; retry in" in refused.json()["error"]
    assert plain.status_code == 200, plain.text
    assert [r.status_code for r in answered] == [200, 200]


def test_explain_takes_at_most_the_configured_descriptions(client):
    many = explain_body(*(f"Plot number {i}." for i in range(9)))
    refused = client.post("/v1/tag", content=many, headers={"content-type": "application/json"})
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("explain takes at most 8 descriptions per request, got 9")
    unexplained = json.dumps({"descriptions": [f"Plot number {i}." for i in range(9)]}).encode()
    assert client.post("/v1/tag", content=unexplained, headers={"content-type": "application/json"}).status_code == 200
    eight = explain_body(*(f"Plot number {i}." for i in range(8)))
    response = client.post("/v1/tag", content=eight, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert all("explanations" in result for result in response.json()["results"])


def test_the_batcher_outlives_any_error_and_resolves_every_request():
    tagger = FakeTagger()

    async def scenario():
        batcher = Batcher(tagger, wait_ms=0)
        batcher.start()
        real_run, broken = batcher._run, {"times": 1}

        def run_once_broken(jobs):
            if broken["times"]:
                broken["times"] -= 1
                raise KeyError("a bug in the batcher itself")
            return real_run(jobs)

        batcher._run = run_once_broken
        with pytest.raises(TaggingFailed):
            await asyncio.wait_for(batcher.probabilities(["first"]), 10)
        tagger.probabilities = lambda texts, batch_size: np.zeros((len(texts) + 1, 2))  # wrong shape
        with pytest.raises(TaggingFailed):
            await asyncio.wait_for(batcher.probabilities(["second"]), 10)
        del tagger.probabilities
        rows = await asyncio.wait_for(batcher.probabilities(["third"]), 10)
        assert batcher.alive
        batcher.stop()
        assert not batcher.alive
        from genre_tagger.serving import NotServing

        with pytest.raises(NotServing):  # after stop: refused at once, never left waiting
            await asyncio.wait_for(batcher.probabilities(["late"]), 10)
        return rows

    assert asyncio.run(scenario()).shape == (1, 2)


def test_a_queued_request_cut_off_before_it_ran_is_never_run():
    tagger = FakeTagger()
    held = HeldExplanations(tagger)

    async def scenario():
        explainer = Explainer(tagger, max_waiting=4)
        explainer.start()
        settings = {"thresholds": 0.1, "labels": ["Action", "Drama"], "top_k": None, "min_genres": 0}
        running = asyncio.create_task(explainer.probabilities(["Being explained."], explain=settings))
        while not held.entered.is_set():
            await asyncio.sleep(0.01)
        cut_off = asyncio.create_task(explainer.probabilities(["Cut off while queued."], explain=settings))
        await asyncio.sleep(0)  # queued
        cut_off.cancel()
        held.released.set()
        rows, explanations = await asyncio.wait_for(running, 30)
        explainer.stop()
        return explainer.waiting, explainer.stats["requests"], explanations

    waiting, requests, explanations = asyncio.run(scenario())
    assert (waiting, requests) == (0, 1) and len(explanations) == 1
    assert not any("Cut off while queued." in text for batch in tagger.batches for text in batch)


# %% Hypothesis: arbitrary bodies never get a 5xx

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
ODD_CHARACTERS = st.sampled_from(list("\ud800\udbff\udc80\udfff\x00\x07\x1b\x1f\x7f\x85\x9b\t\n\r\x0b\x0c \u2028é🎬"))
ANY_TEXT = st.text(st.characters(exclude_categories=()) | ODD_CHARACTERS, max_size=600)  # surrogates, controls
TAG_BODIES = st.fixed_dictionaries(
    {"descriptions": st.lists(ANY_TEXT | JSON_VALUES, max_size=5) | JSON_VALUES},
    optional={
        "threshold": st.floats() | JSON_VALUES,
        "top_k": st.integers() | JSON_VALUES,
        "explain": st.booleans() | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
WELL_SHAPED = st.fixed_dictionaries({"descriptions": st.lists(ANY_TEXT, min_size=1, max_size=5)})
BODIES = (
    WELL_SHAPED.map(lambda body: json.dumps(body).encode())
    | TAG_BODIES.map(lambda body: json.dumps(body).encode())
    | JSON_VALUES.map(lambda body: json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    | st.binary(max_size=200)
)


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    with TestClient(create_app(fake_run(FakeTagger()), batch_wait_ms=0), raise_server_exceptions=False) as test:
        yield test


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=BODIES)
def test_arbitrary_bodies_never_get_a_5xx(client, body):
    response = client.post("/v1/tag", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 413, 422), (body[:300], response.text[:300])
    if response.status_code != 200:
        assert response.json()["error"]


# %% Load: 32 well-behaved clients and one malformed sender


def test_32_clients_are_served_while_one_sends_malformed_requests():
    server = LiveServer(create_app(fake_run(FakeTagger(delay_s=0.002)), batch_wait_ms=5))
    malformed = [body for body, _ in REFUSED.values() if len(body) < 10_000] + [
        rb'{"descriptions": ["fine", "x \udfff"]}',
        b'{"descriptions": ["fine", null, 3]}',
        b'{"descriptions": [',
    ]
    statuses, stop = {"good": [], "bad": []}, threading.Event()

    def well_formed(i):
        with httpx.Client(timeout=60) as session:
            for j in range(8):
                body = json.dumps({"descriptions": [f"Client {i} plot {j}."]}).encode()
                response = post(server.url, body, session)
                statuses["good"].append(response.status_code)
                assert response.status_code != 200 or response.json()["results"][0]["description"].startswith(
                    f"Client {i} plot {j}"
                )

    def malformed_sender():
        with httpx.Client(timeout=60) as session:
            while not stop.is_set():
                for body in malformed:
                    statuses["bad"].append(post(server.url, body, session).status_code)

    try:
        sender = threading.Thread(target=malformed_sender)
        sender.start()
        at_once(*(lambda i=i: well_formed(i) for i in range(32)))
        stop.set()
        sender.join(60)
    finally:
        stop.set()
        server.stop()
    assert statuses["good"] == [200] * 32 * 8
    assert statuses["bad"] and all(400 <= status < 500 for status in statuses["bad"]), set(statuses["bad"])


# %% serve.py's limits and startup errors: one line, exit 2


def load_serve_module():
    spec = importlib.util.spec_from_file_location("serve_script", ROOT / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--limit-concurrency", "0"], "--limit-concurrency must be a whole number between 1 and 65536"),
        (["--limit-concurrency", "10000000"], "--limit-concurrency must be a whole number between"),
        (["--timeout-keep-alive-s", "0"], "--timeout-keep-alive-s must be a whole number between 1 and 3600"),
        (["--timeout-keep-alive-s", "100000"], "--timeout-keep-alive-s must be a whole number between"),
        (["--graceful-timeout-s", "nan"], "--graceful-timeout-s must be a number between 0 and 3600"),
        (["--header-timeout-s", "0"], "--header-timeout-s must be a number between 0 and 3600 (0 excluded)"),
        (["--body-timeout-s", "3601"], "--body-timeout-s must be a number between 0 and 3600"),
        (["--max-explain-queue", "-1"], "--max-explain-queue must be a whole number between 0 and 65536"),
        (["--max-explain-descriptions", "0"], "--max-explain-descriptions must be a whole number between 1"),
    ],
)
def test_limit_flags_are_validated(flags, says):
    serve = load_serve_module()
    with pytest.raises(UserError) as refused:
        serve.build_parser().parse_args(flags)
    problem = str(refused.value)
    assert problem.startswith(says) and problem.endswith(f"not {flags[1]}") and "\n" not in problem
    defaults = serve.build_parser().parse_args([])
    assert (defaults.limit_concurrency, defaults.timeout_keep_alive_s) == (256, 5)
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10, 30)
    assert (defaults.max_explain_descriptions, defaults.max_explain_queue) == (8, 4)


def test_startup_errors_are_one_line_exit_2(tmp_path):
    refused = run_script("serve.py", "--model", tmp_path, "--limit-concurrency", "0")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --limit-concurrency must be a whole")
    assert len(refused.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_script("serve.py", "--model", tmp_path / "nothing", "--port", taken.getsockname()[1])
    assert busy.returncode == 2 and "choose another --port" in busy.stderr, busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    nowhere = run_script("serve.py", "--model", tmp_path / "nothing", "--host", "192.0.2.1", "--port", "0")
    assert nowhere.returncode == 2 and "could not listen on 192.0.2.1" in nowhere.stderr, nowhere.stderr
    not_a_port = run_script("serve.py", "--port", "abc")
    assert not_a_port.stderr == "error: --port must be a whole number between 0 and 65535, not abc\n"
    for flags in (["--no-such-flag"], ["--onnx-variant", "fp64"]):
        wrong = run_script("serve.py", *flags)
        assert wrong.returncode == 2 and wrong.stderr.startswith("error: ") and "--help" in wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    missing = run_script("serve.py", "--model", tmp_path / "nothing", "--port", "0")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no trained model at"), missing.stderr


# serve.py itself (its flags, its uvicorn settings) in its own process, on a fake tagger instead of a trained run.
FAKE_SERVE = """
import runpy, sys
sys.path.insert(0, sys.argv.pop(1))
import genre_tagger.serving as serving
from test_serve_reliability import FakeTagger, fake_run
serving.load_served_run = lambda *args, **kwargs: fake_run(FakeTagger())
sys.argv[0] = "serve.py"
runpy.run_path("serve.py", run_name="__main__")
"""


@contextmanager
def fake_serve(*flags):
    """serve.py on a free port with the fake run; stopped with SIGTERM afterwards, its stderr checked."""
    port = free_port()
    command = [sys.executable, "-c", FAKE_SERVE, str(ROOT / "tests"), "--port", str(port), *map(str, flags)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "serve.py did not become ready"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, port
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


def stalled(port, data):
    """A connection that sent `data` and nothing more."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.settimeout(30)  # far past the server's deadlines: a server that never answers fails the test
    connection.sendall(data)
    return connection


def everything_sent(connection):
    """What the server sends on `connection` until it closes it."""
    received = b""
    with connection:
        while chunk := connection.recv(65536):
            received += chunk
    return received


HALF_A_HEADER = b"POST /v1/tag HTTP/1.1\r\nHost: localhost\r\nContent-Ty"
TEN_OF_1000_BYTES = (
    b"POST /v1/tag HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    + b'{"descript'
)


def test_stalled_headers_and_bodies_get_408_and_free_their_connections():
    flags = ["--header-timeout-s", 0.5, "--body-timeout-s", 0.5, "--limit-concurrency", 6]
    with fake_serve(*flags) as (url, port):
        stalls = [stalled(port, HALF_A_HEADER), stalled(port, b""), stalled(port, TEN_OF_1000_BYTES)]
        meanwhile = post(url, GOOD)
        answers = [everything_sent(connection) for connection in stalls]
        # Had the three kept their connections, these four and the next request would pass --limit-concurrency.
        more_stalls = [stalled(port, HALF_A_HEADER) for _ in range(4)]
        afterwards = post(url, GOOD)
        later_answers = [everything_sent(connection) for connection in more_stalls]
    assert meanwhile.status_code == 200 and afterwards.status_code == 200, (meanwhile.text, afterwards.text)
    for answer in [*answers[:2], *later_answers]:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body)["error"].startswith("the request line and headers did not arrive within 0.5 s")
    head, _, body = answers[2].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"application/json" in head, answers[2]
    assert json.loads(body)["error"].startswith("the request body did not arrive within 0.5 s")


def test_headers_past_the_size_limit_are_refused_in_bounded_memory():
    with fake_serve() as (url, port):
        connection = stalled(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: ")
        try:
            for _ in range(64):  # 4 MiB, far past MAX_HEADER_BYTES, unless the server closes first
                connection.sendall(b"a" * 65536)
            answer = everything_sent(connection)
        except ConnectionError:  # closed while this side was still sending: the 431 may be lost with it
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
        assert httpx.get(url + "/healthz").status_code == 200


def test_stopped_message_tells_the_truth():
    serve = load_serve_module()
    assert serve.stopped_message(0, 30) == "stopped: in-flight requests finished"
    cut = serve.stopped_message(3, 1.5)
    assert "finished" not in cut and "3 in-flight requests were cut off" in cut and "1.5 s" in cut
    assert "1 in-flight request was cut off" in serve.stopped_message(1, 1)


def test_the_model_endpoint_shows_non_finite_figures_as_null():
    from fastapi.testclient import TestClient

    served = fake_run(FakeTagger())
    served.description["metrics"] = {"test": {"macro_f1": float("nan"), "macro_roc_auc": 0.75}}
    served.saved_thresholds = {"default": 0.3, "per_label": {"Action": float("inf"), "Drama": 0.4}}
    with TestClient(create_app(served, batch_wait_ms=0), raise_server_exceptions=False) as test:
        response = test.get("/v1/model")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metrics"]["test"] == {"macro_f1": None, "macro_roc_auc": 0.75}
    assert body["thresholds"]["per_label"] == {"Action": None, "Drama": 0.4}
