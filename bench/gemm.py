"""How fast this CPU multiplies int8 matrices, and what that allows the default run's encoder at most.

    python bench/gemm.py --model models/genre-classifier

The int8 graph (the `rowwise` recipe) spends most of its time in MatMulIntegerToFloat: uint8 activations
times int8 weights, on onnxruntime's MLAS kernels. This times that one operator alone, on one thread, at
the shapes of each of the encoder's linear layers (rows = --batch descriptions x the dataset's mean tokens
per description; each layer's in x out features, read from the run's config), and fp32 MatMul beside it.
From those rates it prints the most descriptions per second per core the encoder's linear layers alone
would allow (attention, LayerNorm, GELU, tokenization and Python not counted), to compare with what
bench/predict.py measures for the whole run. Then it profiles the run's int8 graph itself (onnxruntime's
profiler, one thread, the first 1,000 descriptions in length-sorted batches of --batch) and prints each
operator type's share of the kernel time: what is left to win besides the matrix products.
"""

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def operator_session(kind, rows, k, n):
    """A one-operator graph: uint8 [rows, k] x int8 [k, n] -> float (MatMulIntegerToFloat), or fp32 MatMul."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        weights = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        constants = [
            weights,
            numpy_helper.from_array(np.array([0.01], np.float32), "a_scale"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array([128], np.uint8), "a_zero"),
            numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
        ]
        node = helper.make_node(
            "MatMulIntegerToFloat", ["x", "w", "a_scale", "w_scale", "a_zero", "w_zero"], ["y"], domain="com.microsoft"
        )
        x_type = TensorProto.UINT8
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    else:
        constants = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_type = TensorProto.FLOAT
        opsets = [helper.make_opsetid("", 17)]
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", x_type, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if kind == "int8":
        x = rng.integers(0, 256, (rows, k), dtype=np.uint8)
    else:
        x = rng.standard_normal((rows, k)).astype(np.float32)
    return session, x


def seconds_per_call(session, x, repeats):
    """Median process (CPU) seconds of one call over `repeats` timed rounds of 20 calls."""
    session.run(None, {"x": x})
    rounds = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(20):
            session.run(None, {"x": x})
        rounds.append((time.process_time() - started) / 20)
    return statistics.median(rounds)


def operator_shares(model_file, encodings, batch):
    """(operator type, its share of kernel time, calls per forward pass), largest first; and the kernel
    seconds per description."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        return _profiled(session, encodings, batch)


def _profiled(session, encodings, batch):
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    passes = 0
    for start in range(0, len(order), batch):
        rows = [encodings[i].ids for i in order[start : start + batch]]
        ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
        mask = np.zeros_like(ids)
        for j, row in enumerate(rows):
            ids[j, : len(row)], mask[j, : len(row)] = row, 1
        session.run(None, {"input_ids": ids, "attention_mask": mask})
        passes += 1
    events = json.loads(Path(session.end_profiling()).read_text())
    spent, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    total = sum(spent.values())
    shares = [(op, micros / total, calls[op] / passes) for op, micros in spent.most_common()]
    return shares, total / 1e6 / len(encodings)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder (default: %(default)s)")
    p.add_argument("--data", default="data/IMDB-Movie-Data.csv", help="descriptions for the mean token count")
    p.add_argument("--batch", type=int, default=16, help="descriptions per forward pass (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per shape (default: %(default)s)")
    args = p.parse_args()
    from genre_tagger.data import load_labelled_csv
    from genre_tagger.onnx_backend import load_tokenizer

    config = json.loads(Path(args.model, "config.json").read_text())
    config = config.get("encoder", config)  # a run's config nests its encoder's
    if config.get("model_type") == "distilbert":
        hidden, inner, layers = config["dim"], config["hidden_dim"], config["n_layers"]
    else:
        hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    max_length = json.loads(Path(args.model, "train_config.json").read_text())["settings"]["max_length"]
    tokenizer = load_tokenizer(Path(args.model, "tokenizer.json"), max_length, args.model)
    texts = load_labelled_csv(args.data)[0]["text"].tolist()
    tokens = float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)]))
    rows = round(args.batch * tokens)
    # Per layer: query, key, value and output (hidden x hidden each), then the feed-forward in and out.
    shapes = [(hidden, hidden)] * 4 + [(hidden, inner), (inner, hidden)]
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores; one thread")
    print(f"run: {layers} layers, hidden {hidden}, feed-forward {inner}; {tokens:.1f} tokens per description")
    print("| in x out | rows | int8 GOPS | fp32 GFLOPS |")
    print("| --- | --- | --- | --- |")
    per_description = {"int8": 0.0, "fp32": 0.0}
    for k, n in sorted(set(shapes)):
        rates = {}
        for kind in ("int8", "fp32"):
            session, x = operator_session(kind, rows, k, n)
            seconds = seconds_per_call(session, x, args.repeats)
            rates[kind] = 2 * rows * k * n / seconds / 1e9
            per_description[kind] += shapes.count((k, n)) * layers * seconds / args.batch
        print(f"| {k} x {n} | {rows} | {rates['int8']:.0f} | {rates['fp32']:.0f} |")
    for kind, seconds in per_description.items():
        print(
            f"{kind}: the linear layers alone take {seconds * 1e3:.2f} ms of one core per description: "
            f"at most {1 / seconds:.0f} descriptions/s per core"
        )
    onnx = json.loads(Path(args.model, "onnx.json").read_text())
    graph = Path(args.model, onnx["files"]["int8"])
    shares, seconds = operator_shares(graph, tokenizer.encode_batch(texts[:1000]), args.batch)
    print(
        f"\nthe run's int8 graph ({onnx.get('int8_recipe', 'int8')}): {seconds * 1e3:.2f} ms of kernels per description"
    )
    print("| operator | share | per pass |")
    print("| --- | --- | --- |")
    for op, share, calls in shares:
        if share >= 0.005:
            print(f"| {op} | {share:.1%} | {calls:.0f} |")


if __name__ == "__main__":
    main()
