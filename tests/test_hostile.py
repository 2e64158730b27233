"""Hostile and malformed input: every case ends in one clean line (or a correct result), loses no file and
leaves nothing half-written; nothing from a run is executed.

Each case runs the script as a user would (a fresh process) and checks the exit code, the one-line
message, and the files around it.
"""

import json
import os
import pickle
import resource
import shutil
import signal
import zipfile

import pytest

from conftest import one_line_error, run_script
from genre_tagger import UserError, save
from genre_tagger import run as runs

PLOT = "A retired hitman seeks revenge on the gangsters who killed his dog."


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run folder, to tamper with."""
    copy = tmp_path / "run"
    shutil.copytree(trained["output"], copy)
    return copy


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- nothing from a run is executed ---------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--backend", "torch"], ["--backend", "onnx"]])
def test_a_pickle_in_the_run_is_never_loaded(run_copy, tmp_path, flags):
    marker = tmp_path / "pwned"
    (run_copy / "binarizer.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    save.write_manifest(run_copy)  # an attacker can rewrite the manifest too: it is no signature
    result = run_script("predict.py", "--model", run_copy, *flags, PLOT)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert "Crime" in result.stdout or "(no genre" in result.stdout or "," in result.stdout


def test_no_onnx_export_says_which_backend_runs_and_executes_nothing(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    (run_copy / "binarizer.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    for name in ("onnx.json", "model.onnx", "model.int8.onnx"):
        (run_copy / name).unlink()
    save.write_manifest(run_copy)
    result = run_script("predict.py", "--model", run_copy, PLOT)
    assert result.returncode == 0, result.stderr
    assert "PyTorch backend" in result.stderr and not marker.exists()


# --- a run checks itself ------------------------------------------------------------------------


def test_changed_model_bytes_are_named(run_copy):
    variant = json.loads((run_copy / "onnx.json").read_text())["default"]
    model_file = run_copy / json.loads((run_copy / "onnx.json").read_text())["files"][variant]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    one_line_error(run_script("predict.py", "--model", run_copy, PLOT), model_file.name, "does not match")
    data = bytearray((run_copy / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (run_copy / "model.safetensors").write_bytes(bytes(data))
    one_line_error(
        run_script("predict.py", "--model", run_copy, "--backend", "torch", PLOT), "model.safetensors", "does not match"
    )


def test_reversed_labels_are_caught_with_or_without_a_rewritten_manifest(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))][::-1]
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (run_copy / "config.json").write_text(json.dumps(config))
    one_line_error(run_script("predict.py", "--model", run_copy, PLOT), "config.json", "does not match")
    save.write_manifest(run_copy)
    one_line_error(run_script("predict.py", "--model", run_copy, PLOT), "trained on")


@pytest.mark.parametrize("name", ["config.json", "onnx.json", "thresholds.json", "train_config.json"])
def test_broken_json_files_are_named(run_copy, name):
    (run_copy / name).write_text('{"broken": ')
    one_line_error(run_script("predict.py", "--model", run_copy, PLOT), name)
    save.write_manifest(run_copy)
    one_line_error(run_script("predict.py", "--model", run_copy, PLOT), name)


@pytest.mark.parametrize(
    "name, change, fragment",
    [
        ("model.int8.onnx", b"not an onnx graph", "cannot be loaded"),
        ("model.onnx", b"not an onnx graph", "cannot be loaded"),
        ("tokenizer.json", None, "tokenizer.json"),
        ("model.int8.onnx", None, "model.int8.onnx"),
    ],
)
def test_corrupt_or_missing_model_files_are_one_line(run_copy, name, change, fragment):
    if change is None:
        (run_copy / name).unlink()
    else:
        (run_copy / name).write_bytes(change)
    save.write_manifest(run_copy)
    variant = "int8" if name.startswith("model.int8") else "fp32"
    one_line_error(run_script("predict.py", "--model", run_copy, "--onnx-variant", variant, PLOT), fragment)


def test_missing_per_genre_thresholds_with_threshold_tuned(run_copy):
    thresholds = json.loads((run_copy / "thresholds.json").read_text())
    del thresholds["per_label"]
    (run_copy / "thresholds.json").write_text(json.dumps(thresholds))
    save.write_manifest(run_copy)
    one_line_error(run_script("predict.py", "--model", run_copy, "--threshold", "tuned", PLOT), "per-genre thresholds")


def test_a_run_without_manifest_still_tags_with_a_note(run_copy):
    (run_copy / "manifest.json").unlink()
    result = run_script("predict.py", "--model", run_copy, PLOT)
    assert result.returncode == 0 and "not verified" in result.stderr


# --- zips ----------------------------------------------------------------------------------------


def test_hostile_zips_are_refused_in_one_line(trained, tmp_path):
    corrupt = tmp_path / "corrupt-deflate.zip"
    shutil.copy(trained["zip"], corrupt)
    data = bytearray(corrupt.read_bytes())
    with zipfile.ZipFile(corrupt) as archive:
        entry = archive.getinfo("model.safetensors")
    start = entry.header_offset + 30 + len(entry.filename) + 2000
    data[start : start + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    one_line_error(run_script("predict.py", "--model", corrupt, PLOT), "not a readable zip")

    linked = tmp_path / "symlink.zip"
    shutil.copy(trained["zip"], linked)
    with zipfile.ZipFile(linked, "a") as archive:
        link = zipfile.ZipInfo("plots/evil")
        link.external_attr = (0o120777 << 16) | 0x20
        archive.writestr(link, "/etc/passwd")
    one_line_error(run_script("predict.py", "--model", linked, PLOT), "symbolic link")

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in runs.REQUIRED_FILES:
            archive.writestr(name, "{}")
        archive.writestr("padding.bin", bytes(64 << 20))
    one_line_error(run_script("predict.py", "--model", bomb, PLOT), "zip bomb")
    assert list(tmp_path.glob("genre-tagger-run-*")) == []


# --- settings and input files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--batch-size=-5"], "--batch-size must be a whole number between 1"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "100000"], "--threads must be a whole number between 0"),
        (["--threads", "-1"], "--threads"),
        (["--top-k", "0"], "--max-genres"),
        (["--min-genres", "3", "--max-genres", "2"], "--min-genres"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "tuned-ish"], "--threshold"),
        (["--input-format", "csv"], "--input-format goes with --input"),
    ],
)
def test_predict_settings_are_checked_before_work(trained, flags, fragment):
    result = run_script("predict.py", "--model", trained["output"], *flags, PLOT)
    one_line_error(result, fragment)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('Title,Description\nA,"An unclosed plot\nB,Second plot\nC,Third plot\n', "row 2"),
        ('Title,Description\nA,"Unclosed, Drama\nB,Plot two, Comedy",x\n', "row 2"),
        ("Title,Description,Genre\nA,A plot,Drama\nB,Another plot\n", "row 3 has 2 fields"),
        ("Title,Description,Genre\nA,A plot,Drama\nB,Another plot,\n", "row 3 has no 'Genre' value"),
        ("Title,Description\nA,A \x00 plot\n", "NUL"),
        ("Title,Description\nA,A plot\nB, \n", "row 3 has an empty description"),
    ],
)
def test_malformed_csv_names_its_row_and_leaves_no_output(trained, tmp_path, content, fragment):
    source = tmp_path / "movies.csv"
    source.write_text(content)
    out = tmp_path / "tagged.csv"
    result = run_script("predict.py", "--model", trained["output"], "--input", source, "--output", out)
    one_line_error(result, fragment)
    assert files_in(tmp_path) == ["movies.csv"]


def test_bad_row_after_the_first_chunk_leaves_no_partial_file(trained, tmp_path):
    source = tmp_path / "big.txt"
    source.write_text("A detective hunts a killer.\n" * 2100 + "\x00 binary tail\n")
    out = tmp_path / "tagged.jsonl"
    one_line_error(
        run_script("predict.py", "--model", trained["output"], "--input", source, "--output", out), "line 2101"
    )
    assert files_in(tmp_path) == ["big.txt"]
    source.write_text("A detective hunts a killer.\n" * 2100)
    result = run_script("predict.py", "--model", trained["output"], "--input", source, "--output", out)
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 2100


def test_input_errors_are_one_line(trained, tmp_path):
    one_line_error(run_script("predict.py", "--model", trained["output"], "--input", tmp_path), "is a folder")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Un film étrange.\n".encode("latin-1"))
    one_line_error(run_script("predict.py", "--model", trained["output"], "--input", latin), "not UTF-8")
    one_line_error(
        run_script("predict.py", "--model", trained["output"], "--input", tmp_path / "none.csv"), "does not exist"
    )
    one_line_error(run_script("predict.py", "--model", trained["output"], "--input", "/dev/zero"), "binary file")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    one_line_error(run_script("predict.py", "--model", trained["output"], "--input", fifo), "named pipe")
    lines = tmp_path / "plots.jsonl"
    lines.write_text('{"Description": "A heist."}\nA raw line\n')
    one_line_error(run_script("predict.py", "--model", trained["output"], "--input", lines), "line 2 is not JSON")


@pytest.mark.parametrize("size_limit", [9_000, 20_000, 61_000])
def test_write_error_mid_output_is_one_line_and_keeps_nothing(trained, tmp_path, size_limit):
    """The limit lands mid-record in a write, or in the close that flushes the last buffer: one line either way."""
    source = tmp_path / "plots.txt"
    source.write_text("A detective hunts a killer in a city of rain.\n" * 300)
    out = tmp_path / "tagged.jsonl"

    def small_file_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_limit, size_limit))

    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "predict.py", "--model", str(trained["output"]), "--input", str(source), "--output", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        preexec_fn=small_file_limit,
        timeout=300,
    )
    one_line_error(result, "cannot write")
    assert files_in(tmp_path) == ["plots.txt"]


def test_stdin_csv_is_sniffed_and_its_header_not_tagged(trained):
    import subprocess
    import sys

    from conftest import ROOT

    csv_text = 'Title,Description\nA,"A heist crew plans one last job."\nB,Two friends road-trip across America.\n'
    result = subprocess.run(
        [sys.executable, "predict.py", "--model", str(trained["output"]), "--input", "-", "--json"],
        cwd=ROOT,
        input=csv_text,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    descriptions = [json.loads(line)["description"] for line in result.stdout.splitlines()]
    assert descriptions == ["A heist crew plans one last job.", "Two friends road-trip across America."]
    assert "reading stdin as CSV" in result.stderr


# --- safe output ---------------------------------------------------------------------------------


def test_formulas_are_neutralised_and_control_characters_escaped(trained, tmp_path):
    source = tmp_path / "evil.txt"
    source.write_text('=HYPERLINK("http://x","click") a heist\n+1 a romance\n@SUM(A1) a war film\nplain plot\n')
    out = tmp_path / "tagged.csv"
    result = run_script("predict.py", "--model", trained["output"], "--input", source, "--output", out)
    assert result.returncode == 0, result.stderr
    import csv

    cells = [row[0] for row in csv.reader(out.open())][1:]
    assert cells[:3] == ['\'=HYPERLINK("http://x","click") a heist', "'+1 a romance", "'@SUM(A1) a war film"]
    assert cells[3] == "plain plot"
    shown = run_script("predict.py", "--model", trained["output"], "A plot \x1b[31mred\x1b[0m", "and \x07 bell")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b[31mred" in shown.stdout


def test_unreadable_text_gets_a_warning(trained):
    result = run_script("predict.py", "--model", trained["output"], "🎬🍿🎥🔥💥")
    assert result.returncode == 0
    assert "mostly unknown tokens" in result.stderr


def test_run_files_have_one_mode(trained):
    modes = {(p.stat().st_mode & 0o777) for p in trained["output"].rglob("*") if p.is_file()}
    assert len(modes) == 1, modes
    with zipfile.ZipFile(trained["zip"]) as archive:
        assert len({info.external_attr >> 16 & 0o777 for info in archive.infolist()}) == 1


# --- train.py ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--limit", "-1"], "--limit"),
        (["--seed", "-1"], "--seed must be a whole number between 0 and 4294967295"),
        (["--dropout", "5"], "--dropout must be a number between 0 and 1 (1 excluded)"),
        (["--lr", "-1"], "--lr must be a number between 0 and 1 (0 excluded)"),
        (["--lr", "inf"], "--lr"),
        (["--threads", "-1"], "--threads"),
        (["--threads", "100000"], "--threads must be a whole number between 0"),
        (["--save-steps", "-1"], "--save-steps"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--max-length", "100000"], "--max-length"),
        (["--folds", "1000"], "--folds"),
        (["--warmup-ratio", "1"], "--warmup-ratio"),
        (["--threshold-goal", "precision>0.9"], "--threshold-goal"),
        (["--threshold-goal", "=recall>=0.8"], "--threshold-goal"),
        (["--calibrate", "isotonic"], "--calibrate"),
    ],
)
def test_train_settings_are_checked_before_work(flags, fragment):
    one_line_error(run_script("train.py", *flags), fragment)


@pytest.mark.slow
def test_train_data_problems_are_one_line(tmp_path, imdb_csv):
    one_line_error(run_script("train.py", "--data", tmp_path, "--output", tmp_path / "r"), "is a folder")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('Title,Genre,Description\nA,Drama,"A plot\nB,Comedy,Another plot\n')
    one_line_error(run_script("train.py", "--data", unclosed, "--output", tmp_path / "r"), "row 2")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("Title,Genre,Description\nA,Drama,A plot\nB,Another plot\n")
    one_line_error(run_script("train.py", "--data", ragged, "--output", tmp_path / "r"), "row 3 has 2 fields")
    # A device, a pipe or a line without end never grows memory: refused in one line.
    one_line_error(run_script("train.py", "--data", "/dev/zero", "--output", tmp_path / "r"), "not a regular file")
    os.mkfifo(tmp_path / "pipe.csv")
    one_line_error(run_script("train.py", "--data", tmp_path / "pipe.csv", "--output", tmp_path / "r"), "regular file")
    endless = tmp_path / "endless.csv"
    endless.write_text("Title,Genre,Description\n" + "x" * (5 << 20))
    one_line_error(run_script("train.py", "--data", endless, "--output", tmp_path / "r"), "line longer than")
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "60", "--val-fraction", "0.01", "--output", tmp_path / "r"
    )
    one_line_error(result, "leave a split without rows")
    assert not (tmp_path / "r").exists()
    goal = ["--threshold-goal", "precision>=0.9", "Horor=f1"]  # a misspelt genre, known only once the data is read
    result = run_script("train.py", "--data", imdb_csv, "--limit", "60", *goal, "--output", tmp_path / "r")
    one_line_error(result, "names Horor, not among the genres")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_train_refuses_a_tokenizer_that_does_not_know_the_text(tmp_path, imdb_csv):
    """A base model whose vocabulary maps most words to [UNK] would train on sentence lengths alone."""
    from transformers import AutoModel, DistilBertConfig, DistilBertTokenizerFast

    base = tmp_path / "tiny-vocab"
    base.mkdir()
    (base / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    DistilBertTokenizerFast.from_pretrained(base).save_pretrained(base)
    config = DistilBertConfig(vocab_size=7, dim=16, hidden_dim=32, n_layers=1, n_heads=2)
    AutoModel.from_config(config).save_pretrained(base)
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "60", "--model", base, "--output", tmp_path / "r",
        "--checkpoint-dir", tmp_path / "checkpoints",
    )  # fmt: skip
    one_line_error(result, "does not know", "of the training words")
    assert not (tmp_path / "r").exists() and not (tmp_path / "checkpoints").exists()


def test_train_never_replaces_what_it_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train_config.json").write_text("{}")
    (mine / "config.json").write_text("{}")
    (mine / "thesis.docx").write_text("years of work")
    one_line_error(run_script("train.py", "--output", mine), "holds files a run does not write")
    assert (mine / "thesis.docx").read_text() == "years of work"

    unrelated_zip = tmp_path / "run.zip"
    with zipfile.ZipFile(unrelated_zip, "w") as archive:
        archive.writestr("holiday.jpg", "photos")
    before = unrelated_zip.read_bytes()
    one_line_error(run_script("train.py", "--output", tmp_path / "run"), "not a run zip")
    assert unrelated_zip.read_bytes() == before


@pytest.mark.slow
def test_train_removes_leftovers_of_an_interrupted_save_and_nothing_it_did_not_create(tmp_path):
    output = tmp_path / "models" / "run"
    staging = save.staging_folder(output)  # carries the project's marker, as train.py's own does
    (staging / "model.safetensors").write_bytes(bytes(1000))
    partial_zip = tmp_path / "models" / ".run.zip.ab12cd34.part"
    partial_zip.write_bytes(b"PK")
    look_alike = tmp_path / "models" / ".run.building-mine"  # the user's own folder, named like a leftover
    look_alike.mkdir()
    (look_alike / "notes.txt").write_text("mine")
    result = run_script("train.py", "--data", tmp_path / "missing.csv", "--output", output)
    one_line_error(result, "does not exist")
    assert "removed 2 half-written leftover(s)" in result.stdout
    assert not staging.exists() and not partial_zip.exists()
    assert (look_alike / "notes.txt").read_text() == "mine"


def test_later_onnx_sessions_load_the_model_that_was_verified(trained, run_copy):
    """The ONNX backend builds its second onnxruntime graph on the first call with several batches: from a
    zip's bytes (its extracted copy is gone by then), or from a folder's file, which must still be the one
    verified at open."""
    import numpy as np

    from genre_tagger.run import Run
    from genre_tagger.tagger import open_tagger

    texts = [f"A detective hunts a killer through the city, night {i}." for i in range(40)]
    with Run.open(run_copy) as run:
        alone = open_tagger(run, "onnx", "int8", 1).probabilities(texts, 4)
    with Run.open(trained["zip"]) as run:
        from_zip = open_tagger(run, "onnx", "int8", 2)
    assert np.array_equal(from_zip.probabilities(texts, 4), alone) and len(from_zip.sessions) == 2
    with Run.open(run_copy) as run:
        from_folder = open_tagger(run, "onnx", "int8", 2)
        model = run_copy / "model.int8.onnx"
        replacement = run_copy / "replacement.onnx"
        replacement.write_bytes((run_copy / "model.onnx").read_bytes())
        replacement.replace(model)  # a run rewritten in place while a server uses it
        with pytest.raises(UserError, match="changed while it was in use") as raised:
            from_folder.probabilities(texts, 4)
    assert "\n" not in str(raised.value)
