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
    # int8 ONNX against PyTorch fp32 on the validation rows: decisions at 0.3 agree on at least 98% of
    # (description, genre) pairs; probabilities move by at most 0.02 on average and 0.15 for 99% of pairs.
    check = json.loads((output / "onnx.json").read_text())["check"]
    assert check["fp32"]["max_abs_probability_difference_vs_torch"] < 1e-4
    assert check["int8"]["decision_agreement_vs_torch"] >= 0.98
    assert check["int8"]["mean_abs_probability_difference_vs_torch"] <= 0.02
    assert check["int8"]["p99_abs_probability_difference_vs_torch"] <= 0.15
