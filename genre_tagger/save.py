"""Writing a run: built in a staging folder beside its final place, sealed by a manifest, published by a rename,
zipped; and the checks that keep anything of the user's from being replaced or removed.

Opening and verifying a run lives in genre_tagger/run.py.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.common import printable, sha256_of, umask_mode, write_json
from genre_tagger.run import (
    ENSEMBLE_FILE,
    ENSEMBLE_REQUIRED_FILES,
    LARGE_FILES,
    MANIFEST,
    REQUIRED_FILES,
    ZIP_LEFT_OUT,
    Run,
    parse_manifest,
    zip_path_of,
)

# Inside every folder this project creates to work in (staging, set-aside, checkpoints): only a folder
# carrying it is ever removed as a leftover.
OWN_MARKER = ".genre-tagger-owned"
# What train.py writes into a run (besides plots/*.png); a folder holding anything else is not replaced.
RUN_FILE_NAMES = {
    *REQUIRED_FILES,
    *LARGE_FILES,
    MANIFEST,
    ENSEMBLE_FILE,
    "onnx.json",
    "metrics.json",
    "per_genre.csv",
    "split.csv",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    "generation_config.json",
    "hf_classifier.py",
}


def mark_own(folder):
    """Mark a folder this project created, so that leftovers of an interrupted command may be removed later."""
    (Path(folder) / OWN_MARKER).touch()
    return Path(folder)


def is_own(folder):
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / OWN_MARKER).is_file()


def remove_own(folder):
    """Remove a folder only if this project created it (it carries OWN_MARKER); returns whether it did."""
    if not is_own(folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def staging_folder(final):
    """An empty folder beside `final` to build the run in, so the rename into place is atomic."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    os.chmod(staged, umask_mode(0o777))  # mkdtemp makes it private; a run folder is not
    return mark_own(staged)


def stale_leftovers(final):
    """Staging folders, set-aside runs and partial zips that an interrupted train.py left beside `final`."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    found = []
    for pattern in (f".{final.name}.building-*", f".{final.name}.previous-*"):
        found += [p for p in final.parent.glob(pattern) if is_own(p)]
    part = re.compile(rf"^\.{re.escape(final.name)}\.zip\.[A-Za-z0-9_]{{8}}\.part$")
    found += [p for p in final.parent.glob(f".{final.name}.zip.*.part") if part.match(p.name) and p.is_file()]
    return sorted(found)


def remove_paths(paths):
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _files_of(folder):
    return sorted(
        p.relative_to(folder).as_posix()
        for p in Path(folder).rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != OWN_MARKER
    )


def write_manifest(folder):
    """Record sha256 and size of every file of a finished run, and give every file the same mode."""
    folder = Path(folder)
    files = {}
    for name in _files_of(folder):
        if name == MANIFEST:
            continue
        path = folder / name
        # safetensors and mkstemp write 0600; a run folder is shared like any other output.
        os.chmod(path, umask_mode(0o666))
        files[name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.chmod(path, umask_mode(0o777))
    write_json(folder / MANIFEST, {"format": 1, "files": files})
    os.chmod(folder / MANIFEST, umask_mode(0o666))
    return files


def replace_problem(folder):
    """Why `folder` may not be replaced by a new run, or None when it may (absent, empty, or one of our runs)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} exists and is not a genre-tagger run folder"
    present = _files_of(folder)
    if not present and not any(p.name != OWN_MARKER for p in folder.iterdir()):
        return None
    if (folder / MANIFEST).exists():
        try:
            listed = set(parse_manifest((folder / MANIFEST).read_bytes(), folder)) | {MANIFEST}
        except (UserError, OSError):
            listed = set()
        foreign = [name for name in present if name not in listed]
    elif (folder / "train_config.json").exists() and (folder / "config.json").exists():
        foreign = [
            name
            for name in present
            if name not in RUN_FILE_NAMES and not (name.startswith("plots/") and name.endswith(".png"))
        ]
    else:
        return f"{folder} exists and is not a genre-tagger run"
    if foreign:
        shown = ", ".join(printable(n) for n in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        return f"{folder} holds files a run does not write ({shown})"
    return None


def zip_replace_problem(zip_path):
    """Why `zip_path` may not be overwritten by a run's zip, or None (absent, or a run zip this project wrote)."""
    zip_path = Path(zip_path)
    if not zip_path.exists() and not zip_path.is_symlink():
        return None
    if zip_path.is_symlink() or not zip_path.is_file():
        return f"{zip_path} exists and is not a file"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return f"{zip_path} exists and is not a run zip"
    if not (set(REQUIRED_FILES) <= names or set(ENSEMBLE_REQUIRED_FILES) <= names):
        return f"{zip_path} exists and is not a run zip written by genre-tagger"
    return None


def publish_folder(staged, final):
    """Replace `final` with the finished `staged` folder; the previous run survives any failure before this."""
    staged, final = Path(staged), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.previous-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
        mark_own(old)
    os.replace(staged, final)
    (final / OWN_MARKER).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _zip_rewrites(folder):
    """(names left out, {name: new bytes}): what a run's zip holds that differs from its folder.

    A zip carries what reloading and predicting need: model.safetensors (and the rest) for PyTorch and
    Hugging Face, and the one ONNX graph predict.py uses by default. The other variant (fp32 beside an
    int8 default: as big as the weights themselves) stays in the folder; the zip's onnx.json says so
    (`left_out_of_zip`), and its manifest describes the zip's own files.
    """
    try:
        info = json.loads((folder / "onnx.json").read_text())
        left_out = {v: f for v, f in info["files"].items() if v != info["default"]}
        graphs = [f for f in left_out.values() if isinstance(f, str) and f.endswith(".onnx") and (folder / f).is_file()]
        if not left_out or len(graphs) != len(left_out):
            return set(), {}
        onnx = {**info, "files": {info["default"]: info["files"][info["default"]]}, ZIP_LEFT_OUT: left_out}
        rewrites = {"onnx.json": (json.dumps(onnx, indent=2) + "\n").encode()}
        if (folder / MANIFEST).is_file():
            manifest = json.loads((folder / MANIFEST).read_text())
            files = {k: v for k, v in manifest["files"].items() if k not in left_out.values()}
            files["onnx.json"] = {
                "sha256": hashlib.sha256(rewrites["onnx.json"]).hexdigest(),
                "bytes": len(rewrites["onnx.json"]),
            }
            rewrites[MANIFEST] = (json.dumps({**manifest, "files": files}, indent=2) + "\n").encode()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set(), {}  # no export, or damaged files that opening the zip will refuse anyway
    return set(left_out.values()), rewrites


def zip_folder(folder, zip_path):
    """Zip a run folder (entries relative to it; see _zip_rewrites) via a temporary file, then rename into place."""
    folder, zip_path = Path(folder), Path(zip_path)
    left_out, rewrites = _zip_rewrites(folder)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for path in sorted(folder.rglob("*")):
                name = path.relative_to(folder).as_posix()
                if not path.is_file() or name in left_out or path.name == OWN_MARKER:
                    continue
                if name in rewrites:
                    entry = zipfile.ZipInfo.from_file(path, name)
                    entry.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(entry, rewrites[name], compresslevel=1)
                else:
                    archive.write(path, name)
        os.chmod(tmp_name, umask_mode(0o666))
        os.replace(tmp_name, zip_path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return zip_path


def run_folder_to_change(path, rewritten=()):
    """The run folder at `path` for a tool that rewrites a run in place (export, convert), verified first.

    Refused: a zip, an ensemble, a run whose files no longer match its manifest or that holds files its
    manifest does not list (resealing would bless the change), and a zip beside it that is not a run zip.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder; give the folder train.py wrote (unzip a .zip first)")
    with Run.open(path, rewritten) as run:
        if run.is_ensemble:
            raise UserError(f"{path} is an ensemble; run this on each of the runs it was built from, then rebuild it")
        if run.verified:
            for name in LARGE_FILES:
                if run.has(name):
                    run.verified_path(name)
            unlisted = [
                name for name in _files_of(path) if name != MANIFEST and not run.has(name) and name not in rewritten
            ]
            if unlisted:
                shown = ", ".join(printable(n) for n in unlisted[:3])
                raise UserError(
                    f"{path} holds files its manifest does not list ({shown}); resealing would vouch for them: "
                    "remove them, or re-create the run with train.py"
                )
    if problem := zip_replace_problem(zip_path_of(path)):
        raise UserError(f"{problem}; move it away first, so it is not overwritten")
    return path


def reseal(folder, always_zip=False):
    """After a run folder changed in place: its manifest again, and its zip (refreshed if there is one).

    Returns the zip's path when it was written, else None.
    """
    write_manifest(folder)
    if always_zip or zip_path_of(folder).exists():
        zip_folder(folder, zip_path_of(folder))
        return zip_path_of(folder)
    return None
