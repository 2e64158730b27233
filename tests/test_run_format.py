"""genre_tagger.run_format: the one declared format of a run's files, its validator, and what Run.open does with it."""

import json

import pytest

from genre_tagger import UserError
from genre_tagger.common import write_json
from genre_tagger.run import Run
from genre_tagger.run_format import FORMAT_VERSION, check_file
from genre_tagger.save import write_manifest

LABELS = ["Action", "Drama"]


def make_run(folder):
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"id2label": {"0": "Action", "1": "Drama"}})
    write_json(folder / "train_config.json", {"settings": {"max_length": 16}, "labels": LABELS})
    write_json(folder / "thresholds.json", {"default": 0.3})
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(folder)
    return folder


def refusal(name, payload, labels=LABELS):
    with pytest.raises(UserError) as raised:
        check_file(name, payload, "run", labels)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"run: {name}: "), message
    return message


# --- the format version --------------------------------------------------------------------------


def test_a_run_is_written_in_the_current_format_and_older_runs_without_one_still_open(tmp_path):
    folder = make_run(tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    with Run.open(folder) as run:
        assert run.labels == LABELS
    del manifest["format_version"]  # a run written before the field existed
    write_json(folder / "manifest.json", manifest)
    with Run.open(folder) as run:
        assert run.labels == LABELS


@pytest.mark.parametrize(
    "version, fragments",
    [
        (FORMAT_VERSION + 1, [f"written by a newer genre-tagger (format {FORMAT_VERSION + 1})", "reads 1-2"]),
        (0, ["format_version is 0, not a format from 1 to 2", "re-create the run (train.py)"]),
        ("2", ["format_version is '2', not a format"]),
        (True, ["format_version is true, not a format"]),
    ],
)
def test_a_newer_or_unknown_format_version_is_refused_by_name(tmp_path, version, fragments):
    folder = make_run(tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    write_json(folder / "manifest.json", {**manifest, "format_version": version})
    with pytest.raises(UserError) as raised:
        Run.open(folder)
    for fragment in fragments:
        assert fragment in str(raised.value), raised.value
    assert str(raised.value).startswith(f"{folder}: manifest.json: format_version ")


# --- docs/RUN_FORMAT.md -----------------------------------------------------------------------------


def test_the_committed_run_format_doc_is_the_schema_rendered():
    """Regenerate with: python -c "from genre_tagger.run_format import render_markdown; print(render_markdown(), end='')" > docs/RUN_FORMAT.md"""
    from conftest import ROOT
    from genre_tagger.run_format import FILES, render_markdown

    committed = (ROOT / "docs" / "RUN_FORMAT.md").read_text()
    assert committed == render_markdown()
    assert all(f"## {name}" in committed for name in FILES)
