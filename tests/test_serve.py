"""serve.py as a user runs it: a live server on a free port, a real HTTP client, a real headless browser."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ROOT, free_port, run_script
from genre_tagger.common import sha256_of
from genre_tagger.run import Run


def labels_of(folder):
    with Run.open(folder) as run:
        return run.labels


DESCRIPTIONS = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two   strangers fall in love\nduring one night in Vienna.  ",
    "A family moves into a farmhouse haunted by a malevolent presence. " * 40,  # past the model's token limit
]


@pytest.fixture(scope="module")
def trained(trained):
    """The shared tiny trained run (conftest), as the folder serve.py loads."""
    return trained["output"]


class Server:
    """serve.py in its own process on a free port; stopped (SIGTERM) when the test is done with it."""

    def __init__(self, model, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "serve.py", "--model", str(model), "--port", str(self.port), *map(str, flags)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve.py exited with {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("serve.py did not become ready in 120 s")

    def stop(self):
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stdout.read()


@pytest.fixture(scope="module")
def server(trained):
    running = Server(trained)
    yield running
    running.stop()


def tag(server, **body):
    return server.client.post("/v1/tag", json=body)


def test_tag_explain_gives_predict_explain_json(server, trained):
    """ "explain": true returns exactly predict.py --explain --json's attributions, offsets included."""
    expected = run_script("predict.py", "--model", trained, "--explain", "--json", "--threshold", "0.05", *DESCRIPTIONS)
    assert expected.returncode == 0, expected.stderr
    records = [json.loads(line) for line in expected.stdout.splitlines()]
    # Another client's plain request in flight at the same time changes nothing: an explanation runs on its own.
    with httpx.Client(base_url=server.url, timeout=120) as other:
        thread = threading.Thread(target=lambda: other.post("/v1/tag", json={"descriptions": DESCRIPTIONS * 5}))
        thread.start()
        response = tag(server, descriptions=DESCRIPTIONS, explain=True, threshold=0.05)
        thread.join()
    assert response.status_code == 200, response.text
    assert response.json()["results"] == records
    assert any(r["explanations"]["genres"] for r in records)
    assert [r["explanations"]["truncated"] for r in records] == [False, False, True]
    plain = tag(server, descriptions=DESCRIPTIONS[:1]).json()["results"][0]
    assert "explanations" not in plain
    refused = tag(server, descriptions=["   "], explain=True)
    assert refused.status_code == 422 and "empty" in refused.json()["error"]
    refused = tag(server, descriptions=["x" * 10**6], explain=True)
    assert refused.status_code in (413, 422)
    refused = tag(server, descriptions=["A dog."], explain="yes")
    assert refused.status_code == 422 and "explain" in refused.json()["error"]
    docs = server.client.get("/openapi.json").json()["components"]["schemas"]["TagRequest"]["properties"]
    assert "which words pushed" in docs["explain"]["description"]


def test_tag_gives_predict_json_numbers(server, trained):
    """Same run, same descriptions: the API's records equal predict.py --json's, number for number."""
    cases = ((None, {}), ("tuned", {}), (0.45, {"top_k": 2}), ("default", {"max_genres": 2, "min_genres": 1}))
    cases += ((0.99, {"min_genres": 2}), (0.01, {"max_genres": 1}))
    for threshold, counts in cases:
        flags = ["--json"]
        body = {"descriptions": DESCRIPTIONS, **counts}
        if threshold is not None:
            flags += ["--threshold", str(threshold)]
            body["threshold"] = threshold
        for name, value in counts.items():
            flags += [
                {"top_k": "--top-k", "max_genres": "--max-genres", "min_genres": "--min-genres"}[name],
                str(value),
            ]
        expected = run_script("predict.py", "--model", trained, *flags, *DESCRIPTIONS)
        assert expected.returncode == 0, expected.stderr
        response = tag(server, **body)
        assert response.status_code == 200, response.text
        assert response.json()["results"] == [json.loads(line) for line in expected.stdout.splitlines()]
        if threshold == 0.99:  # nothing that likely: the two most probable genres, below the threshold
            assert all(len(r["genres"]) == 2 for r in response.json()["results"])
        if threshold == 0.01:
            assert all(len(r["genres"]) == 1 for r in response.json()["results"])
    for counts, says in (
        ({"top_k": 2, "max_genres": 3}, "same setting"),
        ({"min_genres": 3, "max_genres": 2}, "exceeds"),
    ):
        refused = tag(server, descriptions=DESCRIPTIONS, **counts)
        assert refused.status_code == 422 and says in refused.json()["error"]
    results = tag(server, descriptions=DESCRIPTIONS, threshold=0.01).json()["results"]
    assert results[1]["description"] == "Two strangers fall in love during one night in Vienna."
    assert len(results[2]["genres"]) == len(labels_of(trained))  # the long one is tagged on its first tokens


def test_tag_from_the_run_zip(trained):
    zipped = Server(trained.with_suffix(".zip"))
    try:
        response = tag(zipped, descriptions=DESCRIPTIONS[:1])
        assert response.status_code == 200
        assert zipped.client.get("/v1/model").json()["run"].endswith(".zip")
    finally:
        zipped.stop()


def test_genres_model_health_and_docs(server, trained):
    assert server.client.get("/v1/genres").json() == {"genres": labels_of(trained)}
    model = server.client.get("/v1/model").json()
    saved = json.loads((trained / "thresholds.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert model["api_version"] == "v1"
    assert model["thresholds"] == saved
    assert model["base_model"] == metrics["base_model"]
    assert model["metrics"]["test"]["macro_f1"] == metrics["test"]["macro_f1"]
    onnx = json.loads((trained / "onnx.json").read_text())
    assert model["onnx_variant"] == onnx["default"]
    assert model["model_sha256"] == sha256_of(trained / onnx["files"][onnx["default"]])
    assert model["verified"] is True
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json()["status"] == "ready"
    assert "/v1/tag" in server.client.get("/openapi.json").json()["paths"]
    docs = server.client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()  # the docs page works offline: its assets come from the app
    assert server.client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_page_is_served_whole_by_the_app(server):
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        response = server.client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text, asset
    assert "http://" not in page.text and "https://" not in page.text
    assert 'name="viewport"' in page.text


TOO_MANY = {"descriptions": ["A heist goes wrong."] * 65}

BAD_BODIES = [
    ({"descriptions": []}, 422, "at least one description"),
    ({"descriptions": ["   \n\t "]}, 422, "descriptions[0] is empty"),
    ({"descriptions": ["A heist.", ""]}, 422, "descriptions[1] is empty"),
    ({"descriptions": "A heist goes wrong."}, 422, "list of strings"),
    ({"descriptions": ["A heist.", 7]}, 422, "descriptions[1]"),
    ({"descriptions": [None]}, 422, "descriptions[0]"),
    ({"descriptions": [["nested"]]}, 422, "descriptions[0]"),
    ({}, 422, "descriptions"),
    ({"descriptions": ["A heist."], "genre": "Crime"}, 422, "unknown field 'genre'"),
    ({"descriptions": ["A heist."], "threshold": 0}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": 1}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": 1.5}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": -0.2}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": "0.3"}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": "best"}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": True}, 422, "threshold"),
    ({"descriptions": ["A heist."], "threshold": None}, 422, "threshold"),
    ({"descriptions": ["A heist."], "top_k": 0}, 422, "top_k"),
    ({"descriptions": ["A heist."], "top_k": "3"}, 422, "top_k"),
    ({"descriptions": ["A heist."], "top_k": 2.5}, 422, "top_k"),
    (TOO_MANY, 422, "at most 64 per request, got 65"),
    ([{"descriptions": ["A heist."]}], 422, "JSON object"),
    ("A heist goes wrong.", 422, "JSON object"),
    (None, 422, "JSON object"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_BODIES, ids=[f"bad{i}" for i in range(len(BAD_BODIES))])
def test_bad_json_bodies_get_4xx_json(server, body, status, says):
    response = server.client.post("/v1/tag", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b'{"descriptions": ["A heist."', {"content-type": "application/json"}, 422, "not valid JSON"),
        (b"", {"content-type": "application/json"}, 422, "body is missing"),
        (b'{"descriptions": ["A heist."], "threshold": NaN}', {"content-type": "application/json"}, 422, "threshold"),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}, 422, "body is not valid UTF-8"),
        (b'{"descriptions": ["A heist.", "x \\ud800"]}', {"content-type": "application/json"}, 422, "descriptions[1]"),
        (b"descriptions=A+heist", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (b'{"descriptions": ["A heist."]}', {"content-type": "text/plain"}, 415, "application/json"),
    ],
)
def test_malformed_bodies_get_4xx_json(server, content, headers, status, says):
    response = server.client.post("/v1/tag", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_oversized_body_gets_413_and_the_server_keeps_serving(server):
    huge = json.dumps({"descriptions": ["word " * 250_000]})  # 1.25 MB > the 1 MiB default
    declared = server.client.post("/v1/tag", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]

    def chunks():  # no content-length: the limit is counted as the body streams in
        for _ in range(130):
            yield b" " * 10_000

    with httpx.Client(base_url=server.url, timeout=60) as fresh:
        streamed = fresh.post("/v1/tag", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert tag(server, descriptions=DESCRIPTIONS[:1]).status_code == 200


def test_unknown_paths_and_methods_get_json(server):
    missing = server.client.get("/v2/tag")
    assert missing.status_code == 404 and "/v1" in missing.json()["error"]
    wrong = server.client.get("/v1/tag")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]


def test_server_keeps_serving_after_every_bad_request(server):
    for body, _, _ in BAD_BODIES:
        server.client.post("/v1/tag", content=json.dumps(body), headers={"content-type": "application/json"})
    assert tag(server, descriptions=DESCRIPTIONS[:1]).status_code == 200
    assert server.process.poll() is None


def concurrently(server, bodies):
    """POST each body from its own thread at once; responses in the order of `bodies`."""
    responses = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i):
        with httpx.Client(base_url=server.url, timeout=120) as client:
            start.wait()
            responses[i] = client.post("/v1/tag", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def assert_same_answers(responses, alone, tolerance):
    """Each response is its own description's, with the probabilities it gets alone (within `tolerance`)."""
    for response, expected in zip(responses, alone):
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["description"] == expected["description"]
        differences = [abs(result["probabilities"][g] - p) for g, p in expected["probabilities"].items()]
        assert max(differences) <= tolerance, (result, expected)


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_answer(trained, server):
    descriptions = [f"{text} Part {i}." for i, text in enumerate(DESCRIPTIONS * 3)]
    alone = [tag(server, descriptions=[d]).json()["results"][0] for d in descriptions]
    batching = Server(trained, "--batch-wait-ms", 2000)  # long enough that all 9 requests meet
    try:
        responses = concurrently(batching, [{"descriptions": [d]} for d in descriptions])
        # int8 dynamic quantization scales activations per batch, so batch-mates move a probability a
        # little (as in predict.py --input); the fp32 model below gives the same numbers in any batch.
        assert_same_answers(responses, alone, tolerance=0.02)
        stats = batching.client.get("/v1/stats").json()
        assert stats["requests"] == 9 and stats["batches"] < 9 and stats["largest_batch"] >= 2
    finally:
        batching.stop()
    fp32 = Server(trained, "--batch-wait-ms", 2000, "--onnx-variant", "fp32")
    try:
        alone_fp32 = [tag(fp32, descriptions=[d]).json()["results"][0] for d in descriptions]
        assert_same_answers(concurrently(fp32, [{"descriptions": [d]} for d in descriptions]), alone_fp32, 1e-4)
    finally:
        fp32.stop()
    unbatched = Server(trained, "--max-batch", 1)
    try:
        responses = concurrently(unbatched, [{"descriptions": [d]} for d in descriptions])
        assert [r.json()["results"][0] for r in responses] == alone
        stats = unbatched.client.get("/v1/stats").json()
        assert stats["batches"] == stats["requests"] == 9 and stats["largest_batch"] == 1
    finally:
        unbatched.stop()


def wait_for_stats(server, key, at_least):
    deadline = time.monotonic() + 60
    while server.client.get("/v1/stats").json()[key] < at_least:
        assert time.monotonic() < deadline, f"/v1/stats never showed {key} >= {at_least}"
        time.sleep(0.05)


def test_sigterm_finishes_in_flight_requests_then_exits(trained):
    slow = Server(trained, "--batch-wait-ms", 5000)
    release = threading.Event()
    outcome = {}

    def half_sent_body():  # a client still sending its body when the server is told to stop
        yield b'{"descriptions": ["A heist crew '
        release.wait(60)
        yield b'plans one last job."]}'

    def send(name, content):
        with httpx.Client(base_url=slow.url, timeout=120) as client:
            outcome[name] = client.post("/v1/tag", content=content, headers={"content-type": "application/json"})

    streaming = threading.Thread(target=send, args=("streaming", half_sent_body()))
    streaming.start()
    try:
        wait_for_stats(slow, "arriving", 1)
        queued = threading.Thread(target=send, args=("queued", json.dumps({"descriptions": DESCRIPTIONS[:2]})))
        queued.start()
        wait_for_stats(slow, "waiting", 2)  # queued, its batch waiting for the request on its way
        assert slow.client.get("/healthz").status_code == 200  # the event loop answers meanwhile
        assert "queued" not in outcome
        slow.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while True:  # shutting down: new connections are refused, the open ones go on
            try:
                httpx.get(slow.url + "/healthz", timeout=5)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the server kept accepting connections after SIGTERM"
            time.sleep(0.05)
        release.set()
        streaming.join(timeout=120)
        queued.join(timeout=120)
        assert slow.process.wait(timeout=60) == 0
    finally:
        release.set()
        log = slow.stop()
    assert outcome["streaming"].status_code == 200, log
    assert outcome["streaming"].json()["results"][0]["description"] == "A heist crew plans one last job."
    assert outcome["queued"].status_code == 200 and len(outcome["queued"].json()["results"]) == 2
    assert "Traceback" not in log
    assert log.strip().endswith("stopped: in-flight requests finished"), log


def test_sigterm_says_how_many_requests_the_graceful_timeout_cut_off(trained):
    """Past --graceful-timeout-s, the requests still in flight get a JSON 503 and the last line says so."""
    slow = Server(trained, "--batch-wait-ms", 10000, "--graceful-timeout-s", 1)
    release = threading.Event()
    outcome = {}

    def never_finished_body():
        yield b'{"descriptions": ["A heist crew '
        release.wait(60)
        yield b'plans one last job."]}'

    def send(name, content):
        with httpx.Client(base_url=slow.url, timeout=120) as client:
            try:
                outcome[name] = client.post("/v1/tag", content=content, headers={"content-type": "application/json"})
            except httpx.TransportError as err:
                outcome[name] = err

    streaming = threading.Thread(target=send, args=("streaming", never_finished_body()))
    streaming.start()
    try:
        wait_for_stats(slow, "arriving", 1)
        queued = threading.Thread(target=send, args=("queued", json.dumps({"descriptions": DESCRIPTIONS[:1]})))
        queued.start()
        wait_for_stats(slow, "waiting", 1)  # its batch waits (up to 10 s) for the request still on its way
        slow.process.send_signal(signal.SIGTERM)
        assert slow.process.wait(timeout=60) == 0
        queued.join(timeout=60)
    finally:
        release.set()
        streaming.join(timeout=60)
        log = slow.stop()
    assert outcome["queued"].status_code == 503, log
    assert "stopped before this request was answered" in outcome["queued"].json()["error"]
    last = log.strip().splitlines()[-1]
    assert last.startswith("stopped: --graceful-timeout-s (1 s) ran out; 2 in-flight requests were cut off"), log
    assert "finished" not in last and "Traceback" not in log


def test_a_run_without_manifest_is_served_with_a_visible_note(trained, tmp_path):
    legacy = tmp_path / "legacy-run"
    shutil.copytree(trained, legacy)
    (legacy / "manifest.json").unlink()
    unverified = Server(legacy)
    try:
        assert unverified.client.get("/v1/model").json()["verified"] is False
        assert tag(unverified, descriptions=DESCRIPTIONS[:1]).status_code == 200
    finally:
        log = unverified.stop()
    assert "note: " in log and "has no manifest.json" in log and "not verified" in log, log
    assert "files NOT verified" in log


class BlockingTagger:
    """Stands in for OnnxTagger: the first forward pass blocks until released; records every batch."""

    def __init__(self):
        self.release, self.batches = threading.Event(), []

    def probabilities(self, texts, batch_size):
        import numpy as np

        self.batches.append(list(texts))
        self.release.wait(60)
        return np.array([[len(text), 0.5] for text in texts], dtype=np.float32)


@pytest.mark.parametrize(
    ("max_batch", "batches"),
    [
        (64, [["a"], ["x" * 10, "y" * 11, "w" * 12], ["z" * 30]]),  # one batch, in two chunks of similar length
        (2, [["a"], ["x" * 10], ["z" * 30], ["y" * 11, "w" * 12]]),  # batches of at most 2, in arrival order
    ],
)
def test_batcher_runs_off_the_event_loop_and_gathers_what_queued(max_batch, batches):
    import asyncio

    from genre_tagger.serving import Batcher

    tagger = BlockingTagger()

    async def scenario():
        batcher = Batcher(tagger, max_batch=max_batch, wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.probabilities(["a"]))
        while not tagger.batches:
            await asyncio.sleep(0.01)  # the loop runs while the worker thread holds the batch
        later = [
            asyncio.create_task(batcher.probabilities([text])) for text in ("x" * 10, "z" * 30, "y" * 11, "w" * 12)
        ]
        await asyncio.sleep(0.05)
        assert not first.done() and batcher.waiting == 4
        tagger.release.set()
        results = await asyncio.gather(first, *later)
        batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [row[0][0] for row in results] == [1, 10, 30, 11, 12]  # each request got its own row back
    assert tagger.batches == batches


def test_bad_model_and_busy_port_are_one_line_errors(trained, tmp_path):
    missing = run_script("serve.py", "--model", tmp_path / "nothing-here", "--port", free_port())
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: no trained model at") and "Traceback" not in missing.stderr
    not_a_run = tmp_path / "notes.zip"
    not_a_run.write_text("not a zip")
    bad_zip = run_script("serve.py", "--model", not_a_run, "--port", free_port())
    assert bad_zip.returncode == 2 and "Traceback" not in bad_zip.stderr
    for flag, value in (("--max-batch", "0"), ("--threads", "-1"), ("--graceful-timeout-s", "-5"), ("--port", "70000")):
        refused = run_script("serve.py", "--model", trained, flag, value)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: {flag} must be a"), refused.stderr
        assert "between" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_script("serve.py", "--model", trained, "--port", taken.getsockname()[1])
    assert busy.returncode == 2 and "choose another --port" in busy.stderr


# %% The page in a real browser (Debian's chromium + chromium-driver; .ci/run installs them)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: a missing browser there is a broken .ci/run
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def bars_of(driver):
    from selenium.webdriver.common.by import By

    return [
        (item.get_attribute("data-genre"), float(item.get_attribute("data-probability")), item)
        for item in driver.find_elements(By.CSS_SELECTOR, "#bars li")
    ]


def tagged_genres(driver):
    return [genre for genre, _, item in bars_of(driver) if "tagged" in item.get_attribute("class").split()]


def test_page_tags_a_description_and_the_slider_remarks_it(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    description = DESCRIPTIONS[0]
    expected = tag(server, descriptions=[description]).json()["results"][0]["probabilities"]
    top_genre = max(expected, key=expected.get)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "description").send_keys(description)
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: len(bars_of(d)) == len(expected))

    bars = bars_of(browser)
    assert bars[0][0] == top_genre  # highest bar first
    assert {genre: p for genre, p, _ in bars} == expected
    top_width = bars[0][2].find_element(By.CSS_SELECTOR, ".fill").size["width"]
    low_width = bars[-1][2].find_element(By.CSS_SELECTOR, ".fill").size["width"]
    assert top_width > low_width > 0
    # First the run's default decisions: each genre at its own (calibrated) threshold, as predict.py tags.
    defaults = server.client.get("/v1/model").json()["thresholds"]["default_per_label"]
    by_run = [g for g, p, _ in bars if p >= defaults[g]]
    assert tagged_genres(browser) == by_run
    assert browser.find_element(By.ID, "threshold-value").text == "the run's default decisions"
    assert set(by_run) == {g["genre"] for g in tag(server, descriptions=[description]).json()["results"][0]["genres"]}

    requests_before = server.client.get("/v1/stats").json()["requests"]
    slider = browser.find_element(By.ID, "threshold")
    slider.send_keys(Keys.END)  # keyboard: the slider's top, 0.99
    wait_for(browser, lambda d: d.find_element(By.ID, "threshold-value").text == "0.99")
    assert tagged_genres(browser) == [g for g, p, _ in bars if p >= 0.99]
    if not tagged_genres(browser):
        assert f"the most likely is {top_genre}" in browser.find_element(By.ID, "summary").text
    slider.send_keys(Keys.HOME)  # 0.01: every genre of this model is tagged
    wait_for(browser, lambda d: d.find_element(By.ID, "threshold-value").text == "0.01")
    assert tagged_genres(browser) == [g for g, p, _ in bars if p >= 0.01]
    middle = sorted(expected.values())[len(expected) // 2]
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = arguments[0];s.dispatchEvent(new Event('input'));",
        f"{middle:.2f}",
    )
    assert tagged_genres(browser) == [g for g, p, _ in bars if p >= float(f"{middle:.2f}")]
    browser.find_element(By.ID, "use-defaults").click()  # back to the run's own decisions
    wait_for(browser, lambda d: d.find_element(By.ID, "threshold-value").text == "the run's default decisions")
    assert tagged_genres(browser) == by_run
    assert server.client.get("/v1/stats").json()["requests"] == requests_before  # no new request


@pytest.mark.parametrize("prefix", ["", "🎬🍿 "])
def test_clicking_a_genre_highlights_its_words(server, browser, prefix):
    """With emoji before the words too: the API's offsets count code points, where a JS string counts two each."""
    from selenium.webdriver.common.by import By

    description = prefix + DESCRIPTIONS[0]
    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "description")
    if prefix:  # chromedriver types only the Basic Multilingual Plane
        browser.execute_script("arguments[0].value = arguments[1]", box, description)
    else:
        box.send_keys(description)
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: len(bars_of(d)) > 0)
    top_genre, _, top_item = bars_of(browser)[0]
    assert browser.find_elements(By.CSS_SELECTOR, "#words mark") == []  # nothing marked before a click
    top_item.click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#words mark"))
    expected = tag(server, descriptions=[description], explain=True, threshold=0.01).json()["results"][0]
    (genre,) = [g for g in expected["explanations"]["genres"] if g["genre"] == top_genre]
    marks = browser.find_elements(By.CSS_SELECTOR, "#words mark")
    shown = sorted((m.text, m.get_attribute("class"), float(m.get_attribute("data-score"))) for m in marks)
    wanted = [(w["word"], "up", w["score"]) for w in genre["up"]] + [
        (w["word"], "down", w["score"]) for w in genre["down"]
    ]
    assert shown == sorted(wanted) and shown
    assert browser.find_element(By.ID, "words").text == description  # the whole description, words in place
    up = [m for m in marks if m.get_attribute("class") == "up"]
    if up:
        assert "172, 238, 187" in up[0].value_of_css_property("background-color")  # green
    assert "selected" in top_item.get_attribute("class").split()
    # Another genre re-marks its own words, without asking the server again.
    requests_before = server.client.get("/v1/stats").json()["requests"]
    second_genre, _, second_item = bars_of(browser)[1]
    second_item.click()
    (second,) = [g for g in expected["explanations"]["genres"] if g["genre"] == second_genre]
    wanted = sorted([(w["word"], "up") for w in second["up"]] + [(w["word"], "down") for w in second["down"]])
    wait_for(
        browser,
        lambda d: (
            sorted((m.text, m.get_attribute("class")) for m in d.find_elements(By.CSS_SELECTOR, "#words mark"))
            == wanted
        ),
    )
    assert server.client.get("/v1/stats").json()["requests"] == requests_before


def test_page_keyboard_only_and_error_message(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    field = browser.find_element(By.ID, "description")
    field.send_keys(DESCRIPTIONS[1])
    field.send_keys(Keys.CONTROL, Keys.ENTER)  # submits without the mouse
    wait_for(browser, lambda d: len(bars_of(d)) > 0)
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed()

    browser.find_element(By.ID, "description").clear()
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "Type or paste a plot description" in error.text

    # An answer the server refuses (a body over the limit) is shown, not swallowed.
    browser.execute_script("document.getElementById('description').value = 'word '.repeat(250000);")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: "413" in d.find_element(By.ID, "error").text)
    assert "larger than" in error.text


def test_page_fits_a_phone_screen(server, browser):
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "description").send_keys(DESCRIPTIONS[0])
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, lambda d: len(bars_of(d)) > 0)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
        )
        assert overflow <= 0  # nothing scrolls sideways
    finally:
        browser.set_window_size(1200, 900)


def test_a_run_whose_metrics_hold_nan_is_served_and_described_with_null(trained, tmp_path):
    from fastapi.testclient import TestClient

    from genre_tagger import save
    from genre_tagger.serving import create_app, load_served_run

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test"]["macro_roc_auc"] = float("nan")  # json.dumps writes NaN, as a run with a positive-less genre did
    (copy / "metrics.json").write_text(json.dumps(metrics))
    save.write_manifest(copy)
    with TestClient(create_app(load_served_run(copy), batch_wait_ms=0)) as client:
        response = client.get("/v1/model")
    assert response.status_code == 200, response.text
    assert response.json()["metrics"]["test"]["macro_roc_auc"] is None
    assert response.json()["metrics"]["test"]["macro_f1"] == metrics["test"]["macro_f1"]
