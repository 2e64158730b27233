"""Fast CPU inference from a run's ONNX export, with onnxruntime and tokenizers: torch is never imported."""

import json
import os
from pathlib import Path

import numpy as np


class OnnxTagger:
    """Probabilities per genre for a list of texts, from `model.onnx` or `model.int8.onnx` in a run folder."""

    def __init__(self, folder, variant=None, threads=0, spinning=True):
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        with open(folder / "onnx.json") as f:
            info = json.load(f)
        variant = variant or info.get("default", "fp32")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:  # idle threads sleep instead of busy-waiting: better where the cores are shared (serve.py)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.variant = variant
        self.session = onnxruntime.InferenceSession(
            str(folder / info["files"][variant]), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=info["max_length"])

    def probabilities(self, texts, batch_size=32):
        """Shape (len(texts), genres), in the order of `texts`; batches rows of similar length together."""
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        outputs = None
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch].max())
            input_ids = np.zeros((len(batch), width), dtype=np.int64)
            attention_mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : lengths[i]] = encodings[i].ids
                attention_mask[row, : lengths[i]] = 1
            (probabilities,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
            if outputs is None:
                outputs = np.zeros((len(encodings), probabilities.shape[1]), dtype=np.float32)
            outputs[batch] = probabilities
        return outputs
