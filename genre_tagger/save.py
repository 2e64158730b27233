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
from genre_tagger.common import printable, sha256_of, spreadsheet_safe, umask_mode, write_json
from genre_tagger.run import (
    CALIBRATION_FILE,
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
from genre_tagger.run_format import FORMAT_VERSION

# Inside every folder this project creates to work in (staging, set-aside, checkpoints): only a folder
# carrying it is ever removed as a leftover.
OWN_MARKER = ".genre-tagger-owned"
# What train.py writes into a run (besides plots/*.png); a folder holding anything else is not replaced.
RUN_FILE_NAMES = {
    *REQUIRED_FILES,
    *LARGE_FILES,
    MANIFEST,
    ENSEMBLE_FILE,
    CALIBRATION_FILE,
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
    """Record sha256 and size of every file of a finished run (and the run format it is written in), and give every
    file the same mode."""
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
    # format: manifest.json's own layout; format_version: the run's, which Run.open reads (run_format.py).
    write_json(folder / MANIFEST, {"format": 1, "format_version": FORMAT_VERSION, "files": files})
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


# --- train.py: its output, its checkpoints and the saving of a run ----------------------------------

RESUME_RECORD = "genre-tagger-resume.json"  # inside a checkpoint folder: what the interrupted run trained on
# Settings that may change between an interrupted run and its --resume (the data is compared by sha256).
RESUME_MAY_DIFFER = ("resume", "threads", "checkpoint_dir", "data", "test_data")


def _pending_zip_marker(output):
    """Beside a run folder while it is published but its zip not yet rewritten from it."""
    output = Path(output)
    return output.parent / f".{output.name}.zip.pending"


def checkpoint_folders(args):
    """The folders train.py lets the Trainer write checkpoints into (one per fold with --folds)."""
    root = Path(args.checkpoint_dir)
    if args.folds:
        return [root / f"fold-{fold}" for fold in range(args.folds)]
    return [root / Path(args.output).name]


def _overlap(a, b):
    return a == b or a in b.parents or b in a.parents


def cross_validation_path(args):
    """Where --folds K writes its results: `<output>-cv<K>.json`, beside --output."""
    output = Path(args.output)
    return output.parent / f"{output.name}-cv{args.folds}.json"


def paths_problem(args):
    """Why --output, its zip, the checkpoint folders and the input files would overlap, or a cross-validation's
    results file would replace an earlier one; or None."""
    if args.folds and ((results := cross_validation_path(args)).exists() or results.is_symlink()):
        return (
            f"--output {args.output} with --folds {args.folds} would replace {results}; move it or choose another "
            "--output so nothing of yours is replaced"
        )
    output = Path(args.output).resolve()
    for folder in output.parents:
        if (folder / MANIFEST).is_file() or (
            (folder / "config.json").is_file() and (folder / "train_config.json").is_file()
        ):
            return f"--output {args.output} is inside the run {folder}; write the new run beside it, not in it"
    if args.test_data and Path(args.test_data).resolve() == Path(args.data).resolve():
        return "--test-data is the --data file: the model would be tested on rows it trained on; give a separate file"
    named = [("--output", output), ("--output's zip", zip_path_of(output))]
    named += [("--checkpoint-dir", folder.resolve()) for folder in checkpoint_folders(args)]
    inputs = [("--data", Path(args.data).resolve())]
    if args.test_data:
        inputs.append(("--test-data", Path(args.test_data).resolve()))
    for i, (name, path) in enumerate(named):
        # Among what train.py writes, neither may hold the other; an input file may not be in what it writes.
        pairs = [(n, o, _overlap(path, o)) for n, o in named[i + 1 :]]
        pairs += [(n, o, path == o or path in o.parents) for n, o in inputs]
        for other_name, other, overlapping in pairs:
            if name != other_name and overlapping:
                return (
                    f"{name} ({path}) and {other_name} ({other}) are the same path or one holds the other; "
                    "choose separate places so nothing is overwritten or removed"
                )
    return None


def checkpoint_problem(folder):
    """Why train.py may not use `folder` for its checkpoints (not a folder, or one it did not create), or None."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return f"--checkpoint-dir: {folder} exists and is not a folder"
    if not is_own(folder) and any(folder.iterdir()):
        return (
            f"--checkpoint-dir: {folder} exists and was not created by train.py; it is never used or removed: "
            "choose another --checkpoint-dir"
        )
    return None


def output_problem(args):
    """Refuse, before any work, to replace anything that is not a run of ours or to start over a resumable run."""
    output = Path(args.output)
    if problem := replace_problem(output):
        return f"--output: {problem}; choose another folder so nothing of yours is replaced"
    if problem := zip_replace_problem(zip_path_of(output)):
        return f"--output: {problem}; move it or choose another --output so it is not overwritten"
    if args.freeze_encoder and args.resume:
        return "--resume continues a fine-tune from its checkpoints; a --freeze-encoder run has none: drop --resume"
    if args.freeze_encoder and args.probe_first:
        return "--probe-first fine-tunes after fitting the head; --freeze-encoder never fine-tunes: choose one"
    from genre_tagger import distributed

    if args.freeze_encoder and distributed.world_size() > 1:
        return "--freeze-encoder fits its head in one process: run train.py without torchrun or accelerate launch"
    for folder in checkpoint_folders(args):
        if problem := checkpoint_problem(folder):
            return problem
    checkpoints = Path(args.checkpoint_dir) / output.name
    if not args.resume and any(checkpoints.glob("checkpoint-*")):
        return f"{checkpoints} holds checkpoints of an interrupted run: continue it with --resume, or delete that folder to start over"
    if args.resume and not any(checkpoints.glob("checkpoint-*")):
        return f"--resume: no checkpoint in {checkpoints} to continue from"
    return None


def tidy_interrupted(args):
    """Finish or remove what an interrupted train.py left behind for this --output, saying so; keep resumable work."""
    output = Path(args.output)
    leftovers = stale_leftovers(output)
    previous = [p for p in leftovers if p.name.startswith(f".{output.name}.previous-")]
    if previous and not output.exists() and not output.is_symlink():
        # Stopped inside publish_folder, between setting the old run aside and renaming the new one in.
        newest = max(previous, key=lambda p: p.stat().st_mtime)
        os.replace(newest, output)
        (output / OWN_MARKER).unlink(missing_ok=True)
        leftovers.remove(newest)
        print(f"note: restored {output} (set aside by an interrupted save)")
    if leftovers:
        remove_paths(leftovers)
        print(f"note: removed {len(leftovers)} half-written leftover(s) of an interrupted save beside {output}")
    pending = _pending_zip_marker(output)
    if pending.is_file():
        zip_path = zip_path_of(output)
        if (output / MANIFEST).is_file() and not zip_replace_problem(zip_path):
            print(f"note: {output} was saved but its zip was not (interrupted); rewriting {zip_path} from it")
            zip_folder(output, zip_path)
        pending.unlink(missing_ok=True)
    if args.folds:
        return
    checkpoints = Path(args.checkpoint_dir) / output.name
    manifest = output / MANIFEST
    if (
        not args.resume
        and is_own(checkpoints)
        and manifest.exists()
        and all(c.stat().st_mtime < manifest.stat().st_mtime for c in checkpoints.glob("checkpoint-*"))
    ):
        # The run was saved after its last checkpoint: the process stopped before its own clean-up.
        remove_checkpoints(checkpoints)
        print(f"note: removed checkpoints in {checkpoints} left by an interrupted clean-up ({output} is complete)")


def prepare_output(args):
    """All checks of where train.py writes, then the tidying of an interrupted run; raises UserError."""
    if problem := paths_problem(args):
        raise UserError(problem)
    tidy_interrupted(args)
    if problem := output_problem(args):
        raise UserError(problem)


def _normalised(payload):
    return json.loads(json.dumps(payload))


def start_checkpoints(folder, args, labels, base_model, world_size, write=True):
    """Create (or, with --resume, check) a checkpoint folder: marked as ours, with a record of what it trains.

    --resume with other data, labels, base model, world size or settings than the interrupted run is refused,
    naming the first difference.
    """
    folder = Path(folder)
    record = _normalised(
        {
            "settings": {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_MAY_DIFFER},
            "data_sha256": sha256_of(args.data),
            "test_data_sha256": sha256_of(args.test_data) if args.test_data else None,
            "labels": list(labels),
            "base_model": base_model,
            "world_size": world_size,
        }
    )
    if args.resume:
        try:
            before = json.loads((folder / RESUME_RECORD).read_text())
            if not isinstance(before, dict):
                raise ValueError(RESUME_RECORD)
        except (OSError, ValueError, RecursionError):
            raise UserError(
                f"--resume: {folder} has no readable record of what the interrupted run trained on "
                f"({RESUME_RECORD}); delete that folder to start over"
            ) from None
        for key, now in record.items():
            then = before.get(key)
            if key == "settings":
                for name, value in now.items():
                    if then is None or then.get(name) != value:
                        old = None if then is None else then.get(name)
                        flag = "--" + name.replace("_", "-")
                        raise UserError(
                            f"--resume: {flag} is {value!r}, the interrupted run used {old!r}; resume with the same "
                            "settings, or delete the checkpoints to start over"
                        )
            elif then != now:
                what = {
                    "data_sha256": "--data differs (sha256)",
                    "test_data_sha256": "--test-data differs (sha256)",
                    "labels": "the labels differ",
                    "base_model": f"the base model differs ({then!r} then, {now!r} now)",
                    "world_size": f"the number of processes differs ({then!r} then, {now!r} now)",
                }[key]
                raise UserError(
                    f"--resume: {what} from the interrupted run in {folder}; resume with what it trained on, "
                    "or delete the checkpoints to start over"
                )
        return folder
    if not folder.parent.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        mark_own(folder.parent)  # created here: removed again once empty
    folder.mkdir(exist_ok=True)
    mark_own(folder)
    if write:
        write_json(folder / RESUME_RECORD, record)
    return folder


def remove_checkpoints(folder):
    """Remove a checkpoint folder train.py created, and its parent if train.py created that and it is now empty."""
    folder = Path(folder)
    remove_own(folder)
    parent = folder.parent
    if is_own(parent) and all(p.name == OWN_MARKER for p in parent.iterdir()):
        shutil.rmtree(parent, ignore_errors=True)


def publish_and_zip(staged, output):
    """Publish the finished run folder, then its zip; a stop in between is noted and repaired by the next run."""
    pending = _pending_zip_marker(output)
    pending.touch()
    publish_folder(staged, output)
    zip_path = zip_folder(output, zip_path_of(output))
    pending.unlink(missing_ok=True)
    return zip_path


def save_run(
    output, args, *, model, tokenizer, binarizer, tuned, data, split, scores, evaluation, calibration, training, started
):
    """Write the run folder (built in a staging folder, sealed by a manifest, renamed into place), its zip, and
    remove the checkpoints. Returns the zip's path.

    data: movies, texts, test_movies, test_texts, cleaning; split: train_idx, val_idx, test_idx, Y, Y_test;
    scores: P_val, P_test, report, baseline_report, unseen_in_test (calibrated probabilities); calibration:
    fitted, default_thresholds, reports, before_test (uncalibrated test probabilities); training: base_model, base_path,
    fallback_note, best_epoch, log_history, parallel, train_seconds, checkpoint_dir.
    """
    import platform
    import time

    import joblib
    import pandas as pd
    import torch
    import transformers

    from genre_tagger import data as gdata
    from genre_tagger import metrics as gmetrics
    from genre_tagger import plots
    from genre_tagger.modeling import export_run, positive_weights, save_classifier

    output = Path(output)
    labels = list(binarizer.classes_)
    movies, texts, test_movies, test_texts = data["movies"], data["texts"], data["test_movies"], data["test_texts"]
    train_idx, val_idx, test_idx, Y, Y_test = (split[k] for k in ("train_idx", "val_idx", "test_idx", "Y", "Y_test"))
    Y_val, P_val, P_test, report = Y[val_idx], scores["P_val"], scores["P_test"], scores["report"]
    staged = staging_folder(output)
    try:
        save_classifier(model, tokenizer, staged)
        joblib.dump(binarizer, staged / "binarizer.joblib")
        fitted = calibration["fitted"]
        write_json(
            staged / CALIBRATION_FILE,
            {
                **fitted,
                "fitted_on": f"validation rows ({len(val_idx)})",
                "applied": "folded into the classifier's last layer: the model's outputs are calibrated",
            },
        )
        write_json(
            staged / "thresholds.json",
            {
                "default": args.threshold,
                "default_per_label": dict(zip(labels, map(float, calibration["default_thresholds"]))),
                "scale": f"calibrated ({fitted['method']})" if fitted["method"] != "none" else "uncalibrated",
                **tuned,
            },
        )
        split_rows = (
            [("train", i) for i in train_idx]
            + [("validation", i) for i in val_idx]
            + [("test", i) for i in (test_idx if test_idx is not None else [])]
        )
        split_frame = pd.DataFrame(
            [
                {
                    "split": s,
                    "source_row": int(movies["source_row"].iloc[i]),
                    "labels": ",".join(movies["labels"].iloc[i]),
                    "text": texts[i],
                }
                for s, i in split_rows
            ]
            + [
                {"split": "test", "source_row": int(r), "labels": ",".join(g), "text": t}
                for r, g, t in (
                    zip(test_movies["source_row"], test_movies["labels"], test_texts) if test_movies is not None else []
                )
            ]
        )
        # Text from the data and genre names are written spreadsheet-safe; data.read_split reads them back.
        for column in ("labels", "text"):
            split_frame[column] = split_frame[column].map(spreadsheet_safe)
        split_frame.to_csv(staged / "split.csv", index=False)
        per_genre = pd.DataFrame(report)
        per_genre["label"] = per_genre["label"].map(spreadsheet_safe)
        per_genre.to_csv(staged / "per_genre.csv", index=False)
        (staged / "plots").mkdir()
        plots.per_label_f1(report, scores["baseline_report"], staged / "plots" / "per_genre_f1.png")
        plots.threshold_curve(
            gmetrics.THRESHOLD_GRID,
            gmetrics.macro_f1_by_threshold(Y_val, P_val),
            tuned["global"],
            staged / "plots" / "threshold_curve.png",
        )
        plots.precision_recall_curves(Y_test, P_test, labels, staged / "plots" / "precision_recall.png")
        plots.cooccurrence(Y, labels, staged / "plots" / "cooccurrence.png")
        plots.reliability(Y_test, calibration["before_test"], P_test, staged / "plots" / "reliability.png")

        metrics_payload = {
            "threshold": args.threshold,
            "tuned_thresholds": tuned,
            "calibration": {"method": fitted["method"], **calibration["reports"]},
            "test_genres_not_learned": scores["unseen_in_test"],
            "base_model": training["base_model"],
            "best_epoch": training["best_epoch"],
            **evaluation,
            "per_genre_test": report,
            "baseline_tfidf_per_genre_test": scores["baseline_report"],
            "log_history": training["log_history"],
        }
        write_json(staged / "metrics.json", metrics_payload)
        write_json(
            staged / "train_config.json",
            {
                "settings": vars(args),
                "base_model": training["base_model"],
                "base_model_path": training["base_path"],
                "fallback": training["fallback_note"],
                "labels": labels,
                "data": {
                    "path": str(args.data),
                    "test_path": args.test_data,
                    "sha256": gdata.sha256_of(args.data),
                    "cleaning": data["cleaning"],
                },
                "split_sizes": {"train": len(train_idx), "validation": len(val_idx), "test": len(Y_test)},
                "pos_weight": dict(zip(labels, map(float, positive_weights(Y[train_idx], args.pos_weight)))),
                "parallel": training["parallel"],
                "seconds": {
                    "train": round(training["train_seconds"], 1),
                    "until_save": round(time.time() - started, 1),
                },
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                },
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
            },
        )
        onnx_info = export_run(staged)
        check = onnx_info["check"]
        print(
            "ONNX export checked against PyTorch on validation rows: "
            + "; ".join(
                f"{v}: decisions agree {check[v]['decision_agreement_vs_torch']:.2%}, max |Δp| {check[v]['max_abs_probability_difference_vs_torch']:.4f}, macro-F1 {check[v]['macro_f1']:.4f}"
                for v in onnx_info["files"]
            )
            + f"; predict.py uses {onnx_info['default']}"
        )
        write_manifest(staged)
        zip_path = publish_and_zip(staged, output)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    remove_checkpoints(training["checkpoint_dir"])
    print(f"saved {output}/ and {zip_path} in {time.time() - started:.0f} s total")
    return zip_path
