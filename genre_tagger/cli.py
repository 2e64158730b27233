"""The one shell every command runs in (train.py, predict.py, serve.py, `python -m genre_tagger.<tool>`).

- a problem the user can fix (UserError, an unreadable or unwritable file, text that is not UTF-8,
  too little memory) -> one line `error: ...` on stderr, exit 2;
- Ctrl-C -> one line, exit 130 (what the command was writing is left as its own clean-up says); SIGTERM
  and SIGHUP unwind the same way (clean-ups run), exit 128 + the signal's number;
- a closed pipe (`predict.py ... | head`) -> a quiet exit;
- anything else -> one line naming the error, exit 1; `GENRE_TAGGER_DEBUG=1` or `--debug` shows the traceback.

Arguments that are not valid UTF-8 are refused before the command parses them.
"""

import argparse
import os
import runpy
import signal
import sys
import threading

from genre_tagger import UserError
from genre_tagger.common import first_line, printable

DEBUG_FLAG = "--debug"
_INSIDE = "__genre_tagger_script__"  # run_name of a script that run_script runs inside the shell


def debugging():
    return bool(os.environ.get("GENRE_TAGGER_DEBUG"))


def error_message(error):
    """The one line (without 'error: ') for an error the user can act on, or None for a bug."""
    if isinstance(error, UserError):
        return printable(error)
    if isinstance(error, UnicodeError):
        return "input is not valid UTF-8 text; save it as UTF-8 and try again"
    if isinstance(error, MemoryError):
        return "out of memory; tag fewer or shorter descriptions at a time (a smaller --batch-size)"
    if isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
        where = f" ({printable(error.filename)})" if error.filename else ""
        return (
            f"{printable(error.strerror or first_line(error))}{where}; check the path, its permissions and free space"
        )
    return None


def _check_argv(argv):
    for position, argument in enumerate(argv, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"argument {position} is not valid UTF-8 ({printable(argument)!r}); pass UTF-8 text"
            ) from None


class Stopped(BaseException):
    """SIGTERM or SIGHUP (a scheduler, `timeout`, a closed terminal): unwinds like Ctrl-C, so clean-ups run."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _stop_on_signals():
    """SIGTERM and SIGHUP end the command as Ctrl-C does (unless something installed its own handler)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _stop)


def _report(error, interrupted_note):
    """Print the one line for `error` and return the exit code."""
    if isinstance(error, Stopped):
        name = signal.Signals(error.signum).name
        print(f"\nstopped by {name}; {interrupted_note}", file=sys.stderr, flush=True)
        return 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        # On a line of its own: Ctrl-C often lands in the middle of a progress bar's line.
        print(f"\ninterrupted; {interrupted_note}", file=sys.stderr, flush=True)
        return 130
    message = error_message(error)
    if message is not None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    print(
        f"error: unexpected {type(error).__name__}: {first_line(error)} (a bug: please report it; "
        "GENRE_TAGGER_DEBUG=1 shows the traceback)",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _quiet_broken_pipe():
    # Python would complain again when it flushes stdout at exit: point stdout at /dev/null first.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os._exit(0)


def run_main(main, argv=None, interrupted_note="nothing partial was kept"):
    """Call main(argv) inside the shell and exit with its code; argv defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
        os.environ["GENRE_TAGGER_DEBUG"] = "1"
    try:
        _stop_on_signals()
        _check_argv(argv)
        code = main(argv)
    except SystemExit:
        raise
    except BrokenPipeError:
        _quiet_broken_pipe()
    except BaseException as error:  # noqa: BLE001 - the shell is where every error ends
        if debugging() and not isinstance(error, (UserError, KeyboardInterrupt, Stopped)):
            raise
        sys.exit(_report(error, interrupted_note))
    sys.exit(code or 0)


def inside_shell(module_name):
    """Whether a script module is being run by run_script (not directly by Python, not in a notebook)."""
    return module_name == _INSIDE


def run_script(path, interrupted_note="the previous run, if any, is intact"):
    """Run a notebook-style script (train.py) top to bottom inside the shell: its cells stay top-level code."""

    def main(argv):
        sys.argv = [str(path), *argv]
        runpy.run_path(str(path), run_name=_INSIDE)

    run_main(main, interrupted_note=interrupted_note)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a wrong or missing argument reported like every other user error: one line, exit 2."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")

    def _get_value(self, action, arg_string):
        # argparse would report a type's ValueError as "invalid value"; a type with parse(text, where)
        # (genre_tagger.settings.Bounded) names the flag and the allowed range in its own one line.
        parse = getattr(action.type, "parse", None)
        if parse is None:
            return super()._get_value(action, arg_string)
        return parse(arg_string, flag_of(action))


def flag_of(action):
    """How an error names an argparse action: its long option (--max-genres, not --top-k), else its name."""
    options = action.option_strings
    return next((o for o in options if o.startswith("--")), options[0] if options else action.metavar or action.dest)
