"""One artifact, one rule: the same descriptions through every way of running a run give the same genres.

Paths: predict.py (ONNX int8 and fp32, PyTorch), load_tagger (the same three), serve.py over HTTP (int8 and
fp32) and Hugging Face's pipeline (PyTorch, the run's own decisions applied to its scores), on the default
(calibrated) run and on an ensemble. Tolerances, stated once:
- paths on the same numbers (the same ONNX file, or PyTorch on either side) agree within 1e-5 (the API and
  predict.py --json round to 4 decimals: within 5e-5 for them);
- ONNX fp32 and PyTorch within 1e-4 (operator order);
- int8 and fp32 within 0.05 (quantisation), which is why only paths on the same model are held to
  identical genre sets.
"""

import json

import numpy as np
import pytest
from test_serve import Server

from conftest import run_script
from genre_tagger import calibration as gcal
from genre_tagger.metrics import decode
from genre_tagger.run import Run
from genre_tagger.tagger import load_tagger

DESCRIPTIONS = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two strangers fall in love during one night in Vienna.",
    "A family moves into a farmhouse haunted by a malevolent presence.",
    "An astronaut stranded on Mars must find a way to survive until rescue arrives.",
    "A young wizard attends a school of magic and faces the dark lord who killed his parents.",
    "Four friends plan a heist on a casino during a boxing match.",
]


def genre_sets(decoded):
    return [sorted(g for g, _ in row) for row in decoded]


def from_predict(run, *flags):
    result = run_script("predict.py", "--model", run, "--json", *flags, *DESCRIPTIONS)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    with Run.open(run) as opened:
        labels = opened.labels
    return (
        np.array([[r["probabilities"][g] for g in labels] for r in records]),
        [sorted(g["genre"] for g in r["genres"]) for r in records],
    )


def from_server(run, *flags):
    server = Server(run, *flags)
    try:
        response = server.client.post("/v1/tag", json={"descriptions": DESCRIPTIONS})
        assert response.status_code == 200, response.text
        records = response.json()["results"]
        labels = server.client.get("/v1/genres").json()["genres"]
    finally:
        server.stop()
    return (
        np.array([[r["probabilities"][g] for g in labels] for r in records]),
        [sorted(g["genre"] for g in r["genres"]) for r in records],
    )


def from_tagger(run, **options):
    tagger = load_tagger(run, **options)
    return tagger.probabilities(DESCRIPTIONS), genre_sets(tagger.tag(DESCRIPTIONS))


def assert_same(a, b, tolerance):
    np.testing.assert_allclose(a[0], b[0], atol=tolerance)
    assert a[1] == b[1]


def test_every_path_gives_the_default_run_the_same_genres_and_probabilities(trained):
    from transformers import pipeline

    run = trained["output"]
    with Run.open(run) as opened:
        labels, defaults = opened.labels, opened.thresholds_for("default")
        calibration = opened.calibration
    assert calibration["method"] == "prior-temperature" and len(set(defaults)) > 1  # per genre: the test means it

    torch_tagger = from_tagger(run, backend="torch")
    # Hugging Face's pipeline applies the sigmoid to the model's (calibrated) logits; the run's decisions
    # are its default thresholds from thresholds.json, applied the same way.
    scores = pipeline("text-classification", model=str(run), top_k=None)(DESCRIPTIONS)
    hf = np.array([[{s["label"]: s["score"] for s in row}[g] for g in labels] for row in scores])
    hf_path = (hf, genre_sets(decode(hf, labels, defaults)))
    assert_same(hf_path, torch_tagger, 1e-5)
    assert_same(from_predict(run, "--backend", "torch"), torch_tagger, 5e-5)

    fp32 = from_tagger(run, variant="fp32")
    assert_same(fp32, torch_tagger, 1e-4)
    assert_same(from_predict(run, "--onnx-variant", "fp32"), fp32, 5e-5)
    assert_same(from_server(run, "--onnx-variant", "fp32"), fp32, 5e-5)

    int8 = from_tagger(trained["zip"])
    assert_same(from_tagger(run), int8, 1e-6)  # folder and zip
    assert_same(from_predict(run), int8, 5e-5)
    assert_same(from_server(trained["zip"]), int8, 5e-5)
    np.testing.assert_allclose(int8[0], fp32[0], atol=0.05)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, trained, frozen_trained):
    output = tmp_path_factory.mktemp("conformance") / "ensemble"
    result = run_script("-m", "genre_tagger.ensemble", trained["zip"], frozen_trained["output"], "--output", output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


def test_every_path_gives_an_ensemble_the_same_genres_and_probabilities(ensemble, trained, frozen_trained):
    expected = from_tagger(ensemble)
    assert_same(from_tagger(ensemble.with_suffix(".zip")), expected, 1e-6)
    assert_same(from_predict(ensemble), expected, 5e-5)
    assert_same(from_server(ensemble.with_suffix(".zip")), expected, 5e-5)

    # The rule, recomputed from the files: undo each member's calibration, average, apply the ensemble's.
    spec = json.loads((ensemble / "ensemble.json").read_text())
    averaged = 0
    for member, source in zip(spec["members"], (trained["zip"], frozen_trained["output"])):
        with Run.open(source) as run:
            own = run.calibration
        averaged = averaged + member["weight"] * gcal.undo(load_tagger(source).probabilities(DESCRIPTIONS), own)
    np.testing.assert_allclose(expected[0], gcal.apply_to_probabilities(averaged, spec["calibration"]), atol=1e-5)
    with Run.open(ensemble) as run:
        assert expected[1] == genre_sets(decode(expected[0], run.labels, run.thresholds_for("default")))
