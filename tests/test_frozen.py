"""train.py --freeze-encoder: the encoder stays as loaded, only the head learns, and the run is a normal run."""

import json

import numpy as np
import pytest

from conftest import run_script
from genre_tagger.frozen import fit_linear_head, fit_logreg_head


def separable(seed, rows=200, genres=3, dims=8):
    rng = np.random.default_rng(seed)
    Y = (rng.random((rows, genres)) < 0.3).astype(np.int64)
    X = rng.normal(0, 0.3, (rows, dims)).astype(np.float32)
    X[:, :genres] += 2.0 * Y  # genre j is written in dimension j
    return X, Y


@pytest.mark.parametrize("head", ["logreg", "linear"])
def test_heads_learn_a_separable_problem_and_log_each_candidate(head):
    X, Y = separable(0)
    X_val, Y_val = separable(1, rows=80)
    pos_weight = np.ones(Y.shape[1], dtype=np.float32)
    if head == "logreg":
        weight, bias, log = fit_logreg_head(X, Y, X_val, Y_val, pos_weight, 0.5, "macro_f1")
        assert [entry["head_C"] for entry in log] == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    else:
        settings = {"seed": 0, "head_lr": 1e-2, "weight_decay": 0.0, "epochs": 30, "batch_size": 16}
        weight, bias, log = fit_linear_head(
            X, Y, X_val, Y_val, pos_weight, 0.5, {**settings, "select_by": "macro_f1", "patience": 30}, 0.0
        )
        assert [entry["epoch"] for entry in log] == list(range(1, 31))
    assert weight.shape == (3, 8) and bias.shape == (3,)
    predicted = (X_val @ weight.T + bias) > 0
    assert (predicted == Y_val.astype(bool)).mean() > 0.97
    assert all("eval_macro_f1" in entry and "eval_loss" in entry for entry in log)


def test_logreg_head_picks_the_candidate_with_the_best_validation_metric():
    X, Y = separable(2)
    X_val, Y_val = separable(3, rows=60)
    _, _, log = fit_logreg_head(X, Y, X_val, Y_val, np.ones(3, dtype=np.float32), 0.5, "loss")
    weight, bias, _ = fit_logreg_head(X, Y, X_val, Y_val, np.ones(3, dtype=np.float32), 0.5, "loss")
    best = min(log, key=lambda entry: entry["eval_loss"])
    p = np.clip(1 / (1 + np.exp(-(X_val @ weight.T + bias))), 1e-7, 1 - 1e-7)
    loss = float(-(Y_val * np.log(p) + (1 - Y_val) * np.log(1 - p)).mean())
    assert loss == pytest.approx(best["eval_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def frozen_run(frozen_trained):
    return frozen_trained


def test_frozen_run_keeps_the_encoder_and_trains_the_head(frozen_run):
    from safetensors.torch import load_file

    saved = load_file(str(frozen_run["output"] / "model.safetensors"))
    base = load_file(str(frozen_run["base"] / "model.safetensors"))
    encoder = {name.removeprefix("encoder."): tensor for name, tensor in saved.items() if name.startswith("encoder.")}
    assert encoder.keys() == base.keys()
    assert all(np.array_equal(encoder[name].numpy(), base[name].numpy()) for name in base)
    assert saved["classifier.weight"].abs().sum() > 0
    metrics = json.loads((frozen_run["output"] / "metrics.json").read_text())
    assert [entry["head_C"] for entry in metrics["log_history"]] == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    settings = json.loads((frozen_run["output"] / "train_config.json").read_text())["settings"]
    assert settings["freeze_encoder"] is True and settings["frozen_head"] == "logreg"


def test_frozen_run_is_a_normal_run_for_onnx_and_predict(frozen_run):
    onnx = json.loads((frozen_run["output"] / "onnx.json").read_text())
    assert onnx["check"]["fp32"]["max_abs_probability_difference_vs_torch"] < 1e-4
    zip_path = frozen_run["output"].with_suffix(".zip")
    result = run_script("predict.py", "--model", zip_path, "--json", "A detective hunts a killer in the rain.")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["probabilities"]) >= 15


def test_frozen_run_has_a_manifest_and_loads_with_the_hugging_face_auto_classes(frozen_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from genre_tagger.run import Run
    from genre_tagger.tagger import load_tagger

    folder = frozen_run["output"]
    with Run.open(folder) as run:
        assert run.verified
        assert run.labels == load_tagger(folder).labels
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "genre_tagger" and "AutoModelForSequenceClassification" in config["auto_map"]
    assert (folder / "hf_classifier.py").exists()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["A detective hunts a killer in the rain.", "Two friends drive across the country."]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = load_tagger(folder, backend="torch").probabilities(texts)
    assert np.allclose(torch.sigmoid(logits).numpy(), expected, atol=1e-5)


def test_probe_first_fine_tunes_from_the_head_a_frozen_run_fits(frozen_run, imdb_csv, tmp_path):
    """--probe-first: the same head as --freeze-encoder (same rows and seed), then the Trainer from there.

    At a vanishing learning rate the fine-tune cannot move the weights, so the saved head is the probe's.
    """
    from safetensors.torch import load_file

    output = tmp_path / "run"
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", frozen_run["base"], "--probe-first",
        "--epochs", "1", "--lr", "1e-12", "--head-lr", "1e-12", "--output", output, "--checkpoint-dir", tmp_path / "ck",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "now fine-tuning everything from it" in result.stdout
    probed = load_file(str(frozen_run["output"] / "model.safetensors"))
    tuned = load_file(str(output / "model.safetensors"))
    for name in ("classifier.weight", "classifier.bias"):
        assert probed[name].abs().sum() > 0
        assert np.allclose(tuned[name].numpy(), probed[name].numpy(), atol=1e-5), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert any("eval_macro_f1" in entry and "head_C" not in entry for entry in metrics["log_history"])
    settings = json.loads((output / "train_config.json").read_text())["settings"]
    assert settings["probe_first"] is True and settings["freeze_encoder"] is False


def test_probe_first_with_freeze_encoder_is_refused_before_any_work(tmp_path):
    result = run_script("train.py", "--output", tmp_path / "run", "--freeze-encoder", "--probe-first")
    assert result.returncode == 2 and "choose one" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_freeze_encoder_with_resume_is_refused_before_any_work(tmp_path):
    result = run_script("train.py", "--output", tmp_path / "run", "--freeze-encoder", "--resume")
    assert result.returncode == 2 and "drop --resume" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_freeze_encoder_under_a_launcher_is_refused_before_any_work(tmp_path):
    result = run_script(
        "train.py", "--output", tmp_path / "run", "--freeze-encoder", env={"WORLD_SIZE": "2", "RANK": "0"}
    )
    assert result.returncode == 2 and "without torchrun" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
