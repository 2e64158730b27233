"""How often predict.py (and serve.py's start-up) open each file of a run: strace's openat calls, counted.

    python bench/open_files.py --model models/genre-classifier       # a run folder
    python bench/open_files.py --model models/genre-classifier.zip   # its zip (files counted where extracted)

Needs strace (Debian: apt-get install strace). The goal: each run JSON file opened at most once, each model
or tokenizer file at most twice (hash + load).
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def counts(trace, run):
    """{file inside the run: times opened} from an strace -e openat log."""
    found = collections.Counter()
    run = str(Path(run).resolve())
    extracted = re.compile(r"genre-tagger-run-[^/]+/([^\"]+)\"")
    for line in Path(trace).read_text().splitlines():
        if "openat(" not in line or "ENOENT" in line:
            continue
        if run + "/" in line:
            found[line.split(run + "/", 1)[1].split('"', 1)[0]] += 1
        elif match := extracted.search(line):
            found[match.group(1)] += 1
    return found


def traced(command, run, ready_url=None):
    with tempfile.NamedTemporaryFile(suffix=".strace") as trace:
        full = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", trace.name, sys.executable, *command]
        if ready_url is None:
            subprocess.run(full, cwd=ROOT, check=True, capture_output=True)
        else:  # a server: wait until it answers /readyz, then stop it
            process = subprocess.Popen(full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 180
            while time.time() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            # SIGTERM goes to the traced server itself (strace's child), which then stops as it would anyway.
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            for child in children.read_text().split() if children.exists() else []:
                os.kill(int(child), signal.SIGTERM)
            process.wait(timeout=120)
        return counts(trace.name, run)


def show(title, found):
    json_files = {name: n for name, n in found.items() if name.endswith(".json")}
    others = {name: n for name, n in found.items() if not name.endswith(".json")}
    print(
        f"{title}: JSON files opened at most {max(json_files.values(), default=0)}x, "
        f"other files at most {max(others.values(), default=0)}x"
    )
    for name, n in sorted(found.items()):
        print(f"  {n}  {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder or .zip")
    parser.add_argument("--port", type=int, default=8765, help="port for serve.py's start-up (default: %(default)s)")
    args = parser.parse_args()
    run = Path(args.model).resolve()
    show("predict.py", traced(["predict.py", "--model", str(run), "A detective hunts a killer."], run))
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print("serve.py: skipped (pip install -r requirements-serve.txt)")
        return
    command = ["serve.py", "--model", str(run), "--port", str(args.port)]
    started = traced(command, run, ready_url=f"http://127.0.0.1:{args.port}/readyz")
    show("serve.py start-up", started)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
