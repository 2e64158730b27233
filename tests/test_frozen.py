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
def frozen_run(tmp_path_factory, tiny_distilbert, imdb_csv):
    work = tmp_path_factory.mktemp("frozen")
    output = work / "run"
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", tiny_distilbert, "--freeze-encoder",
        "--output", output, "--checkpoint-dir", work / "checkpoints",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"base": tiny_distilbert, "output": output, "log": result.stdout}


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


def test_teacher_probabilities_are_softened_by_the_temperature():
    from genre_tagger.distill import soften

    teacher = np.array([[0.9, 0.2, 0.5]])
    assert np.allclose(soften(teacher, 1.0), teacher)
    softened = soften(teacher, 2.0)
    assert softened[0, 0] < 0.9 and softened[0, 1] > 0.2 and softened[0, 2] == pytest.approx(0.5)


def test_distillation_loss_mixes_weighted_true_labels_and_unweighted_teacher_targets():
    import torch

    from genre_tagger.modeling import build_classifier

    torch.manual_seed(0)
    model = build_classifier(packaged_minilm(), ["a", "b"], "mean", 0.0, pos_weight=[10.0, 1.0]).eval()
    batch = {"input_ids": torch.tensor([[101, 2204, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    labels, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 0.6]])
    logits = model(**batch).logits
    true_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=model.pos_weight)
    teacher_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, teacher)
    model.teacher_weight = 0.3
    mixed = model(**batch, labels=labels, teacher_targets=teacher).loss
    assert mixed.item() == pytest.approx((0.7 * true_loss + 0.3 * teacher_loss).item(), rel=1e-5)
    assert model(**batch, labels=labels).loss.item() == pytest.approx(true_loss.item(), rel=1e-5)


def packaged_minilm():
    from genre_tagger.modeling import packaged_model_path

    return packaged_model_path()


def test_student_learns_from_a_teacher_run_on_the_same_rows(frozen_run, imdb_csv, tmp_path):
    output = tmp_path / "student"
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", frozen_run["base"], "--epochs", "1",
        "--teacher", frozen_run["output"].with_suffix(".zip"), "--teacher-weight", "0.7",
        "--output", output, "--checkpoint-dir", tmp_path / "checkpoints",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "teacher" in result.stdout and (output / "onnx.json").exists()
    settings = json.loads((output / "train_config.json").read_text())["settings"]
    assert settings["teacher_weight"] == 0.7


def test_a_teacher_that_saw_the_students_held_out_rows_is_refused(frozen_run, imdb_csv, tmp_path):
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", frozen_run["base"], "--epochs", "1",
        "--seed", "7", "--teacher", frozen_run["output"], "--output", tmp_path / "student",
        "--checkpoint-dir", tmp_path / "checkpoints",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "validation/test rows" in result.stderr
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "somewhere", "--freeze-encoder"], "drop --freeze-encoder"),
        (["--teacher", "somewhere", "--folds", "3"], "drop --freeze-encoder and --folds"),
        (["--teacher-weight", "1.5"], "--teacher-weight must be between 0 and 1"),
        (["--teacher-temperature", "0"], "--teacher-temperature above 0"),
    ],
)
def test_distillation_settings_are_checked_before_any_work(args, message, tmp_path):
    result = run_script("train.py", "--output", tmp_path / "run", *args)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1
