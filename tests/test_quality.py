"""The product's core promise, on real data with the real pretrained (packaged) model."""

import json

import pytest

from conftest import run_script


@pytest.mark.slow
def test_short_real_training_beats_the_most_frequent_genres_baseline(tmp_path, imdb_csv):
    output = tmp_path / "run"
    result = run_script(
        "train.py", "--data", imdb_csv, "--model", "minilm", "--epochs", "3", "--seed", "0",
        "--output", output, "--checkpoint-dir", tmp_path / "checkpoints",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    trivial = metrics["baseline_most_frequent"]["test"]["macro_f1"]
    assert metrics["test"]["macro_f1"] > trivial + 0.15
    assert metrics["test"]["macro_roc_auc"] > 0.75
    assert "MiniLM" in metrics["base_model"]
