"""One child process, measured: what bench/predict.py, bench/serve.py and bench/quality.py run commands with."""

import os
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(command, timeout=None, quiet=True):
    """(wall seconds, peak RSS in MiB, CPU seconds user + system) of one child process run in the repo root.

    quiet: its stdout is dropped and its stderr shown only if it fails; otherwise both stream through.
    timeout: seconds after which the child is killed (and this fails). A failure exits with its command.
    """
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
    )
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        child.kill()

    watchdog = threading.Timer(timeout, kill) if timeout else None
    if watchdog:
        watchdog.start()
    try:
        # wait4 gives this child's own resource usage: its peak RSS (kB on Linux), not the sum of all children.
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:
        child.kill()
        raise
    finally:
        if watchdog:
            watchdog.cancel()
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode() if quiet else ""
    if quiet:
        child.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        why = f"killed after its {timeout} s timeout" if timed_out.is_set() else f"failed (exit {code})"
        raise SystemExit(f"{why}: {' '.join(map(str, command))}\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
