"""Smoke check of serve.py on a run, as a user would do it on a fresh clone; exit 1 if anything fails.

    python bench/check_serve.py                      # the default run, models/genre-classifier
    python bench/check_serve.py --model models/genre-classifier.zip

Starts serve.py on a free loopback port, then checks: POST /v1/tag gives the same genres and
probabilities as `predict.py --json` on the same run; /v1/genres, /v1/model, /healthz, /readyz, /docs
and the page at / load; every kind of bad request gets a 4xx with a JSON error and the server keeps
serving; SIGTERM stops it with exit 0. Prints one line per check. Standard library only.
"""

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTIONS = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two strangers fall in love during one night in Vienna.",
    "A family moves into a farmhouse haunted by a malevolent presence.",
]
BAD_REQUESTS = [
    ("empty list", b'{"descriptions": []}', "application/json", 422),
    ("blank description", b'{"descriptions": ["   "]}', "application/json", 422),
    ("wrong type", b'{"descriptions": [42]}', "application/json", 422),
    ("one string, not a list", b'{"descriptions": "A heist."}', "application/json", 422),
    ("unknown field", b'{"descriptions": ["A heist."], "genre": "Crime"}', "application/json", 422),
    ("threshold 1.5", b'{"descriptions": ["A heist."], "threshold": 1.5}', "application/json", 422),
    ("threshold 0", b'{"descriptions": ["A heist."], "threshold": 0}', "application/json", 422),
    ("top_k 0", b'{"descriptions": ["A heist."], "top_k": 0}', "application/json", 422),
    ("too many descriptions", json.dumps({"descriptions": ["A heist."] * 65}).encode(), "application/json", 422),
    ("not JSON", b'{"descriptions": [', "application/json", 422),
    ("not an object", b"[1, 2]", "application/json", 422),
    ("form body", b"descriptions=A+heist", "application/x-www-form-urlencoded", 415),
    ("body over 1 MiB", json.dumps({"descriptions": ["word " * 250_000]}).encode(), "application/json", 413),
    ("lone surrogate", rb'{"descriptions": ["A heist.", "x \ud800 y"]}', "application/json", 422),
    ("control character", rb'{"descriptions": ["A heist.", "bell \u0007"]}', "application/json", 422),
    ("not UTF-8", b'{"descriptions": ["caf\xe9 noir"]}', "application/json", 422),
    ("nested junk", b'{"descriptions": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}", "application/json", 422),
]


def request(port, method, path, body=None, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, {"content-type": content_type} if body is not None else {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder or .zip (default: %(default)s)")
    args = p.parse_args()
    failures = []

    def check(name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'' if ok else f': {detail}'}")
        if not ok:
            failures.append(name)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--model", args.model, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"FAIL  serve.py did not start:\n{server.stderr.read()[-2000:]}")
            try:
                if request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("FAIL  serve.py was not ready after 120 s")
            time.sleep(0.2)
        check("/readyz answers 200", True)

        predicted = subprocess.run(
            [sys.executable, "predict.py", "--model", args.model, "--json", *DESCRIPTIONS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        expected = [json.loads(line) for line in predicted.stdout.splitlines()]
        status, _, body = request(port, "POST", "/v1/tag", json.dumps({"descriptions": DESCRIPTIONS}).encode())
        results = json.loads(body).get("results") if status == 200 else None
        check("POST /v1/tag answers 200", status == 200, body[:200])
        check(
            "same genres as predict.py --json",
            results is not None and [r["genres"] for r in results] == [e["genres"] for e in expected],
        )
        check("same probabilities as predict.py --json", results == expected, "the records differ" if results else "")
        for path, kind in (
            ("/v1/genres", "application/json"),
            ("/v1/model", "application/json"),
            ("/healthz", "application/json"),
            ("/docs", "text/html"),
            ("/openapi.json", "application/json"),
            ("/", "text/html"),
            ("/static/app.js", "text/javascript"),
        ):
            status, content_type, _ = request(port, "GET", path)
            check(f"GET {path} loads", status == 200 and content_type.startswith(kind), f"{status} {content_type}")
        for name, body, content_type, expected_status in BAD_REQUESTS:
            status, kind, answer = request(port, "POST", "/v1/tag", body, content_type)
            try:
                error = json.loads(answer).get("error", "")
            except ValueError:
                error = ""
            check(
                f"bad request ({name}) gets {expected_status} with a JSON error",
                status == expected_status and kind.startswith("application/json") and bool(error),
                f"{status} {answer[:200]!r}",
            )
        status, _, _ = request(port, "POST", "/v1/tag", json.dumps({"descriptions": DESCRIPTIONS[:1]}).encode())
        check("still serving after the bad requests", status == 200)
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    check("SIGTERM stops it with exit 0", code == 0, f"exit {code}")
    print(f"\n{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
