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


# --- the validator, one rule at a time ------------------------------------------------------------

ONNX = {"files": {"fp32": "model.onnx", "int8": "model.int8.onnx"}, "default": "int8", "max_length": 128}
CALIBRATION = {"method": "prior-temperature", "scale": [0.5, 0.5], "shift": [-1.0, 2.0]}
MEMBERS = [{"folder": "members/0", "weight": 0.5}, {"folder": "members/1", "weight": 0.5}]
GOOD = {
    "config.json": {"id2label": {"0": "Action", "1": "Drama"}, "label2id": {"Action": 0, "Drama": 1}},
    "train_config.json": {"labels": LABELS, "settings": {"max_length": 128}},
    "thresholds.json": {"default": 0.3, "per_label": {"Action": 0.2, "Drama": None}},
    "calibration.json": CALIBRATION,
    "onnx.json": ONNX,
    "ensemble.json": {"format": 1, "members": MEMBERS, "calibration": CALIBRATION},
    "manifest.json": {"format": 1, "format_version": 2, "files": {"plots/a.png": {"sha256": "0" * 64, "bytes": 3}}},
}


@pytest.mark.parametrize("name", list(GOOD))
def test_a_well_formed_file_passes(name):
    assert check_file(name, GOOD[name], "run", LABELS) == LABELS


@pytest.mark.parametrize(
    "name, change, fragment",
    [
        # numbers: finite floats only, never true/false, within their range
        ("thresholds.json", {"default": float("nan")}, "default is nan, not a probability in (0, 1)"),
        ("thresholds.json", {"default": float("inf")}, "default is inf, not a probability"),
        ("thresholds.json", {"default": 10**400}, "default is 1e+400 (an integer too large for a float)"),
        ("thresholds.json", {"default": True}, "default is true, not a probability"),
        ("thresholds.json", {"default": 1}, "default is 1, not a probability"),
        ("calibration.json", {"scale": [0.5, -0.5]}, "scale[1] is -0.5, not a finite number in (0, 1e+06)"),
        ("onnx.json", {"max_length": 5000}, "max_length is 5000, not an integer from 1 to 4096"),
        ("onnx.json", {"max_length": 12.0}, "max_length is 12.0, not an integer"),
        ("manifest.json", {"files": {"a": {"sha256": "0" * 64, "bytes": 2**60}}}, "too large to keep exact"),
        # required keys; an empty file
        ("thresholds.json", {"default": None}, "default is null, not a probability"),
        ("ensemble.json", {"members": None}, "members is null, not a list"),
        # genre maps hold exactly the run's genres; per-genre lists have one value per genre
        ("thresholds.json", {"per_label": {"Action": 0.2}}, "per_label lacks Drama: its genres do not match"),
        ("thresholds.json", {"per_label": {"Action": 0.2, "Drama": 0.3, "Noir": 0.1}}, "has 'Noir', not a genre"),
        ("thresholds.json", {"default_per_label": {"Action": 0.2, "Drama": None}}, "default_per_label.Drama is null"),
        ("calibration.json", {"shift": [0.0]}, "shift has 1 values, not one per genre (2)"),
        ("train_config.json", {"labels": LABELS[::-1]}, "labels differ from config.json's genres"),
        # JSON types
        ("thresholds.json", {"per_label": [0.2, 0.3]}, "per_label is a list, not an object"),
        ("calibration.json", {"method": 3}, "method is 3, not text"),
        ("train_config.json", {"settings": "fast"}, "settings is 'fast', not an object"),
        # allowed values and keys
        ("onnx.json", {"int8_recipe": "static"}, "int8_recipe is 'static', not one of 'rowwise'"),
        ("onnx.json", {"default": "bf16"}, "default is 'bf16', not a key of files ('fp32', 'int8')"),
        ("onnx.json", {"files": {"bf16": "model.onnx"}}, "files.bf16 is not a field of files"),
        ("onnx.json", {"files": {}}, "files is an empty object"),
        ("onnx.json", {"files": {"fp32": "../model.onnx"}}, "files.fp32 is '../model.onnx', not a file name"),
        ("config.json", {"problem_type": "regression"}, "problem_type is 'regression', not one of"),
        ("ensemble.json", {"members": MEMBERS[:1]}, "members has 1 entries, not at least 2"),
        ("ensemble.json", {"members": [*MEMBERS[:1], {"folder": "../x", "weight": 1}]}, "members[1].folder is"),
        ("ensemble.json", {"members": [MEMBERS[0], {**MEMBERS[1], "weight": 0}]}, "members[1].weight is 0"),
        ("ensemble.json", {"calibration": {**CALIBRATION, "scale": [1.0]}}, "calibration.scale has 1 values"),
        ("manifest.json", {"files": {"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}, "outside the run"),
        ("manifest.json", {"files": {"a": {"sha256": "abc", "bytes": 1}}}, "files.a.sha256 is 'abc', not a sha256"),
        ("manifest.json", {"format": 2}, "written by a newer genre-tagger (format 2)"),
        # the genres themselves
        ("config.json", {"id2label": {"0": "Action", "2": "Drama"}}, "id2label is not numbered 0..1"),
        ("config.json", {"id2label": {"0": "Action", "1": "Action"}}, "id2label names a genre twice"),
        ("config.json", {"id2label": {"0": "Action", "1": "Dr\x1bama"}}, "id2label.1 is a genre name with control"),
        ("config.json", {"id2label": {"0": "Action", "1": " "}}, "id2label.1 is ' ', not a genre name"),
        ("config.json", {"label2id": {"Action": 1, "Drama": 0}}, "label2id disagrees with id2label"),
    ],
)
def test_each_rule_refuses_in_one_line_naming_file_and_field(name, change, fragment):
    message = refusal(name, {**GOOD[name], **change})
    assert fragment in message, message
    assert message.endswith("; re-create the run (train.py)") or "update genre-tagger" in message


@pytest.mark.parametrize("name", ["thresholds.json", "calibration.json", "onnx.json", "ensemble.json", "manifest.json"])
def test_an_empty_file_is_refused(name):
    assert " is missing; re-create the run" in refusal(name, {})


def test_a_per_genre_threshold_too_large_for_a_float_is_one_line_from_predict(tmp_path):
    """The crafted case of the issue: a validly re-sealed 10**400 per-genre threshold was an OverflowError (a bug)."""
    from conftest import one_line_error, run_script

    folder = make_run(tmp_path / "run")
    (folder / "thresholds.json").write_text(
        '{"default": 0.3, "per_label": {"Action": 0.2, "Drama": 1%s}}' % ("0" * 400)
    )
    write_manifest(folder)
    one_line_error(
        run_script("predict.py", "--model", folder, "--threshold", "tuned", "A heist."),
        "thresholds.json: per_label.Drama is 1e+400 (an integer too large for a float)",
    )


def test_a_token_limit_past_the_model_positions_is_refused(tmp_path):
    folder = make_run(tmp_path / "run")
    config = {"id2label": {"0": "Action", "1": "Drama"}, "encoder": {"max_position_embeddings": 8}}
    write_json(folder / "config.json", config)
    write_manifest(folder)
    with pytest.raises(UserError, match="reads 16 tokens .* more than its 8 positions"):
        Run.open(folder)


# --- crafted runs: a real run, one field changed, validly re-sealed ---------------------------------

DELETE = object()  # the field removed
NOT_FINITE = [float("nan"), float("inf"), float("-inf"), 10**400]
WRONG_TYPE = ["0.5", True, [0.5], {}]


def genre_map_changes(labels):
    first = labels[0]
    return [
        lambda m: {**m, "Noir": next(iter(m.values()))},  # an extra genre
        lambda m: {k: v for k, v in m.items() if k != first},  # a missing genre
        lambda m: {},
        lambda m: "per genre",
    ]


def crafted_changes(run):
    """(file, path, new value or DELETE or a function of the old value, file the refusal names) for a real run."""
    labels = [json.loads((run / "config.json").read_text())["id2label"][str(i)] for i in range(2)]
    first = labels[0]
    default_variant = json.loads((run / "onnx.json").read_text())["default"]
    changes = []

    def add(name, path, values, names=None):
        changes.extend((name, path, value, names or name) for value in values)

    add("thresholds.json", ["default"], [*NOT_FINITE, *WRONG_TYPE, None, -1, 0, 1, DELETE])
    add("thresholds.json", ["global"], [*NOT_FINITE, *WRONG_TYPE, None, -0.5, 1.5])
    add("thresholds.json", ["per_label", first], [*NOT_FINITE, *WRONG_TYPE, -1, 1])
    add("thresholds.json", ["default_per_label", first], [*NOT_FINITE, *WRONG_TYPE, None, -1])
    for key in ("per_label", "default_per_label", "goals"):
        add("thresholds.json", [key], genre_map_changes(labels))
    add("thresholds.json", [], [{}])
    add("calibration.json", ["scale", 0], [*NOT_FINITE, *WRONG_TYPE, None, -1, 0])
    add("calibration.json", ["shift", 0], [*NOT_FINITE, *WRONG_TYPE, None])
    for key in ("scale", "shift"):
        add("calibration.json", [key], [lambda v: v[:-1], lambda v: [*v, v[0]], {}, "x", DELETE])
    add("calibration.json", ["method"], [3, None, DELETE])
    add("calibration.json", [], [{}])
    add("config.json", ["id2label"], [DELETE, {}, "x", lambda v: {**v, "99": "Noir"}, lambda v: {**v, "1": v["0"]}])
    add("config.json", ["id2label", "0"], [3, "", "Act\x1bion", None])
    add("config.json", ["label2id"], [lambda v: {**v, labels[0]: 1, labels[1]: 0}, lambda v: {**v, "Noir": 99}, "x"])
    add("config.json", ["problem_type"], ["single_label_classification", 3])
    add("config.json", ["encoder", "max_position_embeddings"], [*NOT_FINITE, *WRONG_TYPE, 0, -1])
    add("config.json", ["encoder", "max_position_embeddings"], [8], names="max_position_embeddings")
    add("config.json", [], [{}])
    add("train_config.json", ["labels"], [lambda v: v[::-1], lambda v: v[:-1], lambda v: [*v, "Noir"], "x"])
    add("train_config.json", ["settings"], ["x", [], DELETE])
    add("train_config.json", ["settings", "max_length"], [*NOT_FINITE, *WRONG_TYPE, 0, 5000, 1.5])
    add("train_config.json", [], [{}])
    add("onnx.json", ["files"], [{}, "x", DELETE, {"bf16": "model.onnx"}, {"fp32": "../model.onnx"}])
    add("onnx.json", ["files", default_variant], [3, "sub/model.onnx", "model.bin"])
    add("onnx.json", ["default"], ["bf16", 3])
    add("onnx.json", ["max_length"], [*NOT_FINITE, *WRONG_TYPE, 0, 5000, 1.5, DELETE])
    add("onnx.json", ["max_length"], [1000], names="max_position_embeddings")
    add("onnx.json", ["int8_recipe"], ["static", 3])
    add("onnx.json", ["check", "fp32", "macro_f1"], [*NOT_FINITE, *WRONG_TYPE, -1, 2])
    add("onnx.json", [], [{}])
    return changes


def changed(payload, path, value):
    if not path:
        return value
    head, *rest = path
    inner = payload[head]
    if rest:
        new = changed(inner, rest, value)
    else:
        new = value(inner) if callable(value) else value
    copy = list(payload) if isinstance(payload, list) else dict(payload)
    if new is DELETE:
        del copy[head]
    else:
        copy[head] = new
    return copy


def craft(folder, name, path, value, original):
    """Write the changed file (json.dumps writes NaN and Infinity as Python's json reads them) and re-seal the run."""
    from genre_tagger.save import reseal

    (folder / name).write_text(json.dumps(changed(json.loads(original), path, value)))
    reseal(folder)


def shown(name, path, value):
    return f"{name}:{'.'.join(map(str, path))}={'DELETE' if value is DELETE else getattr(value, '__name__', value)!r}"


@pytest.fixture
def crafted_copy(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained["output"], copy)
    return copy


def test_every_crafted_field_is_refused_by_run_open_in_one_line(crafted_copy):
    changes = crafted_changes(crafted_copy)
    assert len(changes) > 150
    originals = {name: (crafted_copy / name).read_text() for name, *_ in changes}
    for name, path, value, names in changes:
        craft(crafted_copy, name, path, value, originals[name])
        with pytest.raises(UserError) as raised:
            Run.open(crafted_copy)
        message = str(raised.value)
        assert "\n" not in message and names in message, (shown(name, path, value), message)
        assert "re-create the run" in message, (shown(name, path, value), message)
        (crafted_copy / name).write_text(originals[name])
    from genre_tagger.save import reseal

    reseal(crafted_copy)
    with Run.open(crafted_copy) as run:  # the originals, restored, open again
        assert run.verified


# A sample across files and rules for the entry points that run as processes (each costs a Python start).
SAMPLE = [
    ("thresholds.json", ["per_label", 0], 10**400),
    ("thresholds.json", [], {}),
    ("thresholds.json", ["default"], float("nan")),
    ("thresholds.json", ["default_per_label"], "extra genre"),
    ("calibration.json", ["scale", 0], float("inf")),
    ("config.json", ["id2label", "0"], True),
    ("train_config.json", ["labels"], "reversed"),
    ("train_config.json", ["settings", "max_length"], -1),
    ("onnx.json", ["max_length"], float("-inf")),
    ("onnx.json", ["files"], {"fp32": "../model.onnx"}),
]


def sample_change(folder, name, path, value):
    """A SAMPLE entry made concrete for this run (its first genre, its genre maps)."""
    labels = json.loads((folder / "train_config.json").read_text())["labels"]
    path = [labels[0] if step == 0 and name == "thresholds.json" else step for step in path]
    if value == "extra genre":
        value = lambda m: {**m, "Noir": 0.5}  # noqa: E731
    elif value == "reversed":
        value = lambda v: v[::-1]  # noqa: E731
    return name, path, value


@pytest.fixture(scope="module")
def ensemble_of_trained(trained, tmp_path_factory):
    """An ensemble of the trained run's two ONNX exports (int8 and fp32: two models on one split), no training."""
    import shutil

    from conftest import run_script
    from genre_tagger.save import reseal

    work = tmp_path_factory.mktemp("ensemble-of-trained")
    other_export = work / "other-export"
    shutil.copytree(trained["output"], other_export)
    onnx = json.loads((other_export / "onnx.json").read_text())
    (other_variant,) = set(onnx["files"]) - {onnx["default"]}
    write_json(other_export / "onnx.json", {**onnx, "default": other_variant})
    reseal(other_export)
    output = work / "ensemble"
    built = run_script("-m", "genre_tagger.ensemble", trained["output"], other_export, "--output", output)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return output


@pytest.mark.parametrize("entry", SAMPLE, ids=[shown(*entry) for entry in SAMPLE])
def test_each_entry_point_refuses_a_crafted_run_in_one_line(
    crafted_copy, trained, ensemble_of_trained, tmp_path, entry
):
    import shutil

    from conftest import one_line_error, run_script
    from genre_tagger import load_tagger
    from genre_tagger.save import reseal

    name, path, value = sample_change(crafted_copy, *entry)
    craft(crafted_copy, name, path, value, (crafted_copy / name).read_text())
    one_line_error(run_script("predict.py", "--model", crafted_copy, "A heist."), name)
    # serve.py refuses it at start-up, before it listens: nothing to stop afterwards
    one_line_error(run_script("serve.py", "--model", crafted_copy, "--port", "0", timeout=120), name)
    ensemble = ("-m", "genre_tagger.ensemble", trained["output"], crafted_copy, "--output", tmp_path / "ensemble")
    one_line_error(run_script(*ensemble), name)
    assert not (tmp_path / "ensemble").exists() and not (tmp_path / "ensemble.zip").exists()
    with_crafted_member = tmp_path / "with-crafted-member"
    shutil.copytree(ensemble_of_trained, with_crafted_member)
    member = with_crafted_member / "members" / "1"
    craft(member, *sample_change(member, *entry), (member / name).read_text())
    reseal(with_crafted_member)  # the ensemble's own manifest, over the member's new files
    one_line_error(run_script("predict.py", "--model", with_crafted_member, "A heist."), name)
    one_line_error(run_script("serve.py", "--model", with_crafted_member, "--port", "0", timeout=120), name)
    with pytest.raises((UserError, ValueError)) as raised:
        load_tagger(with_crafted_member)
    assert "\n" not in str(raised.value) and "(members/1)" in str(raised.value) and name in str(raised.value)
    with pytest.raises((UserError, ValueError)) as raised:
        load_tagger(crafted_copy)
    assert "\n" not in str(raised.value) and name in str(raised.value)
    (tmp_path / "x.csv").write_text("Description\nA heist.\n")
    batch = ("-m", "genre_tagger.batch", "--model", crafted_copy, "--input", tmp_path / "x.csv")
    one_line_error(run_script(*batch, "--output", tmp_path / "out"), name)
    assert not (tmp_path / "out").exists()  # refused before Ray started or anything was written
    if name != "onnx.json":  # export writes onnx.json anew, so it never reads the old one
        one_line_error(run_script("-m", "genre_tagger.export", crafted_copy), name)
