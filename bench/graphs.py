"""Which ONNX graph tags fastest on this CPU, and which gives each row the same numbers in any batch.

    python bench/graphs.py --model models/genre-classifier --rows 1000

Builds, from the run's PyTorch model, into a temporary folder: the run's own kind of export (torch.onnx,
SDPA attention) in fp32 and in each int8 recipe of genre_tagger.modeling (dynamic, rowwise); and the
same model exported with eager attention and passed through onnxruntime's transformer optimizer
(`optimize_model(model_type="bert")`: EmbedLayerNormalization, Attention or MultiHeadAttention,
SkipLayerNormalization, BiasGelu), in fp32 and quantized per token. For each graph it prints the fused
operators, CPU milliseconds per description on one thread (process time over --rows descriptions, batch 32,
median of --repeats), the largest and mean |probability difference| against the fp32 export, and how far
a row moves between batch size 1 and a batch of 32 (0 up to float rounding: the row does not depend on
its batch).
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


def measure(path, texts, tokenizer_bytes, labels, max_length, repeats):
    from genre_tagger.onnx_backend import OnnxTagger, load_tokenizer

    tagger = OnnxTagger(path, load_tokenizer(tokenizer_bytes, max_length, path), labels, path, threads=1)
    tagger.probabilities(texts[:64])
    times = []
    for _ in range(repeats):
        started = time.process_time()
        probabilities = tagger.probabilities(texts, 32)
        times.append((time.process_time() - started) * 1000 / len(texts))
    alone = np.concatenate([tagger.probabilities([text], 1) for text in texts[:64]])
    return statistics.median(times), probabilities, float(np.abs(alone - probabilities[:64]).max())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder (default: %(default)s)")
    p.add_argument("--data", default="data/IMDB-Movie-Data.csv", help="where the descriptions come from")
    p.add_argument("--rows", type=int, default=1000, help="descriptions to tag per graph (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per graph, median (default: %(default)s)")
    args = p.parse_args()
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
        for recipe in ("dynamic", "rowwise"):
            quantize_int8(work / "sdpa.onnx", work / f"{recipe}.onnx", recipe)
            graphs[f"int8 {recipe}"] = (work / f"{recipe}.onnx", {})
        export(model, tokenizer, work / "eager.onnx", eager=True)
        fused = fuse(work / "eager.onnx", work / "fused.onnx", config, multi_head=False)
        graphs["fused fp32 (Attention)"] = (work / "fused.onnx", fused)
        fused_mha = fuse(work / "eager.onnx", work / "fused-mha.onnx", config, multi_head=True)
        graphs["fused fp32 (MultiHeadAttention)"] = (work / "fused-mha.onnx", fused_mha)
        onnx.save(quantize_per_token(onnx.load(str(work / "fused-mha.onnx"))), str(work / "fused-rowwise.onnx"))
        graphs["fused int8 rowwise"] = (work / "fused-rowwise.onnx", fused_mha)
        reference = None
        for name, (path, fused_ops) in graphs.items():
            ms, probabilities, batch_move = measure(path, texts, tokenizer_bytes, labels, max_length, args.repeats)
            reference = probabilities if reference is None else reference
            difference = np.abs(probabilities - reference)
            print(
                f"  {name:<32} {ms:6.2f} ms/description  vs fp32: max {difference.max():.4f} mean "
                f"{difference.mean():.5f}  batch of 1 vs 32: {batch_move:.1e}  {json.dumps(fused_ops) if fused_ops else ''}"
            )


if __name__ == "__main__":
    main()
