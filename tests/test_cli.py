"""The one CLI shell (genre_tagger/cli.py) every command runs in: one line per error, the right exit code."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, one_line_error

SHELL = """
import sys
from genre_tagger import UserError
from genre_tagger.cli import run_main

def main(argv):
    what = argv[0] if argv else "ok"
    if what == "user":
        raise UserError("the data file is missing; pass --data PATH")
    if what == "oserror":
        open("/nonexistent/folder/file.csv")
    if what == "unicode":
        b"\\xff".decode("utf-8")
    if what == "memory":
        raise MemoryError()
    if what == "bug":
        raise KeyError("surprise")
    if what == "sleep":
        try:
            print("ready", flush=True)
            import time
            time.sleep(30)
        finally:
            print("cleaned up", flush=True)
    if what == "pipe":
        for _ in range(100000):
            print("a line of output")
    print("fine")

run_main(main)
"""


def shell(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", SHELL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kwargs
    )


@pytest.mark.parametrize(
    ("what", "fragment"),
    [
        ("user", "pass --data PATH"),
        ("oserror", "No such file or directory (/nonexistent/folder/file.csv)"),
        ("unicode", "not valid UTF-8"),
        ("memory", "out of memory"),
    ],
)
def test_errors_the_user_can_act_on_are_one_line_exit_2(what, fragment):
    one_line_error(shell(what), fragment)


def test_a_bug_is_one_line_exit_1_and_debug_shows_the_traceback():
    one_line_error(shell("bug"), "unexpected KeyError", "GENRE_TAGGER_DEBUG=1", code=1)
    debug = shell("bug", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_arguments_that_are_not_utf8_are_refused_before_the_command_runs():
    result = subprocess.run(
        [sys.executable.encode(), b"-c", SHELL.encode(), b"caf\xe9"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert result.returncode == 2 and b"fine" not in result.stdout
    assert result.stderr.decode().strip().startswith("error: argument 1 is not valid UTF-8")


def test_ctrl_c_is_one_line_exit_130():
    process = subprocess.Popen(
        [sys.executable, "-c", SHELL, "sleep"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "cleaned up" in stdout
    assert stderr.strip().splitlines() == ["interrupted; nothing partial was kept"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_unwind_like_ctrl_c(signum):
    """`timeout`, a scheduler or a closed terminal: clean-ups run (no partial file is left), one line."""
    process = subprocess.Popen(
        [sys.executable, "-c", SHELL, "sleep"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # under nohup it would be ignored, rightly
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signum and "cleaned up" in stdout
    assert stderr.strip().splitlines() == [f"stopped by {signal.Signals(signum).name}; nothing partial was kept"]


def test_a_closed_pipe_is_a_quiet_exit():
    reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", SHELL, "pipe"], cwd=ROOT, stdout=writer, stderr=subprocess.PIPE, text=True
    )
    os.close(writer)
    os.read(reader, 100)
    os.close(reader)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and stderr == ""


@pytest.mark.parametrize(
    "command",
    [
        ["predict.py", "--model"],
        ["serve.py", "--port", "-1"],
        ["-m", "genre_tagger.export"],
        ["-m", "genre_tagger.convert", "no-such-run"],
        ["-m", "genre_tagger.ensemble", "a", "--output", "x"],
    ],
)
def test_every_command_runs_in_the_shell(command, tmp_path):
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error:")
