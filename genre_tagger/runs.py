"""A saved run: one self-describing folder, written atomically, zipped, opened again (folder or zip), checked.

Layout of a run folder:
    config.json          encoder config with id2label, label2id, problem_type, pooling
    model.safetensors    classifier weights
    tokenizer.json ...   the tokenizer
    binarizer.joblib     the fitted MultiLabelBinarizer (a pickle: for trusted Python use only, never read to predict)
    train_config.json    every setting of the run, the base model really used, versions, timings
    metrics.json         validation and test metrics, baseline beside them
    thresholds.json      default, tuned global and tuned per-genre thresholds
    per_genre.csv        per-genre precision/recall/F1/support on the test rows
    split.csv            which source row went to train / validation / test
    model.onnx, model.int8.onnx, onnx.json   the exported model for fast CPU inference
    plots/*.png          pictures of the evaluation
    manifest.json        sha256 and size of every other file: opening a run checks it

Its zip holds the same, less the ONNX variant predict.py does not use by default (see _zip_rewrites).

An ensemble run (`python -m genre_tagger.ensemble`) has ensemble.json instead of model.safetensors and
its members' prediction files in members/<i>/, each member with its own manifest.json.

Nothing in a run is ever executed or unpickled by this project's code (docs/SECURITY.md).
"""

import hashlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from genre_tagger import UserError

DEFAULT_RUN = Path("models/genre-classifier")
REQUIRED_FILES = ("config.json", "model.safetensors", "thresholds.json", "train_config.json")
MANIFEST = "manifest.json"
ZIP_LEFT_OUT = "left_out_of_zip"  # onnx.json in a zip: the ONNX variants its folder has and the zip does not
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_MODEL_TYPE = "genre_tagger_ensemble"  # config.json's model_type in an ensemble run
ENSEMBLE_REQUIRED_FILES = ("config.json", ENSEMBLE_FILE, "thresholds.json", "train_config.json")
# Files a backend reads in full when it needs them: hashed then, not on every open (they are large).
LARGE_FILES = ("model.safetensors", "model.onnx", "model.int8.onnx", "binarizer.joblib")
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
# Zip limits sized for real runs: a base-size (110M-parameter) run is about 1 GB unpacked.
MAX_ZIP_TOTAL_BYTES = 4 << 30
MAX_ZIP_ENTRY_BYTES = 3 << 30
MAX_ZIP_ENTRIES = 10_000
MAX_COMPRESSION_RATIO = 200  # for entries over 1 MiB: model weights compress ~1.1x, a zip bomb ~1000x
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text):
    """`text` with control characters (and bidi overrides) shown as escapes, safe to print on a terminal."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if ch in _BIDI_CONTROLS or unicodedata.category(ch) == "Cc" else ch
        for ch in str(text)
    )


def zip_path_of(folder):
    """models/genre-classifier -> models/genre-classifier.zip (kept whole, even with dots in the name)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.zip"


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def read_run_json(folder, name, origin=None):
    """A JSON file of a run, or a one-line error naming the file when it is missing or damaged."""
    path = Path(folder) / name
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{origin or folder} has no {name}; re-create the run with train.py") from None
    except (ValueError, OSError) as err:
        raise UserError(
            f"{origin or folder}: {name} is damaged ({type(err).__name__}); re-create the run with train.py"
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"{origin or folder}: {name} is not a JSON object; re-create the run with train.py")
    return payload


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode(mode):
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def staging_folder(final):
    """An empty folder beside `final` to build the run in, so the rename into place is atomic."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    os.chmod(staged, _umask_mode(0o777))  # mkdtemp makes it private; a run folder is not
    return staged


def stale_leftovers(final):
    """Staging folders and partial zips that an interrupted train.py left beside `final`."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    patterns = (f".{final.name}.building-*", f".{final.name}.previous-*", f".{final.name}.zip.*.part")
    return sorted(p for pattern in patterns for p in final.parent.glob(pattern))


def remove_paths(paths):
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _files_of(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file() or p.is_symlink())


def write_manifest(folder):
    """Record sha256 and size of every file of a finished run, and give every file the same mode."""
    folder = Path(folder)
    files = {}
    for name in _files_of(folder):
        if name == MANIFEST:
            continue
        path = folder / name
        # safetensors and mkstemp write 0600; a run folder is shared like any other output.
        os.chmod(path, _umask_mode(0o666))
        files[name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.chmod(path, _umask_mode(0o777))
    write_json(folder / MANIFEST, {"format": 1, "files": files})
    os.chmod(folder / MANIFEST, _umask_mode(0o666))
    return files


def _manifest_of(folder, origin):
    manifest = read_run_json(folder, MANIFEST, origin)
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
        for v in files.values()
    ):
        raise UserError(f"{origin}: {MANIFEST} is damaged; re-create the run with train.py")
    for name in files:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or "\\" in name:
            raise UserError(f"{origin}: {MANIFEST} names a file outside the run ({printable(name)!r}); refusing it")
    return files


def verify_files(folder, names, origin=None):
    """Check that each of `names` matches the run's manifest (size and sha256); no manifest: nothing to check."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return
    files = _manifest_of(folder, origin or folder)
    for name in names:
        if name not in files:
            if (folder / name).exists():
                raise UserError(
                    f"{origin or folder}: {name} is not in the run's manifest (added after training); "
                    "re-create the run with train.py"
                )
            continue
        _verify_one(folder, name, files[name], origin or folder, full=True)


def _verify_one(folder, name, entry, origin, full):
    path = folder / name
    if not path.is_file():
        raise UserError(f"{origin}: {name} is missing (the run's manifest lists it); re-create the run with train.py")
    if path.stat().st_size != entry["bytes"] or (full and sha256_of(path) != entry["sha256"]):
        raise UserError(
            f"{origin}: {name} does not match the run's manifest (changed or corrupted since training); "
            "re-download or re-create the run"
        )


def recorded_sha256(folder, name, origin=None):
    """sha256 of a run file, as its manifest records it (checked by verify_files before use); hashed if none."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        entry = _manifest_of(folder, origin or folder).get(name)
        if entry is not None:
            return entry["sha256"]
    return sha256_of(folder / name)


def verify_manifest(folder, origin=None):
    """Check every file of a run against its manifest: sizes of all, sha256 of all but LARGE_FILES.

    The large files are hashed by verify_files when a backend is about to read them. Returns False when
    the run has no manifest (saved before runs checked themselves), True when it checked out.
    """
    folder = Path(folder)
    origin = origin or folder
    if not (folder / MANIFEST).exists():
        return False
    for name, entry in _manifest_of(folder, origin).items():
        # By file name, so an ensemble's members/<i>/model.onnx is hashed by its member's check, not twice.
        _verify_one(folder, name, entry, origin, full=PurePosixPath(name).name not in LARGE_FILES)
    return True


def replace_problem(folder):
    """Why `folder` may not be replaced by a new run, or None when it may (absent, empty, or one of our runs)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} exists and is not a genre-tagger run folder"
    present = _files_of(folder)
    if not present and not any(folder.iterdir()):
        return None
    if (folder / MANIFEST).exists():
        try:
            listed = set(_manifest_of(folder, folder)) | {MANIFEST}
        except UserError:
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
    """Why `zip_path` may not be overwritten by a new run's zip, or None (absent, or a run zip train.py wrote)."""
    zip_path = Path(zip_path)
    if not zip_path.exists() and not zip_path.is_symlink():
        return None
    if zip_path.is_symlink() or not zip_path.is_file():
        return f"{zip_path} exists and is not a file"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"{zip_path} exists and is not a run zip"
    if not (set(REQUIRED_FILES) <= names or set(ENSEMBLE_REQUIRED_FILES) <= names):
        return f"{zip_path} exists and is not a run zip written by train.py"
    return None


def publish_folder(staged, final):
    """Replace `final` with the finished `staged` folder; the previous run survives any failure before this."""
    staged, final = Path(staged), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.previous-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(staged, final)
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
                if not path.is_file() or name in left_out:
                    continue
                if name in rewrites:
                    entry = zipfile.ZipInfo.from_file(path, name)
                    entry.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(entry, rewrites[name], compresslevel=1)
                else:
                    archive.write(path, name)
        os.chmod(tmp_name, _umask_mode(0o666))
        os.replace(tmp_name, zip_path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return zip_path


def _check_entry(zip_path, entry, seen):
    name = entry.filename
    parts = PurePosixPath(name).parts
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or "\x00" in name
        or ".." in parts
        or (parts and ":" in parts[0])
    ):
        raise UserError(
            f"{zip_path} has an entry that would land outside its folder ({printable(name)!r}); refusing to extract it"
        )
    if name.rstrip("/") in seen:
        raise UserError(f"{zip_path} holds {printable(name)!r} twice; refusing an ambiguous run")
    seen.add(name.rstrip("/"))
    file_type = stat.S_IFMT(entry.external_attr >> 16)  # 0 when the zip records no Unix type
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "a symbolic link" if file_type == stat.S_IFLNK else "a special file"
        raise UserError(f"{zip_path}: entry {printable(name)!r} is {kind}; a run holds plain files only")
    if entry.flag_bits & 0x1:
        raise UserError(f"{zip_path} is encrypted; a run zip is not")
    if entry.file_size > MAX_ZIP_ENTRY_BYTES:
        raise UserError(
            f"{zip_path}: entry {printable(name)!r} unpacks to {entry.file_size / 2**30:.1f} GiB, over the "
            f"{MAX_ZIP_ENTRY_BYTES / 2**30:.0f} GiB limit for one file of a run"
        )
    if entry.file_size > 1 << 20 and entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1):
        raise UserError(
            f"{zip_path}: entry {printable(name)!r} expands {entry.file_size / max(entry.compress_size, 1):.0f}x, "
            f"over the {MAX_COMPRESSION_RATIO}x a run's files reach (a zip bomb?); refusing it"
        )


def safe_extract(zip_path, target):
    """Extract a run zip into `target`, within limits, refusing links, special files and paths outside it."""
    target = Path(target).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ZIP_ENTRIES:
                raise UserError(f"{zip_path} has {len(entries)} entries; a run has a few dozen")
            seen = set()
            for entry in entries:
                _check_entry(zip_path, entry, seen)
            if sum(e.file_size for e in entries) > MAX_ZIP_TOTAL_BYTES:
                raise UserError(f"{zip_path} unpacks to over {MAX_ZIP_TOTAL_BYTES / 2**30:.0f} GiB; a run is smaller")
            written = 0
            for entry in entries:
                destination = target.joinpath(*PurePosixPath(entry.filename).parts)
                if not destination.resolve().is_relative_to(target):
                    raise UserError(
                        f"{zip_path} has an entry that would land outside its folder ({printable(entry.filename)!r})"
                    )
                if entry.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                # Count what is really written: the sizes in a zip's headers can lie.
                with archive.open(entry) as source, open(destination, "wb") as sink:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        written += len(block)
                        if written > MAX_ZIP_TOTAL_BYTES or sink.tell() + len(block) > entry.file_size:
                            raise UserError(
                                f"{zip_path}: entry {printable(entry.filename)!r} unpacks to more than it says"
                            )
                        sink.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{zip_path} is not a readable zip ({printable(first)}); re-create it with train.py") from None
    except OSError as err:
        raise UserError(
            f"cannot extract {zip_path} ({err.strerror or err}); check free space in the temp folder"
        ) from None
    return target


def is_ensemble(folder):
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def check_run_folder(folder, origin=None):
    origin = origin or folder
    required = ENSEMBLE_REQUIRED_FILES if is_ensemble(folder) else REQUIRED_FILES
    missing = [name for name in required if not (Path(folder) / name).exists()]
    if missing:
        raise UserError(
            f"{origin} is not a genre-tagger run (missing {', '.join(missing)}); "
            "point --model at a folder or .zip written by train.py"
        )
    return Path(folder)


def run_folder_to_change(path):
    """The run folder at `path` for a tool that changes a run in place (export, convert), or a one-line error."""
    if not Path(path).is_dir():
        raise UserError(f"{path} is not a run folder; give the folder train.py wrote (unzip a .zip first)")
    if is_ensemble(path):
        raise UserError(f"{path} is an ensemble; run this on each of the runs it was built from, then rebuild it")
    return check_run_folder(Path(path))


def reseal(folder, always_zip=False):
    """After a run folder changed in place: its manifest again, and its zip (refreshed if there is one).

    Returns the zip's path when it was written, else None.
    """
    write_manifest(folder)
    if always_zip or zip_path_of(folder).exists():
        zip_folder(folder, zip_path_of(folder))
        return zip_path_of(folder)
    return None


def run_tool(main):
    """Run a `python -m genre_tagger.<tool>` main: a problem the user can fix is one line and exit 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        sys.exit(2)


class OpenRun:
    """Context manager giving a checked run folder for a path that is a run folder or its .zip.

    A zip is extracted into a temporary folder that is removed on exit; the zip itself is never touched.
    The folder is checked against its manifest (`verified` says whether it had one) and its labels,
    thresholds and ONNX settings for consistency before anything is predicted.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.verified = False
        self._tmp = None

    def __enter__(self):
        path = self.path
        if not path.exists():
            if path == DEFAULT_RUN and zip_path_of(DEFAULT_RUN).exists():
                path = zip_path_of(DEFAULT_RUN)
            else:
                raise UserError(f"no trained model at {self.path}; run train.py first (or pass --model PATH)")
        if path.is_dir():
            folder = check_run_folder(path)
        elif not path.is_file() or not zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither a run folder nor a zip; point --model at what train.py wrote")
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="genre-tagger-run-")
            try:
                folder = check_run_folder(safe_extract(path, self._tmp.name), origin=path)
            except BaseException:
                self._tmp.cleanup()
                raise
        self.origin = path
        try:
            self.verified = verify_manifest(folder, path)
            check_consistency(folder, path)
        except BaseException:
            self.__exit__()
            raise
        return folder

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return False


def _label_problem(label):
    if not isinstance(label, str) or not label.strip():
        return "an empty genre name"
    if printable(label) != label or "\n" in label:
        return f"a genre name with control characters ({printable(label)!r})"
    return None


def labels_of(folder, origin=None):
    """Genre names in output order, from the run's config.json (id2label), checked to be a proper list."""
    origin = origin or folder
    config = read_run_json(folder, "config.json", origin)
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise UserError(f"{origin}: config.json has no id2label; re-create the run with train.py")
    try:
        labels = [id2label[str(i)] for i in range(len(id2label))]
    except KeyError:
        raise UserError(f"{origin}: config.json's id2label is not numbered 0..{len(id2label) - 1}") from None
    for label in labels:
        if problem := _label_problem(label):
            raise UserError(f"{origin}: config.json has {problem}")
    if len(set(labels)) != len(labels):
        raise UserError(f"{origin}: config.json's id2label names a genre twice")
    label2id = config.get("label2id")
    if label2id is not None and label2id != {label: i for i, label in enumerate(labels)}:
        raise UserError(f"{origin}: config.json's label2id and id2label disagree; re-create the run with train.py")
    return labels


def _is_probability(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1


def check_consistency(folder, origin=None):
    """Labels, thresholds and ONNX settings of a run agree with each other (count and order)."""
    origin = origin or folder
    labels = labels_of(folder, origin)
    trained_on = read_run_json(folder, "train_config.json", origin).get("labels")
    if trained_on is not None and trained_on != labels:
        raise UserError(
            f"{origin}: config.json's genres differ from those the run was trained on (train_config.json); "
            "re-create the run with train.py"
        )
    thresholds = read_run_json(folder, "thresholds.json", origin)
    for key in ("default", "global"):
        if key in thresholds and not _is_probability(thresholds[key]):
            raise UserError(f"{origin}: thresholds.json's {key!r} is not a probability in (0, 1)")
    per_label = thresholds.get("per_label")
    if per_label is not None and (
        not isinstance(per_label, dict)
        or set(per_label) != set(labels)
        or not all(_is_probability(v) for v in per_label.values())
    ):
        raise UserError(f"{origin}: thresholds.json's per-genre thresholds do not match the run's genres")
    if (Path(folder) / "onnx.json").exists():
        onnx = read_run_json(folder, "onnx.json", origin)
        files = onnx.get("files")
        if (
            not isinstance(files, dict)
            or not files
            or onnx.get("default", "fp32") not in files
            or not all(
                isinstance(v, str) and "/" not in v and "\\" not in v and v not in ("", ".", "..")
                for v in files.values()
            )
            or not isinstance(onnx.get("max_length"), int)
            or not 1 <= onnx["max_length"] <= 4096
        ):
            raise UserError(f"{origin}: onnx.json is damaged; re-export with python -m genre_tagger.export RUN")
    return labels


def thresholds_of(folder, choice):
    """Thresholds for `choice`: a number, 'tuned' (per-genre, saved by train.py) or 'tuned-global'."""
    return thresholds_from(read_run_json(folder, "thresholds.json"), labels_of(folder), choice)


def thresholds_from(saved, labels, choice):
    """`thresholds_of` for a run's thresholds.json already read (`saved`) and its labels."""
    if choice == "tuned":
        per_label = saved.get("per_label")
        if not isinstance(per_label, dict) or not all(_is_probability(per_label.get(label)) for label in labels):
            raise UserError("this run has no per-genre thresholds; use --threshold tuned-global or a number")
        return [per_label[label] for label in labels]
    if choice == "tuned-global":
        if not _is_probability(saved.get("global")):
            raise UserError("this run has no tuned global threshold; use a number")
        return saved["global"]
    try:
        value = float(choice)
    except (TypeError, ValueError):
        raise UserError(
            f"--threshold must be a number in (0, 1), 'tuned' or 'tuned-global', not {printable(str(choice))!r}"
        ) from None
    if not 0 < value < 1:
        raise UserError(f"--threshold must be between 0 and 1 (exclusive), not {value}")
    return value


def note(message):
    """A line for the user on stderr that is not an error."""
    print(f"note: {printable(message)}", file=sys.stderr, flush=True)
