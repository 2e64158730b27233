"""train.py removes nothing it did not create, refuses overlapping paths, resumes only what it interrupted, and
leaves the previous run intact when stopped. The fast cases fail before any training."""

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import ROOT, run_script
from genre_tagger import save
from genre_tagger.common import write_json
from genre_tagger.settings import build_train_parser

TRAIN = ROOT / "train.py"


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(output):
    """A sealed run folder and its zip, as train.py leaves them (without a model: nothing here loads it)."""
    output.mkdir(parents=True)
    (output / "config.json").write_text("{}")
    (output / "train_config.json").write_text('{"settings": {}}')
    (output / "thresholds.json").write_text("{}")
    (output / "model.safetensors").write_bytes(bytes(64))
    save.write_manifest(output)
    return save.zip_folder(output, output.with_suffix(".zip"))


def test_a_checkpoint_dir_holding_the_data_is_refused_and_kept(tmp_path, imdb_csv):
    """`--output models/data --checkpoint-dir .` would have made ./data the checkpoint folder, then removed it."""
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "movies.csv"
    shutil.copy(imdb_csv, data)
    before = snapshot(tmp_path / "data")
    result = run_script(TRAIN, "--data", data, "--output", "models/data", "--checkpoint-dir", ".", cwd=tmp_path)
    one_line_error(result, "--checkpoint-dir", "--data")
    assert snapshot(tmp_path / "data") == before
    assert not (tmp_path / "models").exists()


def test_a_checkpoint_folder_train_py_did_not_create_is_never_used(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("mine")
    result = run_script(
        TRAIN, "--data", tmp_path / "missing.csv", "--output", "models/notes", "--checkpoint-dir", ".", cwd=tmp_path
    )
    one_line_error(result, "not created by train.py")
    assert (notes / "ideas.txt").read_text() == "mine"


def test_a_run_in_the_checkpoint_dir_is_refused_and_kept(tmp_path):
    """--checkpoint-dir models with a run of the same name there: refused whether or not it is --output."""
    models = tmp_path / "models"
    zip_path = fake_run(models / "run")
    before, zip_before = snapshot(models / "run"), zip_path.read_bytes()
    missing = tmp_path / "missing.csv"
    one_line_error(
        run_script(TRAIN, "--data", missing, "--output", models / "run", "--checkpoint-dir", models),
        "--output",
        "--checkpoint-dir",
    )
    one_line_error(
        run_script(TRAIN, "--data", missing, "--output", tmp_path / "other" / "run", "--checkpoint-dir", models),
        "not created by train.py",
    )
    assert snapshot(models / "run") == before and zip_path.read_bytes() == zip_before


@pytest.mark.parametrize(
    "output, checkpoint_dir, data",
    [
        ("out/run", "out/run", "in/movies.csv"),  # checkpoint folder inside the run folder
        ("ck/run/run", "ck", "in/movies.csv"),  # run folder inside the checkpoint folder
        ("in", "ck", "in/movies.csv"),  # --output is the data file's folder
        ("out/in", ".", "in/movies.csv"),  # the checkpoint folder is the data file's folder
        ("out/run", "ck", "out/run/movies.csv"),  # the data inside the run folder
    ],
)
def test_overlapping_paths_are_refused_before_any_work(tmp_path, output, checkpoint_dir, data):
    args = build_train_parser().parse_args(
        ["--output", str(tmp_path / output), "--checkpoint-dir", str(tmp_path / checkpoint_dir)]
        + ["--data", str(tmp_path / data)]
    )
    assert "one holds the other" in save.paths_problem(args)


def test_overlapping_paths_are_one_line_from_train_py(tmp_path):
    result = run_script(
        TRAIN, "--data", tmp_path / "in" / "m.csv", "--output", tmp_path / "in", "--checkpoint-dir", tmp_path / "ck"
    )
    one_line_error(result, "--output", "--data", "one holds the other")
    assert not (tmp_path / "ck").exists()


def test_cross_validation_never_replaces_an_earlier_results_file(tmp_path):
    earlier = tmp_path / "X-cv2.json"
    earlier.write_text('{"mine": true}')
    result = run_script(
        "-m", "genre_tagger.crossval", "--folds", "2", "--data", tmp_path / "m.csv", "--output", tmp_path / "X",
        "--checkpoint-dir", tmp_path / "ck", timeout=120,
    )  # fmt: skip
    one_line_error(result, "would replace", str(earlier))
    assert earlier.read_text() == '{"mine": true}' and not (tmp_path / "ck").exists()
    with pytest.raises(FileExistsError):  # and a file created while the folds train is kept too
        write_json(earlier, {}, replace=False)
    assert earlier.read_text() == '{"mine": true}'
    args = build_train_parser().parse_args(["--output", str(tmp_path / "X"), "--folds", "3"])
    assert save.paths_problem(args) is None  # another K writes another file


def test_separate_paths_pass(tmp_path):
    args = build_train_parser().parse_args(
        ["--output", str(tmp_path / "models/run"), "--checkpoint-dir", str(tmp_path / "models/checkpoints")]
        + ["--data", str(tmp_path / "data/movies.csv")]
    )
    assert save.paths_problem(args) is None


def test_checkpoints_are_removed_only_when_marked(tmp_path):
    mine = tmp_path / "checkpoints" / "run"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    save.remove_checkpoints(mine)
    assert (mine / "keep.txt").exists()
    args = argparse.Namespace(
        **{**vars(build_train_parser().parse_args([])), "data": str(tmp_path / "d.csv"), "resume": False}
    )
    (tmp_path / "d.csv").write_text("x")
    ours = save.start_checkpoints(tmp_path / "new" / "run", args, ["Drama"], "base", 1)
    assert save.is_own(ours) and (ours / save.RESUME_RECORD).exists()
    save.remove_checkpoints(ours)
    assert not (tmp_path / "new").exists()  # its parent too: created by train.py, now empty


def test_a_published_folder_without_its_zip_is_noted_and_zipped(tmp_path, capsys):
    output = tmp_path / "models" / "run"
    zip_path = fake_run(output)
    (output / "config.json").write_text('{"new": 1}')  # the new run was published ...
    save.write_manifest(output)
    save._pending_zip_marker(output).touch()  # ... and stopped before its zip was rewritten
    args = build_train_parser().parse_args(["--output", str(output), "--checkpoint-dir", str(tmp_path / "ck")])
    save.tidy_interrupted(args)
    assert "its zip was not" in capsys.readouterr().out
    with zipfile.ZipFile(zip_path) as archive:
        assert json.loads(archive.read("config.json")) == {"new": 1}
    assert not save._pending_zip_marker(output).exists()


def test_a_run_set_aside_by_an_interrupted_publish_is_restored(tmp_path, capsys):
    output = tmp_path / "models" / "run"
    fake_run(output)
    before = snapshot(output)
    aside = output.parent / ".run.previous-abc123"
    output.rename(aside)
    save.mark_own(aside)
    args = build_train_parser().parse_args(["--output", str(output), "--checkpoint-dir", str(tmp_path / "ck")])
    save.tidy_interrupted(args)
    assert "restored" in capsys.readouterr().out
    assert snapshot(output) == before and not aside.exists()


def _train_args(data, base, output, checkpoints):
    return [
        TRAIN, "--data", data, "--limit", "200", "--model", base, "--epochs", "50", "--patience", "50",
        "--batch-size", "16", "--lr", "1e-3", "--output", output, "--checkpoint-dir", checkpoints,
    ]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_keeps_the_previous_run_and_resume_refuses_other_settings(tmp_path, tiny_distilbert, imdb_csv):
    data = tmp_path / "movies.csv"
    shutil.copy(imdb_csv, data)
    output, checkpoints = tmp_path / "models" / "run", tmp_path / "checkpoints"
    zip_path = fake_run(output)
    before, zip_before = snapshot(output), zip_path.read_bytes()
    args = list(map(str, _train_args(data, tiny_distilbert, output, checkpoints)))
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 600
            while not list((checkpoints / "run").glob("checkpoint-*/trainer_state.json")) and first.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.05)
            first.send_signal(signal.SIGINT)
            _, stderr = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 130, stderr[-3000:]
    lines = [line.strip() for line in stderr.splitlines()]  # between progress bars
    assert lines.count("interrupted; the previous run, if any, is intact") == 1
    assert "Traceback" not in stderr and "error:" not in stderr
    assert snapshot(output) == before and zip_path.read_bytes() == zip_before
    assert sorted(p.name for p in output.parent.iterdir()) == ["run", "run.zip"]  # no staging, no partial zip

    one_line_error(run_script(*args, "--resume", "--lr", "5e-4"), "--lr is 0.0005", "used 0.001")
    one_line_error(run_script(*args, "--resume", "--pooling", "cls"), "--pooling")
    data.write_text("\n".join(data.read_text().splitlines()[:-1]) + "\n")  # one row fewer
    one_line_error(run_script(*args, "--resume"), "--data differs")
    assert any((checkpoints / "run").glob("checkpoint-*"))  # still there to resume


def test_crossval_takes_train_py_flags_and_needs_folds(tmp_path):
    result = run_script("-m", "genre_tagger.crossval", "--output", tmp_path / "run")
    one_line_error(result, "--folds")
    result = run_script(
        "-m", "genre_tagger.crossval", "--folds", "2", "--output", tmp_path / "in", "--data", tmp_path / "in" / "m.csv"
    )
    one_line_error(result, "one holds the other")


def test_train_refuses_an_output_inside_a_run_and_test_data_equal_to_data(tmp_path):
    from conftest import one_line_error, run_script

    run = tmp_path / "models" / "run"
    fake_run(run)
    data = tmp_path / "movies.csv"
    data.write_text("Title,Genre,Description\nA,Drama,A plot\n")
    one_line_error(run_script("train.py", "--data", data, "--output", run / "sub"), "is inside the run")
    assert not (run / "sub").exists()
    one_line_error(
        run_script("train.py", "--data", data, "--test-data", data, "--output", tmp_path / "out"),
        "--test-data is the --data file",
    )


@pytest.mark.parametrize("record", ["[1, 2]", "not json", "[" * 100_000 + "]" * 100_000], ids=["list", "text", "deep"])
def test_resume_refuses_a_damaged_record_in_one_line(tmp_path, record):
    import argparse

    from genre_tagger import UserError, save

    data = tmp_path / "movies.csv"
    data.write_text("Title,Genre,Description\nA,Drama,A plot\n")
    (tmp_path / "checkpoints").mkdir()
    folder = save.mark_own(tmp_path / "checkpoints")
    (folder / save.RESUME_RECORD).write_text(record)
    args = argparse.Namespace(resume=True, data=str(data), test_data=None, lr=1e-3)
    with pytest.raises(UserError, match="no readable record"):
        save.start_checkpoints(folder, args, ["Drama"], "base", 1)
