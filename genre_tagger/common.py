"""Small helpers every part of genre-tagger shares: safe printing, JSON and hashing of files, notes to the user."""

import hashlib
import json
import os
import sys
import unicodedata

SPREADSHEET_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list for CSV injection
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text):
    """`text` with control characters, bidi overrides and lone surrogates shown as escapes, safe on a terminal."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs")
        else ch
        for ch in str(text)
    )


def shown_value(text, limit=100):
    """A value the user gave, printable and cut to `limit` characters: an error line never echoes 5,000 digits."""
    text = printable(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def first_line(error, limit=300):
    """The first line of an exception's message (its type's name when it has none), for a one-line report."""
    text = str(error).strip()
    return printable(text.splitlines()[0][:limit]) if text else type(error).__name__


def write_json(path, payload, replace=True):
    """`payload` as indented JSON; with replace=False an existing `path` raises FileExistsError, never lost."""
    with open(path, "w" if replace else "x") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask_mode(mode):
    """`mode` less the process's umask: what a plain open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def note(message):
    """A line for the user on stderr that is not an error."""
    print(f"note: {printable(message)}", file=sys.stderr, flush=True)


def spreadsheet_safe(cell):
    """A CSV cell a spreadsheet shows as text, never runs as a formula (OWASP CSV injection advice).

    A cell that starts like a formula gets a leading apostrophe (which spreadsheets hide); so does one that
    already starts with an apostrophe, so that `from_spreadsheet_safe` gives back exactly what was written.
    """
    cell = str(cell)
    return "'" + cell if cell.startswith((*SPREADSHEET_FORMULA_STARTS, "'")) else cell


def from_spreadsheet_safe(cell):
    """The value `spreadsheet_safe` was given, from the cell it wrote."""
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") else cell
