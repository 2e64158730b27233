"""python -m genre_tagger.ensemble: members checked (labels, split), probabilities averaged, opened like a run."""

import json
import re
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import run_script
from genre_tagger import UserError
from genre_tagger import calibration as gcal
from genre_tagger.common import write_json
from genre_tagger.metrics import multilabel_metrics
from genre_tagger.run import Run
from genre_tagger.save import write_manifest
from genre_tagger.tagger import load_tagger

TEXTS = ["A detective hunts a killer in the rain.", "Two friends drive across the country.", "Aliens invade."]


@pytest.fixture(scope="module")
def frozen_member(frozen_trained):
    """A second member on the same split as the shared `trained` run (conftest)."""
    return frozen_trained["output"]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, trained, frozen_member):
    output = tmp_path_factory.mktemp("ensemble") / "models" / "ensemble"
    result = run_script("-m", "genre_tagger.ensemble", trained["zip"], frozen_member, "--output", output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "macro-F1" in result.stdout
    return output


def build(*args):
    return run_script("-m", "genre_tagger.ensemble", *map(str, args))


def calibrated_mean(ensemble, sources, texts=TEXTS):
    """The ensemble's rule from its files: each member's calibration undone, the weighted mean, then its own."""
    spec = json.loads((ensemble / "ensemble.json").read_text())
    averaged = 0
    for member, source in zip(spec["members"], sources):
        with Run.open(source) as run:
            averaged = averaged + member["weight"] * gcal.undo(
                load_tagger(source).probabilities(texts), run.calibration
            )
    return gcal.apply_to_probabilities(averaged, spec["calibration"])


def test_ensemble_probabilities_are_the_calibrated_mean_of_the_members(ensemble, trained, frozen_member):
    members = [load_tagger(trained["zip"]).probabilities(TEXTS), load_tagger(frozen_member).probabilities(TEXTS)]
    tagger = load_tagger(ensemble)
    assert tagger.backend == "ensemble" and tagger.labels == load_tagger(frozen_member).labels
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the test would prove nothing otherwise
    spec = json.loads((ensemble / "ensemble.json").read_text())
    assert spec["calibration"]["method"] == "prior-temperature" and "validation" in spec["calibration"]["fitted_on"]
    assert np.allclose(
        tagger.probabilities(TEXTS), calibrated_mean(ensemble, [trained["zip"], frozen_member]), atol=1e-5
    )


def test_ensemble_run_describes_itself_and_scores_the_shared_test_rows(ensemble, trained):
    spec = json.loads((ensemble / "ensemble.json").read_text())
    assert [m["folder"] for m in spec["members"]] == ["members/0", "members/1"]
    assert [m["weight"] for m in spec["members"]] == [0.5, 0.5]
    # Only what predicting needs, each member with its own manifest.
    member_files = sorted(p.name for p in (ensemble / "members" / "0").iterdir())
    onnx = json.loads((ensemble / "members" / "0" / "onnx.json").read_text())
    assert member_files == sorted(
        ["calibration.json", "config.json", "manifest.json", "onnx.json", "thresholds.json", "tokenizer.json"]
        + ["train_config.json"]
        + list(onnx["files"].values())
    )
    assert not list(ensemble.rglob("model.safetensors")) and not list(ensemble.rglob("binarizer.joblib"))
    thresholds = json.loads((ensemble / "thresholds.json").read_text())
    assert thresholds["default"] == 0.3 and "validation" in thresholds["tuned_on"]
    split = pd.read_csv(ensemble / "split.csv", keep_default_na=False)
    assert split.equals(pd.read_csv(trained["output"] / "split.csv", keep_default_na=False))
    test = split[split["split"] == "test"]
    tagger = load_tagger(ensemble.with_suffix(".zip"))
    truth = np.array([[g in row.split(",") for g in tagger.labels] for row in test["labels"]], dtype=np.int64)
    defaults = [thresholds["default_per_label"][g] for g in tagger.labels]
    expected = multilabel_metrics(truth, tagger.probabilities(test["text"].tolist()), defaults)
    metrics = json.loads((ensemble / "metrics.json").read_text())
    assert metrics["test"]["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-9)
    assert len(metrics["members_test"]) == 2


def test_split_seed_lets_runs_of_another_seed_share_the_split_and_be_ensembled(
    tmp_path, tiny_distilbert, imdb_csv, trained
):
    def frozen_run(name, *seeds):
        result = run_script(
            "train.py", "--data", imdb_csv, "--limit", "200", "--model", tiny_distilbert, "--freeze-encoder",
            *seeds, "--output", tmp_path / name, "--checkpoint-dir", tmp_path / "checkpoints",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return tmp_path / name

    shared = frozen_run("shared", "--seed", "7", "--split-seed", "42")  # `trained` used seed 42 for both
    alone = frozen_run("alone", "--seed", "7")
    splits = [(run / "split.csv").read_text() for run in (shared, trained["output"], alone)]
    assert splits[0] == splits[1] != splits[2]
    settings = json.loads((shared / "train_config.json").read_text())["settings"]
    assert (settings["seed"], settings["split_seed"]) == (7, 42)
    assert build(trained["output"], shared, "--output", tmp_path / "ens").returncode == 0
    assert build(trained["output"], alone, "--output", tmp_path / "refused").returncode == 2


def test_weights_are_applied_and_normalised(tmp_path, trained, frozen_member):
    result = build(trained["output"], frozen_member, "--weights", "3", "1", "--output", tmp_path / "weighted")
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "weighted" / "ensemble.json").read_text())
    assert [m["weight"] for m in spec["members"]] == [0.75, 0.25]
    expected = calibrated_mean(tmp_path / "weighted", [trained["output"], frozen_member])
    assert np.allclose(load_tagger(tmp_path / "weighted").probabilities(TEXTS), expected, atol=1e-5)
    # Without calibration the ensemble is the plain weighted mean of the members' uncalibrated probabilities.
    plain = build(
        trained["output"], frozen_member, "--weights", "3", "1", "--calibrate", "none", "--output", tmp_path / "plain"
    )
    assert plain.returncode == 0, plain.stderr
    undone = []
    for source in (trained["output"], frozen_member):
        with Run.open(source) as run:
            undone.append(gcal.undo(load_tagger(source).probabilities(TEXTS), run.calibration))
    assert np.allclose(
        load_tagger(tmp_path / "plain").probabilities(TEXTS), 0.75 * undone[0] + 0.25 * undone[1], atol=1e-5
    )


def test_predict_py_tags_from_the_ensemble_zip(ensemble, trained, frozen_member):
    result = run_script("predict.py", "--model", ensemble.with_suffix(".zip"), "--json", TEXTS[0])
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    expected = calibrated_mean(ensemble, [trained["zip"], frozen_member], TEXTS[:1])
    labels = load_tagger(frozen_member).labels
    assert [record["probabilities"][g] for g in labels] == pytest.approx(expected[0], abs=1e-4)
    refused = run_script("predict.py", "--model", ensemble, "--backend", "torch", TEXTS[0])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "ensemble" in refused.stderr


def a_changed_copy(run, folder, change):
    """A copy of a run, changed by `change(folder)` and given a fresh manifest: a run trained differently."""
    shutil.copytree(run, folder)
    change(folder)
    write_manifest(folder)
    return folder


def swap_first_two_labels(folder):
    config = json.loads((folder / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    labels[0], labels[1] = labels[1], labels[0]
    config["id2label"] = dict(enumerate(labels))
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    write_json(folder / "config.json", config)
    train_config = json.loads((folder / "train_config.json").read_text())
    write_json(folder / "train_config.json", {**train_config, "labels": labels})


def move_a_test_row_into_training(folder):
    split = pd.read_csv(folder / "split.csv", keep_default_na=False)
    split.loc[split.index[split["split"] == "test"][0], "split"] = "train"
    split.to_csv(folder / "split.csv", index=False)


@pytest.mark.parametrize(
    "change, message",
    [(swap_first_two_labels, "other genres"), (move_a_test_row_into_training, "another split")],
)
def test_members_with_other_labels_or_another_split_are_refused_and_nothing_is_written(
    change, message, trained, frozen_member, tmp_path
):
    other = a_changed_copy(frozen_member, tmp_path / "other", change)
    output = tmp_path / "out" / "ensemble"
    result = build(trained["output"], other, "--output", output)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "1"], "one weight per run"),
        (["--weights", "1", "-2"], "--weights must be a number between 0 and 1000 (0 excluded), not -2"),
        (["--threshold", "1.5"], "--threshold must be a number between 0 and 1"),
        (["--threshold-goal", "precision>=2"], "--threshold-goal"),
        (["--threshold-goal", "Horor=f1"], "names Horor, not among the genres"),
        (["--calibrate", "isotonic"], "--calibrate"),
    ],
)
def test_bad_settings_are_one_line_errors(args, message, trained, frozen_member, tmp_path):
    result = build(trained["output"], frozen_member, "--output", tmp_path / "e", *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "e").exists()


def test_one_run_is_not_an_ensemble(trained, tmp_path):
    result = build(trained["output"], "--output", tmp_path / "e")
    assert result.returncode == 2 and "at least two runs" in result.stderr


@pytest.mark.parametrize("target", ["members/1/model.onnx", "members/0/config.json", "members/1/tokenizer.json"])
def test_a_tampered_member_file_is_refused(ensemble, tmp_path, target):
    copy = tmp_path / "ensemble"
    shutil.copytree(ensemble, copy)
    if target.endswith(".onnx"):  # the member's default ONNX file: int8 or fp32
        onnx = json.loads((copy / "members" / "1" / "onnx.json").read_text())
        target = "members/1/" + onnx["files"][onnx["default"]]
    path = copy / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    result = run_script("predict.py", "--model", copy, TEXTS[0])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "does not match the run's manifest" in result.stderr


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda spec: {**spec, "members": spec["members"][:1]}, "members has 1 entries"),
        (
            lambda spec: {**spec, "members": [{**m, "weight": float("nan")} for m in spec["members"]]},
            "members[0].weight is nan",
        ),
        (
            lambda spec: {**spec, "members": [{**m, "folder": "../x"} for m in spec["members"]]},
            "members[0].folder is '../x'",
        ),
        (lambda spec: {**spec, "calibration": {**spec["calibration"], "shift": [0.0]}}, "calibration.shift has 1"),
        (lambda spec: {**spec, "format": 2}, "format is 2: written by a newer genre-tagger (format 2)"),
    ],
)
def test_a_crafted_and_resealed_ensemble_json_is_refused_in_one_line(ensemble, tmp_path, change, fragment):
    from genre_tagger.save import reseal

    copy = tmp_path / "ensemble"
    shutil.copytree(ensemble, copy)
    write_json(copy / "ensemble.json", change(json.loads((copy / "ensemble.json").read_text())))
    reseal(copy)
    with pytest.raises(UserError, match=re.escape(f"ensemble.json: {fragment}")) as raised:
        Run.open(copy)
    assert "\n" not in str(raised.value)


def test_a_tampered_member_inside_the_zip_is_refused(ensemble, tmp_path):
    source = ensemble.with_suffix(".zip")
    tampered = tmp_path / "ensemble.zip"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(tampered, "w") as copy:
        for entry in original.infolist():
            data = original.read(entry)
            if entry.filename == "members/1/thresholds.json":
                data = data.replace(b"0.3", b"0.9")
            copy.writestr(entry, data)
    result = run_script("predict.py", "--model", tampered, TEXTS[0])
    assert result.returncode == 2 and "does not match the run's manifest" in result.stderr


def test_hugging_face_auto_classes_refuse_an_ensemble(ensemble):
    from transformers import AutoModel, AutoModelForSequenceClassification

    for auto_class in (AutoModel, AutoModelForSequenceClassification):
        with pytest.raises(ValueError, match="ensemble .* not one model"):
            auto_class.from_pretrained(ensemble)
    # Without this project (no registration), transformers refuses the unknown model type itself.
    code = (
        "import sys; from transformers import AutoModelForSequenceClassification as A\n"
        "try:\n    A.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "except ValueError as e:\n    print('refused', e); sys.exit(3)\n"
    )
    result = run_script("-c", code, ensemble, cwd=ensemble.parent)
    assert result.returncode == 3 and "genre_tagger_ensemble" in result.stdout


def test_export_and_an_ensemble_of_ensembles_are_refused(ensemble, trained, tmp_path):
    result = run_script("-m", "genre_tagger.export", ensemble)
    assert result.returncode == 2 and "is an ensemble" in result.stderr
    result = build(ensemble, trained["output"], "--output", tmp_path / "e")
    assert result.returncode == 2 and "itself an ensemble" in result.stderr


def test_serve_loads_an_ensemble(ensemble, trained, frozen_member):
    pytest.importorskip("fastapi")
    from genre_tagger.serving import load_served_run

    run = load_served_run(ensemble.with_suffix(".zip"))
    assert run.description["genres"] == len(run.labels) and run.description["max_tokens"] == 128
    expected = calibrated_mean(ensemble, [trained["zip"], frozen_member])
    assert np.allclose(run.tagger.probabilities(TEXTS, 8), expected, atol=1e-5)
