"""genre_tagger.run.Run: a run opened once and verified (manifest coverage, zip limits, files read once)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from genre_tagger import UserError
from genre_tagger.common import write_json
from genre_tagger.run import MAX_COMPRESSION_RATIO, Run, safe_extract
from genre_tagger.save import write_manifest, zip_folder


def make_run(folder):
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"id2label": {"0": "Action", "1": "Drama"}})
    write_json(folder / "train_config.json", {"settings": {"max_length": 16}, "labels": ["Action", "Drama"]})
    write_json(folder / "thresholds.json", {"default": 0.3, "global": 0.25})
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(folder)
    return folder


def test_open_parses_labels_thresholds_and_token_limit_once(tmp_path):
    with Run.open(make_run(tmp_path / "run")) as run:
        assert run.verified and run.labels == ["Action", "Drama"] and run.max_length == 16
        assert run.thresholds_for("tuned-global") == 0.25 and run.thresholds_for("0.4") == 0.4
        with pytest.raises(UserError, match="no per-genre thresholds"):
            run.thresholds_for("tuned")


@pytest.mark.parametrize("needed", ["config.json", "thresholds.json", "train_config.json", "tokenizer.json"])
def test_a_manifest_that_leaves_out_a_file_predicting_needs_is_refused(tmp_path, needed):
    folder = make_run(tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"][needed]
    write_json(folder / "manifest.json", manifest)
    with pytest.raises(UserError, match=f"{needed} is not in the run's manifest"):
        Run.open(folder)


def test_a_changed_file_is_refused_and_a_large_one_is_hashed_when_loaded(tmp_path):
    folder = make_run(tmp_path / "run")
    (folder / "model.safetensors").write_bytes(b"WEIGHTS")  # same size: only the hash can tell
    with Run.open(folder) as run:  # weights are hashed when a backend asks for them, not on every open
        with pytest.raises(UserError, match="does not match the run's manifest"):
            run.verified_path("model.safetensors")
    write_json(folder / "thresholds.json", {"default": 0.9})
    with pytest.raises(UserError, match="thresholds.json does not match"):
        Run.open(folder)


def test_zip_refused_on_total_ratio_and_entry_count(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(4):  # each entry under the per-entry check (1 MiB), the whole far over the ratio
            archive.writestr(f"part{i}.bin", bytes(1 << 20 - 1))
    ratio = sum(e.file_size for e in zipfile.ZipFile(bomb).infolist()) / bomb.stat().st_size
    assert ratio > MAX_COMPRESSION_RATIO
    with pytest.raises(UserError, match="zip bomb"):
        safe_extract(bomb, tmp_path / "out")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(1001):
            archive.writestr(f"f{i}", "x")
    with pytest.raises(UserError, match="entries"):
        safe_extract(many, tmp_path / "out2")


def test_a_zip_opens_to_a_temporary_folder_removed_on_close(tmp_path):
    folder = make_run(tmp_path / "run")
    zipped = zip_folder(folder, tmp_path / "run.zip")
    with Run.open(zipped) as run:
        extracted = run.folder
        assert run.verified and (extracted / "config.json").is_file()
    assert not extracted.exists() and zipped.is_file()


OPEN_COUNT = """
import collections, json, sys
from pathlib import Path
run = Path(sys.argv[1]).resolve()
opened = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        path = Path(str(args[0]) if not isinstance(args[0], bytes) else args[0].decode()).resolve()
        if path.is_relative_to(run):
            opened[path.relative_to(run).as_posix()] += 1
sys.addaudithook(hook)
sys.argv = ["predict.py", "--model", str(run), "A detective hunts a killer in the rain."]
import runpy
try:
    runpy.run_path("predict.py", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(opened), file=sys.stderr)
"""


def test_predict_opens_each_run_file_once_and_large_ones_at_most_twice(trained):
    result = subprocess.run(
        [sys.executable, "-c", OPEN_COUNT, str(trained["output"])], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    opened = json.loads(result.stderr.strip().splitlines()[-1])
    assert opened["config.json"] == 1 and opened["thresholds.json"] == 1 and opened["onnx.json"] == 1
    assert all(count == 1 for name, count in opened.items() if name.endswith(".json")), opened
    assert all(count <= 2 for count in opened.values()), opened


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: __import__("genre_tagger").load_tagger("x", backend="gpu"), "backend must be"),
        (lambda: __import__("genre_tagger").load_tagger("x", variant="int4"), "variant must be"),
        (lambda: __import__("genre_tagger").load_tagger("x", threads=-1), "threads must be"),
    ],
)
def test_load_tagger_misuse_is_a_value_error(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


def test_tagger_misuse_is_a_value_error_never_a_quiet_answer():
    import numpy as np

    from genre_tagger.tagger import Tagger

    class Backend:
        def probabilities(self, texts, batch_size):
            return np.full((len(texts), 2), 0.5, dtype=np.float32)

    run = type("R", (), {"labels": ["Action", "Drama"], "thresholds": {"default": 0.3}, "max_length": 16})()
    tagger = Tagger(Backend(), run, "run")
    assert tagger.tag("A heist.") == [[("Action", 0.5), ("Drama", 0.5)]]
    for kwargs, fragment in [
        ({"top_k": -1}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"min_genres": -1}, "min_genres"),
        ({"top_k": 1, "min_genres": 2}, "min_genres"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "tuned"}, "per-genre"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            tagger.tag(["A heist."], **kwargs)
    for texts in ([""], ["  "], [None], [3]):
        with pytest.raises(ValueError, match="text 0"):
            tagger.probabilities(texts)
    for texts in (None, 3, b"bytes", {"a": 1}):
        with pytest.raises(ValueError, match="texts must be"):
            tagger.probabilities(texts)


@pytest.mark.parametrize(
    "calibration",
    [
        {"method": "prior-temperature", "scale": [1.0], "shift": [0.0, 0.0]},  # not one per genre
        {"method": "prior-temperature", "scale": [0.0, 1.0], "shift": [0.0, 0.0]},  # a scale that is not positive
        {"method": "prior-temperature", "scale": [1.0, 1.0], "shift": [0.0, "x"]},
        {"scale": [1.0, 1.0], "shift": [0.0, 0.0]},
        [1, 2],
    ],
)
def test_a_calibration_that_does_not_fit_the_run_is_refused(tmp_path, calibration):
    folder = make_run(tmp_path / "run")
    write_json(folder / "calibration.json", calibration)
    write_manifest(folder)
    with pytest.raises(UserError, match=r"calibration.json(: (scale|shift|method)\b| is not)"):
        Run.open(folder)


def test_the_default_and_goal_thresholds_of_a_calibrated_run(tmp_path):
    folder = make_run(tmp_path / "run")
    write_json(folder / "calibration.json", {"method": "prior-temperature", "scale": [0.5, 0.5], "shift": [-1, -2]})
    thresholds = {
        "default": 0.3,
        "default_per_label": {"Action": 0.2, "Drama": 0.1},
        "per_label": {"Action": 0.6, "Drama": None},
    }
    write_json(folder / "thresholds.json", thresholds)
    write_manifest(folder)
    with Run.open(folder) as run:
        assert run.calibration["scale"] == [0.5, 0.5]
        assert run.thresholds_for("default") == [0.2, 0.1] and run.thresholds_for("tuned") == [0.6, None]
    write_json(folder / "thresholds.json", {**thresholds, "default_per_label": {"Action": 0.2, "Drama": None}})
    write_manifest(folder)
    with pytest.raises(UserError, match="thresholds.json: default_per_label.Drama is null, not a probability"):
        Run.open(folder)


def test_deeply_nested_json_and_an_unknown_manifest_format_are_one_line(tmp_path):
    folder = make_run(tmp_path / "run")
    manifest = folder / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="manifest.json is damaged"):
        Run.open(folder)
    manifest.write_bytes(good.replace(b'"format": 1', b'"format": 2'))
    with pytest.raises(UserError, match="format this genre-tagger does not know"):
        Run.open(folder)


def test_a_tokenizer_that_cannot_tokenize_is_refused_when_loaded():
    from genre_tagger.modeling import packaged_model_path
    from genre_tagger.onnx_backend import load_tokenizer

    saved = json.loads((Path(packaged_model_path()) / "tokenizer.json").read_text())
    saved["model"]["vocab"] = {}
    with pytest.raises(UserError, match="cannot tokenize"):
        load_tokenizer(json.dumps(saved).encode(), 16, "run")
