"""Load test of serve.py on loopback, dynamic batching on and off, with predict.py --input beside it.

    python bench/serve.py --model models/genre-classifier

Two serve.py processes run side by side on free ports, batching on (serve.py's defaults) and off
(`--max-batch 1`). For 1, 8 and 32 concurrent clients (threads, one keep-alive connection each,
single-description requests back to back), phases of --seconds alternate between the two servers
--repeats times, so that a change in the machine's load hits both alike. Printed per setting and
client count: descriptions/s (= requests/s), p50/p95/p99 latency, errors (anything but a 200 with one
result), the mean batch, the server's CPU time per description (user + system, from /proc: on a
machine shared with other work it moves far less than wall-clock rates do), and its RSS (sampled every
0.25 s). First, `predict.py --input` tags --rows descriptions in one process on the same run (wall time
and CPU time), so the ratios come from the same bench run. The clients run on the same cores.
"""

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import run_measured  # noqa: E402  (bench/measure.py, beside this script)

SETTINGS = {"batching on": [], "batching off": ["--max-batch", "1"]}


def load_descriptions(data, rows):
    from genre_tagger.data import load_labelled_csv

    texts = load_labelled_csv(data)[0]["text"].tolist()
    return [texts[i % len(texts)] for i in range(rows)]


def predict_throughput(model, descriptions, tmp):
    """descriptions/s of predict.py --input over the file, wall time of the whole process."""
    source, output = Path(tmp) / "descriptions.txt", Path(tmp) / "tagged.jsonl"
    source.write_text("\n".join(descriptions) + "\n")
    command = [sys.executable, "predict.py", "--model", str(model), "--input", str(source), "--output", str(output)]
    wall, _, cpu = run_measured(command)
    return len(descriptions) / wall, wall, cpu


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, flags):
        self.port = free_port()
        command = [sys.executable, "serve.py", "--model", str(model), "--port", str(self.port), *flags]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while self.get("/readyz")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve.py did not start: {self.process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)

    def get(self, path):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except OSError:
            return None, None

    def rss_mib(self):
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def cpu_seconds(self):
        """User + system CPU time of the server process so far (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def client_loop(port, descriptions, offset, step, stop, latencies, errors):
    """One client: single-description requests back to back on a keep-alive connection until `stop`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = offset
    while not stop.is_set():
        body = json.dumps({"descriptions": [descriptions[i % len(descriptions)]]})
        i += step
        started = time.perf_counter()
        try:
            conn.request("POST", "/v1/tag", body, {"content-type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            ok = response.status == 200 and len(json.loads(payload)["results"]) == 1
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if stop.is_set() and not ok:
            break  # cut off by the end of the phase: not counted either way
        (latencies if ok else errors).append(time.perf_counter() - started)
    conn.close()


def phase(server, descriptions, clients, seconds):
    """`clients` threads for `seconds`; raw counts, so repeats can be added up."""
    stop = threading.Event()
    latencies, errors, rss = [], [], [server.rss_mib()]
    before, cpu_before = server.get("/v1/stats")[1], server.cpu_seconds()
    threads = [
        threading.Thread(target=client_loop, args=(server.port, descriptions, i, clients, stop, latencies, errors))
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while time.perf_counter() - started < seconds:
        time.sleep(0.25)
        rss.append(server.rss_mib())
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    rss.append(server.rss_mib())
    after = server.get("/v1/stats")[1]
    return {
        "latencies": latencies,
        "errors": len(errors),
        "wall": wall,
        "cpu": server.cpu_seconds() - cpu_before,
        "batches": after["batches"] - before["batches"],
        "batched_descriptions": after["descriptions"] - before["descriptions"],
        "rss": rss,
    }


def summary(phases):
    latencies = [x for p in phases for x in p["latencies"]]
    done, wall = len(latencies), sum(p["wall"] for p in phases)
    quantiles = statistics.quantiles(latencies, n=100) if done >= 2 else [float("nan")] * 99
    batches = sum(p["batches"] for p in phases)
    rss = [x for p in phases for x in p["rss"]]
    return {
        "descriptions_per_s": done / wall,  # one description per request: requests/s too
        "p50_ms": quantiles[49] * 1000,
        "p95_ms": quantiles[94] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "errors": sum(p["errors"] for p in phases),
        "mean_batch": sum(p["batched_descriptions"] for p in phases) / batches if batches else float("nan"),
        "cpu_ms": 1000 * sum(p["cpu"] for p in phases) / done if done else float("nan"),
        "rss": (rss[0], max(rss), rss[-1]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder to serve (default: %(default)s)")
    p.add_argument(
        "--data", default="data/IMDB-Movie-Data.csv", help="CSV the descriptions come from (default: %(default)s)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each load phase (default: %(default)s)")
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="phases per setting and client count, alternating batching on and off (default: %(default)s)",
    )
    p.add_argument(
        "--clients", default="1,8,32", help="concurrent clients per phase, comma-separated (default: %(default)s)"
    )
    p.add_argument("--rows", type=int, default=5000, help="descriptions predict.py --input tags (default: %(default)s)")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    descriptions = load_descriptions(args.data, max(args.rows, 1000))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model: {args.model}; {args.repeats} x {args.seconds:g} s per setting and client count, on and off alternating;"
        " single-description requests from real descriptions"
    )

    with tempfile.TemporaryDirectory() as tmp:
        predict_rate, predict_wall, predict_cpu = predict_throughput(args.model, descriptions[: args.rows], tmp)
    predict_cpu_ms = 1000 * predict_cpu / args.rows
    print(
        f"\npredict.py --input, {args.rows} descriptions, one process: {predict_rate:.1f} /s ({predict_wall:.1f} s), "
        f"CPU {predict_cpu_ms:.1f} ms per description"
    )

    servers = {name: Server(args.model, flags) for name, flags in SETTINGS.items()}
    phases = {}
    memory = {name: [server.rss_mib()] for name, server in servers.items()}
    try:
        for server in servers.values():
            phase(server, descriptions, 4, 2.0)  # warm-up, not reported
        for count in clients:
            for _ in range(args.repeats):
                for name, server in servers.items():
                    result = phase(server, descriptions, count, args.seconds)
                    phases.setdefault((name, count), []).append(result)
                    memory[name].append(result["rss"][-1])
    finally:
        for server in servers.values():
            server.stop()

    rows = {key: summary(value) for key, value in phases.items()}
    print(
        "\n| server | clients | descriptions/s (= requests/s) | p50 ms | p95 ms | p99 ms | errors | mean batch |"
        " server CPU ms / description | server RSS MiB: start / peak / end |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (name, count), r in sorted(rows.items(), key=lambda item: (list(SETTINGS).index(item[0][0]), item[0][1])):
        print(
            f"| {name} | {count} | {r['descriptions_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {r['mean_batch']:.1f} | {r['cpu_ms']:.2f} | "
            f"{r['rss'][0]:.0f} / {r['rss'][1]:.0f} / {r['rss'][2]:.0f} |"
        )
    for name, series in memory.items():
        print(f"{name}: server RSS MiB after start, then after each phase: {' '.join(f'{x:.0f}' for x in series)}")
    top = max(clients)
    on, off = rows.get(("batching on", top)), rows.get(("batching off", top))
    if on and off:
        print(
            f"\n{top} clients, batching on: {on['descriptions_per_s'] / predict_rate:.2f}x predict.py --input's "
            f"descriptions/s and {on['descriptions_per_s'] / off['descriptions_per_s']:.2f}x batching off's; "
            f"per CPU second: {predict_cpu_ms / on['cpu_ms']:.2f}x predict.py's and {off['cpu_ms'] / on['cpu_ms']:.2f}x "
            f"batching off's; errors {on['errors']} (on), {off['errors']} (off)"
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
