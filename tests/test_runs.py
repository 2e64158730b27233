import json
import zipfile

import pytest

from genre_tagger import UserError, save
from genre_tagger import run as runs
from genre_tagger.common import write_json


def make_run(folder, marker="one"):
    folder.mkdir(parents=True)
    for name in runs.REQUIRED_FILES:
        (folder / name).write_text("{}")
    write_json(folder / "config.json", {"id2label": {"0": "Action", "1": "Drama"}})
    write_json(folder / "train_config.json", {"settings": {"max_length": 16}})
    write_json(folder / "thresholds.json", {"default": 0.3})  # an empty one is refused
    (folder / "marker.txt").write_text(marker)
    return folder


def test_open_run_refuses_zip_entries_outside_the_folder(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("../../escaped.txt", "gotcha")
    with pytest.raises(UserError, match="outside its folder"):
        with runs.Run.open(evil):
            pass
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_open_run_names_corrupt_and_foreign_zips(tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(UserError):
        with runs.Run.open(corrupt):
            pass
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("holiday.jpg", "not a model")
    with pytest.raises(UserError, match="not a genre-tagger run"):
        with runs.Run.open(foreign):
            pass


def test_open_run_missing_model_says_run_train_first(tmp_path):
    with pytest.raises(UserError, match="run train.py first"):
        with runs.Run.open(tmp_path / "nothing-here"):
            pass


def test_zip_roundtrip_and_extraction_is_temporary(tmp_path):
    folder = make_run(tmp_path / "run")
    zipped = save.zip_folder(folder, tmp_path / "run.zip")
    with runs.Run.open(zipped) as opened:
        assert (opened.folder / "marker.txt").read_text() == "one"
        extracted = opened.folder
    assert not extracted.exists()
    assert zipped.exists()


@pytest.mark.parametrize(
    "onnx",
    [
        "not json",
        {"files": "model.onnx", "default": "int8"},
        {"files": {"fp32": "config.json", "int8": "model.int8.onnx"}, "default": "int8"},  # not a graph
        {"files": {"fp32": "absent.onnx", "int8": "model.int8.onnx"}, "default": "int8"},
    ],
)
def test_zip_leaves_out_nothing_when_onnx_json_is_damaged_or_names_no_other_graph(tmp_path, onnx):
    folder = make_run(tmp_path / "run")
    (folder / "model.int8.onnx").write_bytes(b"graph")
    (folder / "onnx.json").write_text(onnx if isinstance(onnx, str) else json.dumps(onnx))
    save.write_manifest(folder)
    with zipfile.ZipFile(save.zip_folder(folder, tmp_path / "run.zip")) as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in folder.iterdir())
        assert archive.read("onnx.json") == (folder / "onnx.json").read_bytes()


def test_publish_replaces_the_old_run_only_when_the_new_one_is_complete(tmp_path):
    final = make_run(tmp_path / "models" / "run", marker="old")
    staged = save.staging_folder(final)
    (staged / "marker.txt").write_text("new")
    # A crash before publish leaves the old run untouched.
    assert (final / "marker.txt").read_text() == "old"
    save.publish_folder(staged, final)
    assert (final / "marker.txt").read_text() == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == ["run"]


def test_thresholds_of_reads_numbers_and_saved_choices(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    saved = {"default": 0.3, "global": 0.35, "per_label": {"Drama": 0.4, "Action": 0.2}}
    labels = ["Action", "Drama"]
    assert runs.thresholds_from(saved, labels, "0.5") == 0.5
    assert runs.thresholds_from(saved, labels, "tuned-global") == 0.35
    assert runs.thresholds_from(saved, labels, "tuned") == [0.2, 0.4]
    for bad in ("1.5", "high", "nan", "inf", "0", "1", True, None):
        with pytest.raises(UserError, match="--threshold"):
            runs.thresholds_from(saved, labels, bad)


def test_export_tool_reexports_reseals_and_rezips(trained, tmp_path):
    """`python -m genre_tagger.export` on a copy of a run: fresh ONNX files, a manifest that verifies, a new zip."""
    import shutil

    from conftest import run_script

    run = tmp_path / "models" / "copy"
    shutil.copytree(trained["output"], run)
    for name in ("model.onnx", "model.int8.onnx", "onnx.json"):
        (run / name).unlink()
    result = run_script("-m", "genre_tagger.export", run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refreshed" in result.stdout
    assert set(json.loads((run / "onnx.json").read_text())["files"].values()) <= {"model.onnx", "model.int8.onnx"}
    with runs.Run.open(run) as opened:
        assert opened.verified
    with zipfile.ZipFile(run.with_suffix(".zip")) as archive:
        assert "onnx.json" in archive.namelist() and "manifest.json" in archive.namelist()
    tagged = run_script("predict.py", "--model", run.with_suffix(".zip"), "A detective hunts a killer.")
    assert tagged.returncode == 0, tagged.stderr[-2000:]


def test_export_tool_refuses_what_is_not_a_run_folder(tmp_path):
    from conftest import run_script

    result = run_script("-m", "genre_tagger.export", tmp_path)
    assert result.returncode == 2 and "not a genre-tagger run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("change", ["edited file", "added file", "unrelated zip beside"])
def test_export_verifies_a_run_before_resealing_it(trained, tmp_path, change):
    """Resealing would vouch for whatever the folder holds: export refuses a changed run and a foreign zip."""
    import shutil

    from conftest import one_line_error, run_script

    run = tmp_path / "models" / "copy"
    shutil.copytree(trained["output"], run)
    zip_path = run.with_suffix(".zip")
    if change == "edited file":
        (run / "thresholds.json").write_text('{"default": 0.01}\n')
        fragment = "does not match the run's manifest"
    elif change == "added file":
        (run / "notes.txt").write_text("planted")
        fragment = "does not list (notes.txt)"
    else:
        with zipfile.ZipFile(zip_path, "w") as archive:
            archive.writestr("holiday.jpg", "photos")
        fragment = "not a run zip"
    manifest_before = (run / "manifest.json").read_bytes()
    zip_before = zip_path.read_bytes() if zip_path.exists() else None
    one_line_error(run_script("-m", "genre_tagger.export", run), fragment)
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert (zip_path.read_bytes() if zip_path.exists() else None) == zip_before
