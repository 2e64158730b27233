"""Fast CPU inference from a run's ONNX export, with onnxruntime and tokenizers: torch is never imported."""

import os
from pathlib import Path

import numpy as np

from genre_tagger import UserError

# A description whose tokens are mostly unknown to the vocabulary (emoji, a script the model never saw)
# gets probabilities that say nothing about it: predict.py warns above this share.
UNKNOWN_TOKEN_WARNING_SHARE = 0.5


def load_tokenizer(folder, max_length, origin=None):
    """The run's fast tokenizer (tokenizer.json), truncating at `max_length`, without padding."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{origin or folder} has no tokenizer.json; re-create the run with train.py")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises a bare Exception for a damaged file
        raise UserError(
            f"{origin or folder}: tokenizer.json is damaged ({type(err).__name__}); re-create the run"
        ) from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def unknown_token_shares(tokenizer, texts):
    """Per text, the share of its (non-special) tokens that the vocabulary maps to the unknown token."""
    unknown = getattr(tokenizer.model, "unk_token", None)
    unknown_id = tokenizer.token_to_id(unknown) if unknown else None
    shares = []
    for encoding in tokenizer.encode_batch(list(texts)):
        real = [i for i, special in zip(encoding.ids, encoding.special_tokens_mask) if not special]
        shares.append(sum(i == unknown_id for i in real) / len(real) if real and unknown_id is not None else 0.0)
    return np.array(shares)


class OnnxTagger:
    """Probabilities per genre for a list of texts, from `model.onnx` or `model.int8.onnx` in a run folder.

    check_manifest=False is for export_run alone: it measures files it has just written while the folder's
    manifest still describes the ones they replace (and keeps refusing the run until the export is sealed).
    """

    def __init__(self, folder, variant=None, threads=0, origin=None, spinning=True, check_manifest=True):
        import onnxruntime

        from genre_tagger.runs import ZIP_LEFT_OUT, labels_of, read_run_json, verify_files

        folder = Path(folder)
        origin = origin or folder
        info = read_run_json(folder, "onnx.json", origin)
        variant = variant or info.get("default", "fp32")
        if isinstance(info.get(ZIP_LEFT_OUT), dict) and variant in info[ZIP_LEFT_OUT]:
            raise UserError(
                f"{origin} leaves out the ONNX {variant} model to stay small (its run folder has it; or unzip it "
                f"and run python -m genre_tagger.export FOLDER); or use --onnx-variant {' or '.join(info['files'])}"
            )
        if variant not in info.get("files", {}):
            raise UserError(f"{origin} has no ONNX {variant} model; choose --onnx-variant {' or '.join(info['files'])}")
        model_file = info["files"][variant]
        if check_manifest:
            verify_files(folder, [model_file, "tokenizer.json"], origin)
        if not (folder / model_file).is_file():
            raise UserError(f"{origin} has no {model_file}; re-export with python -m genre_tagger.export RUN")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # its warnings would interleave with ours; failures raise
        if not spinning:  # idle threads sleep instead of busy-waiting: better where the cores are shared (serve.py)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.variant = variant
        self.labels = labels_of(folder, origin)
        try:
            self.session = onnxruntime.InferenceSession(
                str(folder / model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(
                f"{origin}: {model_file} cannot be loaded ({first}); re-export with python -m genre_tagger.export RUN"
            ) from None
        inputs = sorted(i.name for i in self.session.get_inputs())
        outputs = self.session.get_outputs()
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if (
            inputs != ["attention_mask", "input_ids"]
            or len(outputs) != 1
            or (isinstance(width, int) and width != len(self.labels))
        ):
            raise UserError(
                f"{origin}: {model_file} does not fit the run (its inputs/outputs differ from {len(self.labels)} "
                "genres); re-export with python -m genre_tagger.export RUN"
            )
        self.tokenizer = load_tokenizer(folder, info["max_length"], origin)
        self.model_file, self.max_length, self.origin = model_file, info["max_length"], origin

    def unknown_token_shares(self, texts):
        return unknown_token_shares(self.tokenizer, texts)

    def probabilities(self, texts, batch_size=32):
        """Shape (len(texts), genres), in the order of `texts`; batches rows of similar length together."""
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        outputs = np.zeros((len(encodings), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch].max())
            input_ids = np.zeros((len(batch), width), dtype=np.int64)
            attention_mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : lengths[i]] = encodings[i].ids
                attention_mask[row, : lengths[i]] = 1
            try:
                (probabilities,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
            except Exception as err:  # onnxruntime's own exception types
                raise UserError(
                    f"{self.origin}: the ONNX model failed to run ({type(err).__name__}); re-export it"
                ) from None
            if probabilities.shape != (len(batch), len(self.labels)) or not (
                np.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
            ):
                raise UserError(
                    f"{self.origin}: the ONNX model's output does not fit the run's {len(self.labels)} genres; "
                    "re-export it with python -m genre_tagger.export RUN"
                )
            outputs[batch] = probabilities
        return outputs
