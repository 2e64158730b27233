"""Which ONNX graph (or other CPU runtime) tags fastest on this CPU, and which gives each row the same numbers in
any batch.

    python bench/graphs.py --model models/genre-classifier --rows 1000

Builds, from the run's PyTorch model, into a temporary folder: the run's own kind of export (torch.onnx,
SDPA attention) in fp32 and in each int8 recipe of genre_tagger.modeling (dynamic, rowwise, blockwise);
the same graph with 4-bit weights (MatMulNBits, block --nbits-block, activations int8 per block); the same
model exported with eager attention and passed through onnxruntime's transformer optimizer
(`optimize_model(model_type="bert")`: EmbedLayerNormalization, Attention or MultiHeadAttention,
SkipLayerNormalization, BiasGelu), in fp32 and quantized per token; and, where the `ctranslate2` package is
installed (`pip install ctranslate2`; not a dependency of the project), the encoder converted to
CTranslate2 in int8 (weights per output row, activations per token, inside its own fused kernels) and
float32, with the run's pooling and head in numpy. For each it prints the fused operators, CPU
milliseconds per description on one thread (process time over --rows descriptions, batch 32, median of
--repeats), the largest and mean |probability difference| against the fp32 export, the share of
(description, genre) decisions at 0.3 that agree with it, and how far a row moves between batch size 1
and a batch of 32 (0 up to float rounding: the row does not depend on its batch).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export(model, tokenizer, path, eager):
    import torch

    from genre_tagger.modeling import _ProbabilitiesOnly

    if eager:  # the optimizer's attention fusion matches the eager attention pattern only
        model.encoder.set_attn_implementation("eager")
    example = tokenizer(
        ["an example description to trace the graph", "a second one"], padding=True, return_tensors="pt"
    )
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ProbabilitiesOnly(model).eval(),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["probabilities"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes},
            opset_version=17,
            dynamo=False,
        )


def fuse(source, target, config, multi_head):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = multi_head  # keeps the Q, K, V MatMuls apart, so they can be quantized
    fused = optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    fused.save_model_to_file(str(target))
    return {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def quantize_nbits(fp32_path, path, bits, block_size):
    """Every weight MatMul as MatMulNBits (`bits`-bit weights, one scale per block), activations int8 per block."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)), bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), False)


class CTranslate2Tagger:
    """The run's encoder in CTranslate2 on one thread, pooled and classified as the run's model does."""

    def __init__(self, model, tokenizer, text_tokenizer, folder, compute_type):
        import ctranslate2

        model.encoder.save_pretrained(folder / "hf")
        tokenizer.save_pretrained(folder / "hf")
        ctranslate2.converters.TransformersConverter(str(folder / "hf")).convert(
            str(folder), quantization="int8" if compute_type == "int8" else None, force=True
        )
        self.encoder = ctranslate2.Encoder(
            str(folder), device="cpu", compute_type=compute_type, intra_threads=1, inter_threads=1
        )
        self.tokenizer = text_tokenizer  # the run's own, as OnnxTagger reads with
        self.pooling = model.config.pooling
        self.weight = model.classifier.weight.detach().numpy()
        self.bias = model.classifier.bias.detach().numpy()

    def probabilities(self, texts, batch_size=32):
        from genre_tagger.modeling import length_sorted_batches

        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        outputs = np.zeros((len(texts), len(self.bias)), np.float32)
        for batch in length_sorted_batches(lengths, batch_size):
            hidden = np.array(self.encoder.forward_batch([encodings[i].ids for i in batch]).last_hidden_state)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = (np.arange(hidden.shape[1])[None, :] < lengths[batch][:, None]).astype(np.float32)
                pooled = (hidden * mask[..., None]).sum(axis=1) / lengths[batch][:, None]
            outputs[batch] = 1 / (1 + np.exp(-(pooled @ self.weight.T + self.bias)))
        return outputs


def measure(tagger, texts, repeats):
    tagger.probabilities(texts[:64])
    times = []
    for _ in range(repeats):
        started = time.process_time()
        probabilities = tagger.probabilities(texts, 32)
        times.append((time.process_time() - started) * 1000 / len(texts))
    alone = np.concatenate([tagger.probabilities([text], 1) for text in texts[:64]])
    return statistics.median(times), probabilities, float(np.abs(alone - probabilities[:64]).max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder (default: %(default)s)")
    p.add_argument("--data", default="data/IMDB-Movie-Data.csv", help="where the descriptions come from")
    p.add_argument("--rows", type=int, default=1000, help="descriptions to tag per graph (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per graph, median (default: %(default)s)")
    p.add_argument(
        "--nbits-block",
        type=int,
        default=128,
        help="input rows per weight scale of the 4-bit graph, a power of 2 from 16 (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        p.error(f"--rows and --repeats take at least 1, not {args.rows} and {args.repeats}")
    if args.nbits_block < 16 or args.nbits_block & (args.nbits_block - 1):
        p.error(f"--nbits-block must be a power of 2 from 16 (16, 32, 64, 128, ...), not {args.nbits_block}")
    import onnx

    from genre_tagger.data import load_labelled_csv
    from genre_tagger.modeling import load_classifier, quantize_int8, quantize_per_token
    from genre_tagger.run import Run

    with Run.open(args.model) as run:
        labels, max_length, tokenizer_bytes = run.labels, run.max_length, run.read("tokenizer.json")
    model, tokenizer = load_classifier(args.model)
    config = model.config.encoder if hasattr(model.config, "encoder") else model.config
    texts = (load_labelled_csv(args.data)[0]["text"].tolist() * 50)[: args.rows]
    print(f"machine: {os.cpu_count()} cores; {args.rows} descriptions, batch 32, one thread")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        export(model, tokenizer, work / "sdpa.onnx", eager=False)
        graphs = {"fp32 (the run's export)": (work / "sdpa.onnx", {})}
        for recipe in ("dynamic", "rowwise", "blockwise"):
            quantize_int8(work / "sdpa.onnx", work / f"{recipe}.onnx", recipe)
            graphs[f"int8 {recipe}"] = (work / f"{recipe}.onnx", {})
        quantize_nbits(work / "sdpa.onnx", work / "4bit.onnx", 4, args.nbits_block)
        graphs[f"4-bit weights, block {args.nbits_block}"] = (work / "4bit.onnx", {})
        export(model, tokenizer, work / "eager.onnx", eager=True)
        fused = fuse(work / "eager.onnx", work / "fused.onnx", config, multi_head=False)
        graphs["fused fp32 (Attention)"] = (work / "fused.onnx", fused)
        fused_mha = fuse(work / "eager.onnx", work / "fused-mha.onnx", config, multi_head=True)
        graphs["fused fp32 (MultiHeadAttention)"] = (work / "fused-mha.onnx", fused_mha)
        onnx.save(quantize_per_token(onnx.load(str(work / "fused-mha.onnx"))), str(work / "fused-rowwise.onnx"))
        graphs["fused int8 rowwise"] = (work / "fused-rowwise.onnx", fused_mha)
        from genre_tagger.common import first_line
        from genre_tagger.metrics import DEFAULT_THRESHOLD
        from genre_tagger.onnx_backend import OnnxTagger, load_tokenizer

        taggers = {
            name: (
                lambda path=path: OnnxTagger(
                    path, load_tokenizer(tokenizer_bytes, max_length, path), labels, path, threads=1
                ),
                fused_ops,
            )
            for name, (path, fused_ops) in graphs.items()
        }
        try:
            import ctranslate2  # noqa: F401  (only to know whether it is there)
        except ImportError:
            print("  (ctranslate2 is not installed: `pip install ctranslate2` adds its rows)")
        else:
            for compute_type in ("int8", "float32"):
                folder = work / f"ct2-{compute_type}"
                try:
                    tagger = CTranslate2Tagger(
                        model, tokenizer, load_tokenizer(tokenizer_bytes, max_length, folder), folder, compute_type
                    )
                except Exception as err:  # an encoder CTranslate2 cannot convert (or a run without .encoder)
                    print(f"  (CTranslate2 {compute_type} skipped: {first_line(err, 200)})")
                    continue
                taggers[f"CTranslate2 {compute_type}"] = (lambda tagger=tagger: tagger, {})
        reference = None
        for name, (make_tagger, fused_ops) in taggers.items():
            ms, probabilities, batch_move = measure(make_tagger(), texts, args.repeats)
            reference = probabilities if reference is None else reference
            difference = np.abs(probabilities - reference)
            agreement = ((probabilities >= DEFAULT_THRESHOLD) == (reference >= DEFAULT_THRESHOLD)).mean()
            print(
                f"  {name:<32} {ms:6.2f} ms/description  vs fp32: max {difference.max():.4f} mean "
                f"{difference.mean():.5f} decisions {agreement:.2%}  batch of 1 vs 32: {batch_move:.1e}  "
                f"{json.dumps(fused_ops) if fused_ops else ''}",
                flush=True,
            )


if __name__ == "__main__":
    from genre_tagger.cli import run_main

    run_main(main)
