"""The int8 export: recipes tried in order, the one kept is recorded in onnx.json and used by predict.py."""

import json
import shutil

import numpy as np
import pytest

from conftest import run_script
from genre_tagger import save
from genre_tagger.run import Run

PLOT = "A retired hitman seeks revenge on the gangsters who killed his dog."


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained["output"], copy)
    return copy


def op_types(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def passes_by_call(monkeypatch, verdicts):
    """Make export_run's int8 check answer `verdicts` in order (one per recipe tried); returns the calls seen."""
    from genre_tagger import modeling

    calls = []

    def fake(figures, fp32_figures, max_tolerated_f1_drop, min_decision_agreement):
        calls.append(figures)
        return verdicts[len(calls) - 1]

    monkeypatch.setattr(modeling, "int8_passes", fake)
    return calls


def test_train_py_records_the_recipe_and_the_rule(trained):
    info = json.loads((trained["output"] / "onnx.json").read_text())
    check = info["check"]
    assert info["int8_recipe"] in check["int8_recipes"]
    assert list(check["int8_recipes"])[0] == "rowwise"  # the batch-exact full int8 is tried first
    assert "macro-F1 within 0.01" in check["int8_rule"]
    kept = check["int8_recipes"][info["int8_recipe"]]
    assert check["int8"]["decision_agreement_vs_torch"] == kept["decision_agreement_vs_torch"]
    assert info["default"] == ("int8" if kept["passed"] else "fp32")


def test_blockwise_recipe_is_kept_when_the_rowwise_int8_fails(run_copy, monkeypatch):
    from genre_tagger.modeling import export_run
    from genre_tagger.onnx_backend import OnnxTagger

    calls = passes_by_call(monkeypatch, [False, True])
    info = export_run(run_copy)
    save.reseal(run_copy)
    assert len(calls) == 2
    saved = json.loads((run_copy / "onnx.json").read_text())
    assert saved["int8_recipe"] == info["int8_recipe"] == "blockwise"
    assert saved["default"] == "int8"
    assert [saved["check"]["int8_recipes"][r]["passed"] for r in ("rowwise", "blockwise")] == [False, True]
    assert "MatMulNBits" in saved["check"]["int8_recipes"]["blockwise"]["what"]
    assert saved["check"]["int8"]["macro_f1"] == saved["check"]["int8_recipes"]["blockwise"]["macro_f1"]
    assert "MatMulNBits" in op_types(run_copy / "model.int8.onnx")
    assert sorted(p.name for p in run_copy.glob(".*")) == []  # no recipe left aside
    with Run.open(run_copy) as opened:
        assert opened.verified
        tagger = OnnxTagger.from_run(opened)

    tagged = run_script("predict.py", "--model", run_copy, "--json", PLOT)
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    printed = json.loads(tagged.stdout.splitlines()[0])["probabilities"]
    assert tagger.variant == "int8"
    expected = tagger.probabilities([PLOT])[0]
    np.testing.assert_allclose([printed[label] for label in tagger.labels], expected, atol=1e-3)


def test_when_no_recipe_passes_fp32_stays_default_and_the_best_int8_is_kept(run_copy, monkeypatch):
    from genre_tagger.modeling import export_run

    passes_by_call(monkeypatch, [False, False, False])
    info = export_run(run_copy)
    tried = info["check"]["int8_recipes"]
    assert info["default"] == "fp32" and set(tried) == {"rowwise", "dynamic", "blockwise"}
    best = max(tried, key=lambda r: tried[r]["decision_agreement_vs_torch"])
    assert info["int8_recipe"] == best
    assert ("MatMulNBits" in op_types(run_copy / "model.int8.onnx")) == (best == "blockwise")
    assert sorted(p.name for p in run_copy.glob(".*")) == []


def test_the_rowwise_graph_gives_each_row_its_own_numbers_in_any_batch(trained, imdb_csv):
    """The default int8 graph: one scale per token, so a row's probabilities do not move with its batch."""
    from genre_tagger.data import load_labelled_csv
    from genre_tagger.onnx_backend import OnnxTagger

    info = json.loads((trained["output"] / "onnx.json").read_text())
    assert info["int8_recipe"] == "rowwise"
    assert "MatMulIntegerToFloat" in op_types(trained["output"] / "model.int8.onnx")
    assert info["check"]["int8"]["max_abs_probability_difference_batch_of_1_vs_batched"] <= 1e-3
    texts = load_labelled_csv(imdb_csv)[0]["text"].tolist()[:96]
    with Run.open(trained["output"]) as run:
        tagger = OnnxTagger.from_run(run, variant="int8")
    alone = np.concatenate([tagger.probabilities([text], 1) for text in texts[:24]])
    for batch_size in (3, 32, 96):
        mixed = tagger.probabilities(texts, batch_size)[:24]
        np.testing.assert_allclose(mixed, alone, atol=1e-3)  # float rounding upstream of an int8 step, at most


def test_a_changed_model_is_refused_even_when_onnxruntime_cannot_load_it(run_copy):
    """A same-size change is caught by the sha256 check before onnxruntime reads the file; nothing is printed."""
    variant = json.loads((run_copy / "onnx.json").read_text())["default"]
    name = json.loads((run_copy / "onnx.json").read_text())["files"][variant]
    size = (run_copy / name).stat().st_size
    (run_copy / name).write_bytes(b"x" * size)  # same size: only the hash can tell
    result = run_script("predict.py", "--model", run_copy, PLOT)
    assert result.returncode == 2 and result.stdout == ""
    assert "does not match the run's manifest" in result.stderr and "Traceback" not in result.stderr


def test_unknown_recipe_is_refused(tmp_path):
    from genre_tagger.modeling import quantize_int8

    with pytest.raises(ValueError, match="unknown int8 recipe"):
        quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", "int4")
