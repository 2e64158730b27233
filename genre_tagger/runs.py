"""A saved run: one self-describing folder, written atomically, zipped, and opened again (folder or zip).

Layout of a run folder:
    config.json          encoder config with id2label, label2id, problem_type, pooling
    model.safetensors    classifier weights
    tokenizer.json ...   the tokenizer
    binarizer.joblib     the fitted MultiLabelBinarizer
    train_config.json    every setting of the run, the base model really used, versions, timings
    metrics.json         validation and test metrics, baseline beside them
    thresholds.json      default, tuned global and tuned per-genre thresholds
    per_genre.csv        per-genre precision/recall/F1/support on the test rows
    split.csv            which source row went to train / validation / test
    model.onnx, model.int8.onnx, onnx.json   the exported model for fast CPU inference
    plots/*.png          pictures of the evaluation
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from genre_tagger import UserError

DEFAULT_RUN = Path("models/genre-classifier")
REQUIRED_FILES = ("config.json", "model.safetensors", "thresholds.json", "train_config.json")


def zip_path_of(folder):
    """models/genre-classifier -> models/genre-classifier.zip (kept whole, even with dots in the name)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.zip"


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


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


def zip_folder(folder, zip_path):
    """Zip a run folder (entries relative to it) via a temporary file, then rename into place."""
    folder, zip_path = Path(folder), Path(zip_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        os.chmod(tmp_name, _umask_mode(0o666))
        os.replace(tmp_name, zip_path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return zip_path


def safe_extract(zip_path, target):
    """Extract a run zip into `target`, refusing entries that would land outside it (zip slip)."""
    target = Path(target).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for entry in archive.infolist():
                destination = (target / entry.filename).resolve()
                if not destination.is_relative_to(target) or entry.filename.startswith(("/", "\\")):
                    raise UserError(
                        f"{zip_path} has an entry that would land outside its folder ({entry.filename!r}); refusing to extract it"
                    )
            archive.extractall(target)
    except (zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{zip_path} is not a readable zip ({err}); re-create it with train.py") from None
    return target


def check_run_folder(folder, origin=None):
    origin = origin or folder
    missing = [name for name in REQUIRED_FILES if not (Path(folder) / name).exists()]
    if missing:
        raise UserError(
            f"{origin} is not a genre-tagger run (missing {', '.join(missing)}); "
            "point --model at a folder or .zip written by train.py"
        )
    return Path(folder)


class OpenRun:
    """Context manager giving a run folder for a path that is a run folder or its .zip.

    A zip is extracted into a temporary folder that is removed on exit; the zip itself is never touched.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._tmp = None

    def __enter__(self):
        path = self.path
        if not path.exists():
            if path == DEFAULT_RUN and zip_path_of(DEFAULT_RUN).exists():
                path = zip_path_of(DEFAULT_RUN)
            else:
                raise UserError(f"no trained model at {self.path}; run train.py first (or pass --model PATH)")
        if path.is_dir():
            return check_run_folder(path)
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither a run folder nor a zip; point --model at what train.py wrote")
        self._tmp = tempfile.TemporaryDirectory(prefix="genre-tagger-run-")
        return check_run_folder(safe_extract(path, self._tmp.name), origin=path)

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()
        return False


def labels_of(folder):
    """Genre names in output order, from the run's config.json (id2label)."""
    id2label = read_json(Path(folder) / "config.json")["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def thresholds_of(folder, choice):
    """Thresholds for `choice`: a number, 'tuned' (per-genre, saved by train.py) or 'tuned-global'."""
    saved = read_json(Path(folder) / "thresholds.json")
    if choice == "tuned":
        return [saved["per_label"][label] for label in labels_of(folder)]
    if choice == "tuned-global":
        return saved["global"]
    try:
        value = float(choice)
    except ValueError:
        raise UserError(f"--threshold must be a number in (0, 1), 'tuned' or 'tuned-global', not {choice!r}") from None
    if not 0 < value < 1:
        raise UserError(f"--threshold must be between 0 and 1, not {value}")
    return value
