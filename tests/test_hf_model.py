"""The run is a proper Hugging Face model folder: round-trip, auto classes, pipeline parity, loud refusal
without trust_remote_code, load_tagger on both backends, and runs saved in the older layout."""

import json
import re
import subprocess
import sys
import zipfile

import joblib
import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from genre_tagger.data import fit_binarizer
from genre_tagger.save import zip_folder

LABELS = ["Action", "Comedy", "Crime", "Drama", "Horror", "Romance"]
TEXTS = [
    "A retired hitman seeks revenge on the gangsters who killed his dog.",
    "Two strangers fall in love during one night in Vienna.",
    "A family moves into a farmhouse haunted by a malevolent presence.",
]
MAX_LENGTH = 128


def random_head(model, seed=0):
    # A random head gives every genre a different, non-trivial probability: what parity needs to test.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 0.5)
        model.classifier.bias.copy_(torch.randn(model.classifier.bias.shape, generator=generator) * 0.1)
    return model.eval()


def write_run_files(folder):
    """What train.py writes beside the model and that predict.py needs: settings, thresholds, binarizer."""
    (folder / "train_config.json").write_text(json.dumps({"settings": {"max_length": MAX_LENGTH, "threshold": 0.3}}))
    per_label = {label: 0.25 for label in LABELS}
    (folder / "thresholds.json").write_text(json.dumps({"default": 0.3, "global": 0.35, "per_label": per_label}))
    joblib.dump(fit_binarizer([LABELS]), folder / "binarizer.joblib")


def make_run(folder, base, pooling="mean"):
    """A run folder as train.py saves it, without training: a pretrained encoder and a random head."""
    from transformers import AutoTokenizer

    from genre_tagger.modeling import build_classifier, save_classifier

    model = random_head(build_classifier(str(base), LABELS, pooling, 0.1))
    save_classifier(model, AutoTokenizer.from_pretrained(str(base)), folder)
    write_run_files(folder)
    return folder


def make_legacy_run(folder, base, pooling="mean"):
    """A run as train.py saved it before the classifier became a PreTrainedModel: the encoder's config.json
    with labels, pooling and dropout added, and weights named encoder.* and classifier.*."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(str(base))
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    config.problem_type = "multi_label_classification"
    config.pooling = pooling
    config.classifier_dropout = 0.1
    encoder = AutoModel.from_pretrained(str(base), config=config)
    head = torch.nn.Linear(config.hidden_size, len(LABELS))
    state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    state.update(
        {f"classifier.{k}": v.contiguous() for k, v in random_head(_Head(head)).classifier.state_dict().items()}
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    write_run_files(folder)
    return folder


class _Head(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.classifier = linear


@pytest.fixture(scope="module")
def distilbert_run(tmp_path_factory, tiny_distilbert):
    return make_run(tmp_path_factory.mktemp("run-distilbert") / "run", tiny_distilbert)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """The packaged pretrained all-MiniLM-L6-v2 (a BERT: its tokenizer gives token_type_ids), random head."""
    from genre_tagger.modeling import packaged_model_path

    return make_run(tmp_path_factory.mktemp("run-minilm") / "run", packaged_model_path())


def torch_backend_probabilities(run, texts=TEXTS):
    """predict.py --backend torch --json, as a user runs it: probabilities per genre, rounded to 4 places."""
    result = run_script("predict.py", "--model", run, "--backend", "torch", "--json", *texts)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line)["probabilities"] for line in result.stdout.splitlines()]


def fresh_python(code, run, timeout=300):
    """Run `code` in a new process that has NOT imported genre_tagger (the project is not on its path)."""
    return subprocess.run(
        [sys.executable, "-c", code, str(run)],
        cwd=run.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # transformers asks on a terminal; anywhere else it must refuse
    )


def test_save_pretrained_round_trip_has_nothing_missing_or_unexpected(distilbert_run):
    from genre_tagger.hf_classifier import GenreTaggerConfig, GenreTaggerForSequenceClassification
    from genre_tagger.modeling import load_classifier, predict_probabilities

    model, info = GenreTaggerForSequenceClassification.from_pretrained(distilbert_run, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert isinstance(model.config, GenreTaggerConfig)
    config = json.loads((distilbert_run / "config.json").read_text())
    assert config["model_type"] == "genre_tagger"
    assert config["architectures"] == ["GenreTaggerForSequenceClassification"]
    assert config["auto_map"] == {
        "AutoConfig": "hf_classifier.GenreTaggerConfig",
        "AutoModelForSequenceClassification": "hf_classifier.GenreTaggerForSequenceClassification",
    }
    assert config["encoder"]["model_type"] == "distilbert"
    assert config["pooling"] == "mean" and config["classifier_dropout"] == 0.1
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(len(LABELS))] == LABELS
    # The saved code imports nothing of this project: it must run where the project is not installed.
    code = (distilbert_run / "hf_classifier.py").read_text()
    assert set(re.findall(r"^(?:from|import) (\w+)", code, flags=re.M)) == {"torch", "transformers"}
    # Saving the loaded model again gives the same weights.
    again = distilbert_run.parent / "again"
    model.save_pretrained(again)
    reloaded = GenreTaggerForSequenceClassification.from_pretrained(again)
    first, tokenizer = load_classifier(distilbert_run)
    np.testing.assert_array_equal(
        predict_probabilities(first, tokenizer, TEXTS, MAX_LENGTH),
        predict_probabilities(reloaded, tokenizer, TEXTS, MAX_LENGTH),
    )


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_any_encoder_round_trips_through_the_auto_classes(model_type, pooling, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from genre_tagger.hf_classifier import GenreTaggerConfig, GenreTaggerForSequenceClassification

    sizes = {
        "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "mpnet": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    }[model_type]
    config = GenreTaggerConfig(
        encoder=AutoConfig.for_model(model_type, vocab_size=200, **sizes),
        pooling=pooling,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        problem_type="multi_label_classification",
    )
    model = GenreTaggerForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    # `import genre_tagger` registered the classes: in this process the auto class needs no remote code.
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is GenreTaggerForSequenceClassification
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert loaded.config.encoder.model_type == model_type and loaded.config.pooling == pooling
    ids = torch.tensor([[1, 5, 7, 9, 2], [1, 8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_allclose(model(ids, mask).logits.detach(), loaded(ids, mask).logits.detach(), atol=1e-6)


def test_unknown_pooling_is_refused():
    from transformers import AutoConfig

    from genre_tagger.hf_classifier import GenreTaggerConfig, GenreTaggerForSequenceClassification

    encoder = AutoConfig.for_model("bert", vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    with pytest.raises(ValueError, match="pooling"):
        GenreTaggerForSequenceClassification(GenreTaggerConfig(encoder=encoder, pooling="max"))


def test_pos_weight_shapes_the_loss_and_is_never_saved(tiny_distilbert, tmp_path):
    from genre_tagger.hf_classifier import GenreTaggerForSequenceClassification
    from genre_tagger.modeling import build_classifier

    weights = np.arange(1, len(LABELS) + 1, dtype=np.float32)
    model = build_classifier(str(tiny_distilbert), LABELS, "mean", 0.0, weights).eval()
    assert torch.equal(model.pos_weight, torch.from_numpy(weights))
    assert "pos_weight" not in model.state_dict()
    ids, mask = torch.tensor([[101, 2000, 102]]), torch.ones(1, 3, dtype=torch.long)
    labels = torch.ones(1, len(LABELS))
    output = model(ids, mask, labels=labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        output.logits, labels, pos_weight=torch.from_numpy(weights)
    )
    assert torch.allclose(output.loss, expected)
    model.save_pretrained(tmp_path)
    loaded = GenreTaggerForSequenceClassification.from_pretrained(tmp_path)
    assert torch.equal(loaded.pos_weight, torch.ones(len(LABELS)))  # initialised, not left as empty memory


def test_genre_trainer_learning_rates_follow_the_parameter_names(tiny_distilbert, tmp_path):
    from transformers import AutoConfig, TrainingArguments

    from genre_tagger.hf_classifier import GenreTaggerConfig, GenreTaggerForSequenceClassification
    from genre_tagger.modeling import _genre_trainer_class, build_classifier

    distilbert = build_classifier(str(tiny_distilbert), LABELS, "mean", 0.1)
    bert = GenreTaggerForSequenceClassification(
        GenreTaggerConfig(
            encoder=AutoConfig.for_model(
                "bert", vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
            ),
            id2label=dict(enumerate(LABELS)),
        )
    )
    arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to="none")
    for model, layers, layer_name, embedding_name in [
        (
            distilbert,
            2,
            "encoder.transformer.layer.{}.attention.q_lin.weight",
            "encoder.embeddings.word_embeddings.weight",
        ),
        (bert, 3, "encoder.encoder.layer.{}.attention.self.query.weight", "encoder.embeddings.word_embeddings.weight"),
    ]:
        trainer = _genre_trainer_class()(head_lr=2e-3, layer_decay=0.5, model=model, args=arguments)
        names = {name for name, _ in model.named_parameters()}
        assert {"classifier.weight", "classifier.bias", embedding_name} <= names
        assert trainer.learning_rate_of("classifier.weight") == 2e-3
        assert trainer.learning_rate_of(layer_name.format(layers - 1)) == pytest.approx(1e-4 * 0.5)
        assert trainer.learning_rate_of(layer_name.format(0)) == pytest.approx(1e-4 * 0.5**layers)
        assert trainer.learning_rate_of(embedding_name) == pytest.approx(1e-4 * 0.5 ** (layers + 1))
        optimizer = trainer.create_optimizer()
        rates = {round(group["lr"], 12) for group in optimizer.param_groups}
        expected = {2e-3} | {1e-4 * 0.5**k for k in range(1, layers + 2)}  # head, each layer, embeddings
        if any(".pooler." in name for name in names):
            expected.add(1e-4)  # above the last layer: the encoder's own lr
        assert rates == {round(lr, 12) for lr in expected}


def test_in_process_auto_loading_needs_no_remote_code(distilbert_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    from genre_tagger.hf_classifier import GenreTaggerForSequenceClassification
    from genre_tagger.modeling import load_classifier, predict_probabilities

    model = AutoModelForSequenceClassification.from_pretrained(distilbert_run)
    assert type(model) is GenreTaggerForSequenceClassification
    reference, tokenizer = load_classifier(distilbert_run)
    expected = predict_probabilities(reference, tokenizer, TEXTS, MAX_LENGTH)
    scores = pipeline("text-classification", model=str(distilbert_run), top_k=None)(TEXTS)
    got = np.array([[{s["label"]: s["score"] for s in row}[label] for label in LABELS] for row in scores])
    np.testing.assert_allclose(got, expected, atol=1e-5)


PIPELINE_CODE = """
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
run, texts = sys.argv[1], {texts}
model = AutoModelForSequenceClassification.from_pretrained(run, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model)
tokenizer = AutoTokenizer.from_pretrained(run, trust_remote_code=True)
import torch
with torch.no_grad():
    auto = torch.sigmoid(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits).tolist()
scores = pipeline("text-classification", model=run, top_k=None, trust_remote_code=True)(texts)
print(json.dumps({{"auto": auto, "pipeline": [{{s["label"]: s["score"] for s in row}} for row in scores],
                  "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
                  "projects": [m for m in sys.modules if m.startswith("genre_tagger")]}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("run_name", ["minilm_run", "distilbert_run"])
def test_pipeline_and_auto_model_match_predict_torch_backend_in_a_fresh_process(run_name, request):
    run = request.getfixturevalue(run_name)
    result = fresh_python(PIPELINE_CODE.format(texts=repr(TEXTS)), run)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["projects"] == []  # the model came from the run's own code, not from this project
    assert answer["labels"] == LABELS
    expected = torch_backend_probabilities(run)
    for row, auto, scores in zip(expected, answer["auto"], answer["pipeline"]):
        assert set(scores) == set(LABELS)
        for j, label in enumerate(LABELS):
            # predict.py --json rounds to 4 places
            assert abs(scores[label] - row[label]) <= 1e-4, (label, scores[label], row[label])
            assert abs(auto[j] - row[label]) <= 1e-4
        assert max(abs(scores[label] - auto[j]) for j, label in enumerate(LABELS)) < 1e-5
    assert len({round(p, 3) for p in answer["pipeline"][0].values()}) > 1  # sigmoid per genre, not one softmax


@pytest.mark.parametrize(
    "call",
    [
        "AutoModelForSequenceClassification.from_pretrained(sys.argv[1])",
        "AutoConfig.from_pretrained(sys.argv[1])",
        "pipeline('text-classification', model=sys.argv[1], top_k=None)",
    ],
)
def test_loading_without_trust_remote_code_fails_loudly(minilm_run, call):
    code = f"import sys\nfrom transformers import AutoConfig, AutoModelForSequenceClassification, pipeline\n{call}\nprint('LOADED')"
    result = fresh_python(code, minilm_run)
    assert result.returncode != 0 and "LOADED" not in result.stdout
    assert "trust_remote_code=True" in result.stderr


def test_import_genre_tagger_stays_light_and_registers_once_transformers_loads(distilbert_run):
    code = (
        "import sys, genre_tagger\n"
        "light = not {'torch', 'transformers'} & set(sys.modules)\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
        "print(light, type(model).__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(distilbert_run)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "genre_tagger.hf_classifier"]


@pytest.fixture(scope="module")
def exported_zip(distilbert_run):
    from genre_tagger.modeling import export_onnx

    export_onnx(distilbert_run, MAX_LENGTH)
    (distilbert_run / "binarizer.joblib").unlink()  # nothing needs it to predict
    zipped = zip_folder(distilbert_run, distilbert_run.parent / "run.zip")
    yield zipped
    joblib.dump(fit_binarizer([LABELS]), distilbert_run / "binarizer.joblib")


def test_load_tagger_opens_a_folder_or_zip_on_both_backends(distilbert_run, exported_zip):
    import genre_tagger
    from genre_tagger.modeling import load_classifier, predict_probabilities

    model, tokenizer = load_classifier(distilbert_run)
    expected = predict_probabilities(model, tokenizer, TEXTS, MAX_LENGTH)
    for path in (distilbert_run, exported_zip):
        onnx = genre_tagger.load_tagger(path, variant="fp32")
        torch_tagger = genre_tagger.load_tagger(path, backend="torch")
        assert (onnx.backend, torch_tagger.backend) == ("onnx", "torch")
        assert onnx.labels == torch_tagger.labels == LABELS
        np.testing.assert_allclose(onnx.probabilities(TEXTS), expected, atol=1e-4)
        np.testing.assert_allclose(torch_tagger.probabilities(TEXTS), expected, atol=1e-6)
        tagged = torch_tagger.tag(TEXTS, threshold=0.5)
        for row, probabilities in zip(tagged, expected):
            assert [g for g, _ in row] == [LABELS[j] for j in np.argsort(-probabilities) if probabilities[j] >= 0.5]
        assert torch_tagger.tag(TEXTS[0], threshold="tuned", top_k=2) == [
            [(g, p) for g, p in torch_tagger.tag([TEXTS[0]], threshold=0.25)[0][:2]]
        ]
    with pytest.raises(ValueError, match="threshold"):
        onnx.tag(TEXTS, threshold=1.5)
    assert not any(p.name.startswith("genre-tagger-run-") for p in exported_zip.parent.iterdir())


def test_load_tagger_onnx_backend_never_imports_torch(exported_zip):
    code = (
        "import sys, genre_tagger\n"
        f"tagger = genre_tagger.load_tagger({str(exported_zip)!r}, backend='onnx')\n"
        f"print(len(tagger.tag({TEXTS!r})), sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    )
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3 []"


def test_load_tagger_names_a_missing_onnx_export(minilm_run):
    from genre_tagger import UserError, load_tagger

    with pytest.raises(UserError, match="python -m genre_tagger.export"):
        load_tagger(minilm_run, backend="onnx")
    with pytest.raises(ValueError, match="backend"):  # misuse of the Python API
        load_tagger(minilm_run, backend="tensorflow")


@pytest.mark.slow
def test_legacy_run_still_tags_and_converts(tmp_path):
    from genre_tagger.modeling import is_legacy_run, load_classifier, packaged_model_path, predict_probabilities

    legacy = make_legacy_run(tmp_path / "old-run", packaged_model_path())
    assert json.loads((legacy / "config.json").read_text())["model_type"] == "bert"
    assert is_legacy_run(json.loads((legacy / "config.json").read_text()))
    # The torch path loads it through the compatibility path; predict.py tags it as before.
    model, tokenizer = load_classifier(legacy)
    expected = predict_probabilities(model, tokenizer, TEXTS, MAX_LENGTH)
    before = torch_backend_probabilities(legacy)
    np.testing.assert_allclose([[row[label] for label in LABELS] for row in before], expected, atol=1e-4)
    # Loaded by hand, the old weights are exactly what the compatibility path uses.
    from safetensors.torch import load_file

    saved = load_file(str(legacy / "model.safetensors"))
    assert torch.equal(saved["classifier.weight"], model.classifier.weight.detach())
    zip_folder(legacy, tmp_path / "old-run.zip")
    result = run_script("-m", "genre_tagger.convert", legacy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converted" in result.stdout and "refreshed" in result.stdout
    assert not is_legacy_run(json.loads((legacy / "config.json").read_text()))
    with zipfile.ZipFile(tmp_path / "old-run.zip") as archive:
        assert "hf_classifier.py" in archive.namelist()
    assert torch_backend_probabilities(legacy) == before
    # Now Hugging Face tools load it, in a fresh process, with the run's own code.
    result = fresh_python(PIPELINE_CODE.format(texts=repr(TEXTS)), legacy)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])["pipeline"]
    for row, expected_row in zip(scores, before):
        assert max(abs(row[label] - expected_row[label]) for label in LABELS) <= 1e-4
    again = run_script("-m", "genre_tagger.convert", legacy)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_legacy_distilbert_run_with_cls_pooling_loads(tmp_path, tiny_distilbert):
    from genre_tagger.modeling import load_classifier

    legacy = make_legacy_run(tmp_path / "old", tiny_distilbert, pooling="cls")
    model, _ = load_classifier(legacy)
    assert model.config.pooling == "cls" and model.config.encoder.model_type == "distilbert"
    assert not hasattr(model.config.encoder, "pooling")


def test_convert_refuses_what_is_not_a_run_folder(tmp_path):
    result = run_script("-m", "genre_tagger.convert", tmp_path / "nothing")
    assert result.returncode == 2 and "not a run folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


SAFE_LOAD_CODE = """
import sys
import genre_tagger  # registers the project's classes: the run's own Python is never needed
from transformers import AutoModelForSequenceClassification, pipeline
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1])
assert type(model).__module__ == "genre_tagger.hf_classifier", type(model).__module__
scores = pipeline("text-classification", model=sys.argv[1], top_k=None, function_to_apply="sigmoid")(["A heist."])
print("LOADED", len(scores[0]))
"""


def test_with_the_package_installed_a_run_loads_without_executing_its_own_code(distilbert_run, tmp_path):
    """A shared run's hf_classifier.py could carry anything: the safe path (import genre_tagger) never runs it."""
    import shutil

    run = tmp_path / "shared-run"
    shutil.copytree(distilbert_run, run)
    planted = tmp_path / "planted-code-ran"
    with open(run / "hf_classifier.py", "a") as f:
        f.write(f"\nopen({str(planted)!r}, 'w').write('pwned')\n")
    result = subprocess.run(
        [sys.executable, "-c", SAFE_LOAD_CODE, str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"LOADED {len(LABELS)}" in result.stdout
    assert not planted.exists()
