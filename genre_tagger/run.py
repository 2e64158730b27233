"""A saved run, opened once and verified: `Run.open(path)` for a run folder or its zip.

    with Run.open("models/genre-classifier.zip") as run:
        run.labels, run.max_length, run.onnx, run.members, run.thresholds_for("tuned")

Opening a run extracts a zip safely (into a temporary folder removed on close), reads every small
file once and checks it against manifest.json (size and sha256), checks the sizes of the large files
(model weights, ONNX graphs) and hashes each of those once, when a backend asks for it
(`run.verified_path(name)`). Each JSON file is checked against its declared format
(genre_tagger/run_format.py, docs/RUN_FORMAT.md) before any value of it is used; labels, thresholds,
the ONNX description, the token limit and an ensemble's members are then parsed once into fields.
Nothing else in genre-tagger reads a run's JSON files; writing a run lives in genre_tagger/save.py.

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
    manifest.json        sha256 and size of every other file

An ensemble run (`python -m genre_tagger.ensemble`) has ensemble.json instead of model.safetensors and
its members' prediction files in members/<i>/, each member with its own manifest.json.

Nothing in a run is ever executed or unpickled by this project's code (docs/SECURITY.md).
"""

import hashlib
import json
import math
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from genre_tagger import UserError
from genre_tagger.common import first_line, printable, sha256_of, shown_value
from genre_tagger.run_format import ENSEMBLE_TOOL, TRAIN_PY, check_file

DEFAULT_RUN = Path("models/genre-classifier")
MANIFEST = "manifest.json"
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_MODEL_TYPE = "genre_tagger_ensemble"  # config.json's model_type in an ensemble run
ZIP_LEFT_OUT = "left_out_of_zip"  # onnx.json in a zip: the ONNX variants its folder has and the zip does not
REQUIRED_FILES = ("config.json", "model.safetensors", "thresholds.json", "train_config.json")
ENSEMBLE_REQUIRED_FILES = ("config.json", ENSEMBLE_FILE, "thresholds.json", "train_config.json")
MEMBER_REQUIRED_FILES = ("config.json", "thresholds.json", "train_config.json", "tokenizer.json", "onnx.json")
# A manifest that leaves out one of these (and the ONNX graphs onnx.json names) is refused: predicting reads them.
PREDICTING_NEEDS = ("config.json", "thresholds.json", "train_config.json", "tokenizer.json")
# Read in full by a backend only when needed, so hashed then (once), not on every open.
LARGE_FILES = ("model.safetensors", "model.onnx", "model.int8.onnx", "binarizer.joblib")
CALIBRATION_FILE = "calibration.json"
THRESHOLD_CHOICES = ("default", "tuned", "tuned-global")
ONNX_FILES = ("model.onnx", "model.int8.onnx", "onnx.json")  # what an ONNX export writes (anew)
# Zip limits sized for real runs: a base-size (110M-parameter) ensemble is about 1.5 GB unpacked.
MAX_ZIP_TOTAL_BYTES = 4 << 30
MAX_ZIP_ENTRY_BYTES = 3 << 30
MAX_ZIP_ENTRIES = 1000
MAX_COMPRESSION_RATIO = 200  # model weights compress ~1.1x, a zip bomb ~1000x
MAX_SMALL_FILE_BYTES = 64 << 20  # a JSON or tokenizer file of a run is far smaller


def zip_path_of(folder):
    """models/genre-classifier -> models/genre-classifier.zip (kept whole, even with dots in the name)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.zip"


def _recreate(origin):
    return f"{origin}: {{}}; re-create the run with train.py"


# %% Thresholds


def is_probability(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1


def parse_threshold(choice, flag="--threshold"):
    """A threshold the user chose: a probability in (0, 1), or 'default' / 'tuned' / 'tuned-global' (kept as text)."""
    if isinstance(choice, str) and choice.strip() in THRESHOLD_CHOICES:
        return choice.strip()
    if isinstance(choice, bool):
        choice = None
    try:
        value = float(choice)
    except (TypeError, ValueError):
        raise UserError(
            f"{flag} must be a number in (0, 1), 'default', 'tuned' or 'tuned-global', not {shown_value(choice)!r}"
        ) from None
    if not is_probability(value):
        raise UserError(f"{flag} must be between 0 and 1 (exclusive), not {shown_value(choice)}")
    return value


def thresholds_from(saved, labels, choice, flag="--threshold"):
    """Thresholds for `choice` (see parse_threshold) from a run's thresholds.json (`saved`) and its labels."""
    choice = parse_threshold(choice, flag)
    if choice == "default":  # the run's default decisions; a calibrated run keeps them per genre
        if isinstance(saved.get("default_per_label"), dict):
            return [saved["default_per_label"][label] for label in labels]
        from genre_tagger.metrics import DEFAULT_THRESHOLD  # imported here: opening a run needs no numpy

        return saved.get("default", DEFAULT_THRESHOLD)
    if choice == "tuned":  # None: a goal no threshold reached on held-out rows, so the genre is never tagged
        per_label = saved.get("per_label")
        if not isinstance(per_label, dict) or not all(
            is_probability(per_label.get(label)) or (label in per_label and per_label[label] is None)
            for label in labels
        ):
            raise UserError(f"this run has no per-genre thresholds; use {flag} tuned-global or a number")
        return [per_label[label] for label in labels]
    if choice == "tuned-global":
        if not is_probability(saved.get("global")):
            raise UserError(f"this run has no tuned global threshold; use {flag} with a number")
        return saved["global"]
    return choice


# %% Safe extraction of a zip


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


def safe_extract(zip_path, target, kept=None):
    """Extract a run zip into `target`, within limits (entries, total size, ratio), refusing links and escapes.

    kept: a dict that receives, by entry name, the bytes of each small file and the sha256 of each large one
    (LARGE_FILES), so that nothing extracted has to be read again to be verified.
    """
    target = Path(target).resolve()
    try:
        zip_bytes = Path(zip_path).stat().st_size
        with zipfile.ZipFile(zip_path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ZIP_ENTRIES:
                raise UserError(f"{zip_path} has {len(entries)} entries; a run has a few dozen")
            seen = set()
            for entry in entries:
                _check_entry(zip_path, entry, seen)
            total = sum(e.file_size for e in entries)
            if total > MAX_ZIP_TOTAL_BYTES:
                raise UserError(f"{zip_path} unpacks to over {MAX_ZIP_TOTAL_BYTES / 2**30:.0f} GiB; a run is smaller")
            if total > 1 << 20 and total > MAX_COMPRESSION_RATIO * max(zip_bytes, 1):
                raise UserError(
                    f"{zip_path} unpacks to {total / max(zip_bytes, 1):.0f}x its size, over the "
                    f"{MAX_COMPRESSION_RATIO}x a run reaches (a zip bomb?); refusing it"
                )
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
                small = kept is not None and PurePosixPath(entry.filename).name not in LARGE_FILES
                blocks, digest = [], hashlib.sha256()
                # Count what is really written: the sizes in a zip's headers can lie.
                with archive.open(entry) as source, open(destination, "wb") as sink:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        written += len(block)
                        if written > min(total, MAX_ZIP_TOTAL_BYTES) or sink.tell() + len(block) > entry.file_size:
                            raise UserError(
                                f"{zip_path}: entry {printable(entry.filename)!r} unpacks to more than it says"
                            )
                        sink.write(block)
                        if small:
                            blocks.append(block)
                        elif kept is not None:
                            digest.update(block)
                if small and entry.file_size <= MAX_SMALL_FILE_BYTES:
                    kept[entry.filename] = b"".join(blocks)
                elif kept is not None and not small:
                    kept[entry.filename] = digest.hexdigest()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as err:
        raise UserError(f"{zip_path} is not a readable zip ({first_line(err)}); re-create it with train.py") from None
    except OSError as err:
        raise UserError(
            f"cannot extract {zip_path} ({printable(err.strerror or err)}); check free space in the temp folder"
        ) from None
    return target


# %% The manifest


def _parse_json(data, name, origin):
    try:
        payload = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(_recreate(origin).format(f"{name} is damaged ({type(err).__name__})")) from None
    if not isinstance(payload, dict):
        raise UserError(_recreate(origin).format(f"{name} is not a JSON object"))
    return payload


def parse_manifest(data, origin):
    """{name: {"sha256", "bytes"}} from manifest.json's bytes, checked by its schema (run_format): a format this
    genre-tagger reads, well formed, no path that leaves the run."""
    manifest = _parse_json(data, MANIFEST, origin)
    check_file(MANIFEST, manifest, origin)
    return manifest["files"]


def _read_bounded(path, origin, name):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SMALL_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(_recreate(origin).format(f"{name} is missing")) from None
    except IsADirectoryError:
        raise UserError(_recreate(origin).format(f"{name} is a folder, not a file")) from None
    except OSError as err:
        raise UserError(f"{origin}: cannot read {name} ({printable(err.strerror or err)})") from None
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise UserError(_recreate(origin).format(f"{name} is over {MAX_SMALL_FILE_BYTES >> 20} MiB"))
    return data


class _Files:
    """A run folder's files, each read at most once and checked against the manifest (when there is one)."""

    def __init__(self, root, origin, rewritten=(), extracted=None):
        self.root, self.origin = Path(root), origin
        self.extracted = extracted or {}  # name -> a zip's small file (bytes) or large file's sha256 (str)
        self.cache = {}  # relative name -> bytes (small files), checked
        self.hashed = set()  # large files already checked in full
        self.listed = None  # the manifest's entries, or None when the run has none
        manifest = self.root / MANIFEST
        if manifest.is_file():
            data = self.extracted.get(MANIFEST)
            self.listed = parse_manifest(
                data if isinstance(data, bytes) else _read_bounded(manifest, origin, MANIFEST), origin
            )
            for name in rewritten:  # files a tool is about to write anew: neither checked nor read
                self.listed.pop(name, None)
            self._check_all()

    def _check_all(self):
        for name, entry in self.listed.items():
            self._check_one(name, entry)

    def _changed(self, name):
        return UserError(
            f"{self.origin}: {name} does not match the run's manifest (changed or corrupted since training); "
            "re-download or re-create the run"
        )

    def require_listed(self, names):
        """With a manifest: each of `names` must be in it (a run whose manifest skips a file it needs is refused)."""
        if self.listed is None:
            return
        for name in names:
            if name not in self.listed:
                raise UserError(
                    f"{self.origin}: {name} is not in the run's manifest (added or left out after training); "
                    "re-create the run with train.py"
                )

    def exists(self, name):
        return name in self.listed if self.listed is not None else (self.root / name).is_file()

    def read(self, name):
        if name not in self.cache:
            self.require_listed([name])
            data = self.extracted.get(name)
            self.cache[name] = data if isinstance(data, bytes) else _read_bounded(self.root / name, self.origin, name)
        return self.cache[name]

    def json(self, name):
        return _parse_json(self.read(name), name, self.origin)

    def verified_path(self, name):
        """The path of a (large) file, hashed in full against the manifest the first time it is asked for."""
        path = self.root / name
        if self.listed is None:
            if not path.is_file():
                raise UserError(_recreate(self.origin).format(f"{name} is missing"))
            return path
        self.require_listed([name])
        if name not in self.hashed and name not in self.cache:
            recorded = self.extracted.get(name)  # a zip's large file was hashed while it was extracted
            if not isinstance(recorded, str):
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                recorded = digest.hexdigest()
            if recorded != self.listed[name]["sha256"]:
                raise self._changed(name)
            self.hashed.add(name)
        return path

    def sha256(self, name):
        if self.listed is not None and name in self.listed:
            return self.listed[name]["sha256"]
        if name in self.cache:
            return hashlib.sha256(self.cache[name]).hexdigest()
        return sha256_of(self.root / name)

    def within(self, prefix, origin):
        """The files under `prefix`/ as a run of their own (an ensemble member), sharing what was read."""
        member = _Files.__new__(_Files)
        member.root, member.origin = self.root / prefix, origin
        member.cache = {k[len(prefix) + 1 :]: v for k, v in self.cache.items() if k.startswith(prefix + "/")}
        member.extracted = {k[len(prefix) + 1 :]: v for k, v in self.extracted.items() if k.startswith(prefix + "/")}
        member.hashed = set()
        member.listed = None
        if MANIFEST in member.cache:
            member.listed = parse_manifest(member.cache[MANIFEST], origin)
            outer = self.listed or {}
            for name, entry in member.listed.items():
                known = outer.get(f"{prefix}/{name}")
                if known is None:  # the outer manifest does not cover it (a member copied by hand)
                    member._check_one(name, entry)
                elif known != entry:
                    raise member._changed(name)
        elif (member.root / MANIFEST).is_file():
            member.listed = parse_manifest(_read_bounded(member.root / MANIFEST, origin, MANIFEST), origin)
            member._check_all()
        return member

    def _check_one(self, name, entry):
        """Size of every listed file; the bytes of a small one, read once, against its sha256 (kept for parsing)."""
        path = self.root / name
        if not path.is_file() or path.is_symlink():
            raise UserError(
                f"{self.origin}: {name} is missing (the run's manifest lists it); re-create the run with train.py"
            )
        if path.stat().st_size != entry["bytes"]:
            raise self._changed(name)
        if PurePosixPath(name).name not in LARGE_FILES:
            data = self.extracted.get(name)
            if not isinstance(data, bytes):
                data = _read_bounded(path, self.origin, name)
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise self._changed(name)
            self.cache[name] = data


# %% The run


class Run:
    """A run folder (or the folder a zip was extracted to), read and checked once. Use as a context manager.

    Fields: folder, origin (what the user named), verified (it had a manifest and matched it), labels,
    config, thresholds (thresholds.json), train_config, onnx (onnx.json or None), max_length (tokens the
    model reads), members ([(Run, weight)] for an ensemble, else []), removed_on_close (the folder is a
    zip's extracted copy: what reads its files after close must have read them before).
    """

    def __init__(self, files, origin, temporary=None, rewritten=(), member=False, removed_on_close=False):
        self._files, self.folder, self.origin, self._temporary = files, files.root, origin, temporary
        self.removed_on_close = removed_on_close or temporary is not None
        self.verified = files.listed is not None
        self.is_ensemble = (files.root / ENSEMBLE_FILE).is_file()
        # An ensemble's member carries only what predicting on its ONNX export needs (no weights).
        required = MEMBER_REQUIRED_FILES if member else ENSEMBLE_REQUIRED_FILES if self.is_ensemble else REQUIRED_FILES
        missing = [name for name in required if not (files.root / name).is_file()]
        if missing:
            raise UserError(
                f"{origin} is not a genre-tagger run (missing {', '.join(missing)}); "
                "point --model at a folder or .zip written by train.py"
            )
        if self.verified:
            files.require_listed([*ENSEMBLE_REQUIRED_FILES] if self.is_ensemble else PREDICTING_NEEDS)
        # Each file is checked against its declared format (run_format) before any of its values is used.
        remedy = ENSEMBLE_TOOL if member or self.is_ensemble else TRAIN_PY
        self.config = files.json("config.json")
        self.labels = check_file("config.json", self.config, origin, remedy=remedy)
        self.train_config = files.json("train_config.json")
        check_file("train_config.json", self.train_config, origin, self.labels, remedy)
        self.thresholds = files.json("thresholds.json")
        check_file("thresholds.json", self.thresholds, origin, self.labels, remedy)
        # Folded into a model's weights, so only read back: by an ensemble, which averages its members'
        # uncalibrated probabilities and calibrates the average with the map in ensemble.json.
        self.calibration = None
        if (files.root / CALIBRATION_FILE).is_file():
            self.calibration = files.json(CALIBRATION_FILE)
            check_file(CALIBRATION_FILE, self.calibration, origin, self.labels, remedy)
        self.onnx = None
        if (files.root / "onnx.json").is_file() and "onnx.json" not in rewritten:
            self.onnx = files.json("onnx.json")
            check_file("onnx.json", self.onnx, origin, self.labels, remedy)
            files.require_listed(["onnx.json", self.onnx["files"][self.onnx.get("default", "fp32")]])
        max_length = self.onnx["max_length"] if self.onnx else self.train_config["settings"].get("max_length")
        self.ensemble_calibration = None  # an ensemble's map from averaged to calibrated probabilities
        self.members = self._open_members() if self.is_ensemble else []
        if self.members:
            max_length = max(member.max_length for member, _ in self.members)
        if max_length is None:
            raise UserError(_recreate(origin).format("train_config.json has no max_length setting"))
        positions = self.config.get("encoder", self.config).get("max_position_embeddings")
        if positions is not None and max_length > positions:
            raise UserError(
                f"{origin}: the model reads {max_length} tokens (onnx.json or train_config.json's max_length), more "
                f"than its {positions} positions (config.json's max_position_embeddings); re-create the run ({remedy})"
            )
        self.max_length = max_length

    @classmethod
    def open(cls, path=DEFAULT_RUN, rewritten=()):
        """Open a run folder or its .zip (the default run falls back to its zip), or a one-line UserError.

        rewritten: files a tool (export) is about to write anew, left out of the check (folders only).
        """
        path = Path(path)
        if not path.exists():
            if path == DEFAULT_RUN and zip_path_of(DEFAULT_RUN).exists():
                path = zip_path_of(DEFAULT_RUN)
            else:
                raise UserError(f"no trained model at {path}; run train.py first (or pass --model PATH)")
        if path.is_dir():
            return cls(_Files(path, path, rewritten), path, rewritten=rewritten)
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither a run folder nor a zip; point --model at what train.py wrote")
        temporary = tempfile.TemporaryDirectory(prefix="genre-tagger-run-")
        try:
            extracted = {}
            folder = safe_extract(path, temporary.name, extracted)
            return cls(_Files(folder, path, extracted=extracted), path, temporary)
        except BaseException:
            temporary.cleanup()
            raise

    def close(self):
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"Run({str(self.origin)!r}, {len(self.labels)} genres{', ensemble' if self.is_ensemble else ''})"

    def has(self, name):
        return self._files.exists(name)

    def json(self, name):
        """A JSON file of the run other than those parsed on open (metrics.json, ...), checked like the rest."""
        return self._files.json(name)

    def read(self, name):
        return self._files.read(name)

    def verified_path(self, name):
        """Path of a file a backend loads (weights, ONNX graph), hashed against the manifest once."""
        return self._files.verified_path(name)

    def sha256(self, name):
        return self._files.sha256(name)

    def thresholds_for(self, choice, flag="--threshold"):
        """A number in (0, 1), 'tuned' (per genre, tuned on validation by train.py) or 'tuned-global'."""
        return thresholds_from(self.thresholds, self.labels, choice, flag)

    def onnx_file(self, variant=None):
        """(variant, file name) of the ONNX graph to run: `variant`, or the one train.py chose."""
        if self.onnx is None:
            raise UserError(f"{self.origin} has no ONNX export; run: python -m genre_tagger.export RUN_FOLDER")
        variant = variant or self.onnx.get("default", "fp32")
        left_out = self.onnx.get(ZIP_LEFT_OUT)
        if isinstance(left_out, dict) and variant in left_out:
            raise UserError(
                f"{self.origin} leaves out the ONNX {variant} model to stay small (its run folder has it; or unzip it "
                f"and run python -m genre_tagger.export FOLDER); or use --onnx-variant {' or '.join(self.onnx['files'])}"
            )
        if variant not in self.onnx["files"]:
            raise UserError(
                f"{self.origin} has no ONNX {variant} model; choose --onnx-variant {' or '.join(self.onnx['files'])}"
            )
        return variant, self.onnx["files"][variant]

    def _open_members(self):
        spec = self._files.json(ENSEMBLE_FILE)
        check_file(ENSEMBLE_FILE, spec, self.origin, self.labels, ENSEMBLE_TOOL)
        opened = []
        for member in spec["members"]:
            where = member["folder"]
            origin = f"{self.origin} ({where})"
            files = self._files.within(where, origin)
            if files.listed is None:
                raise UserError(f"{origin} has no manifest.json; re-create the ensemble with {ENSEMBLE_TOOL}")
            run = Run(files, origin, member=True, removed_on_close=self.removed_on_close)
            if run.labels != self.labels:
                raise UserError(f"{origin} tags other genres than the ensemble; re-create the ensemble")
            if run.onnx is None:
                raise UserError(f"{origin} has no ONNX export; re-create the ensemble")
            opened.append((run, float(member["weight"])))
        self.ensemble_calibration = spec.get("calibration")
        return opened
