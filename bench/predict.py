"""Prediction speed and memory, every figure measured in this one run, side by side.

    python bench/predict.py --model models/genre-classifier

Prints: cold start of `predict.py "one description"` as a fresh process (median of --repeats) per
backend; throughput (descriptions/s) and peak RSS over --rows descriptions for the seed notebook's
plain PyTorch loop (fp32, batch 32, every batch padded to 128 tokens) and for `predict.py --input`
with PyTorch, ONNX fp32, ONNX int8 (the run's own graph) and ONNX int8 of --previous-recipe (a copy of
the run whose int8 graph is quantized again from its model.onnx with that recipe: the graph runs had before); peak RSS of predict.py --input over --flat-rows to show that
memory stays flat. Each measurement runs in its own process, so peak RSS is that process's alone.
With --default-only (always for an ensemble run, which has no PyTorch model): only predict.py as a user
runs it, default backend and variant, cold start and throughput.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import run_measured  # noqa: E402  (bench/measure.py, beside this script)


def plain_torch_loop(model_dir, input_file, batch_size):
    """The seed notebook's way: transformers model, fp32, fixed batches each padded to 128 tokens."""
    import torch

    from genre_tagger.modeling import load_classifier

    model, tokenizer = load_classifier(model_dir)
    texts = Path(input_file).read_text().splitlines()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding="max_length",
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            torch.sigmoid(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)


def run_with_recipe(model, recipe, folder):
    """A copy of the run whose model.int8.onnx is quantized again from its model.onnx with `recipe`, resealed."""
    from genre_tagger.common import write_json
    from genre_tagger.modeling import quantize_int8
    from genre_tagger.save import reseal

    shutil.copytree(model, folder)
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", recipe)
    info = json.loads((folder / "onnx.json").read_text())
    write_json(folder / "onnx.json", {**info, "int8_recipe": recipe})
    reseal(folder)
    return str(folder)


def write_descriptions(path, rows, data):
    from genre_tagger.data import load_labelled_csv

    texts = load_labelled_csv(data)[0]["text"].tolist()
    with open(path, "w") as f:
        for i in range(rows):
            f.write(texts[i % len(texts)] + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder to measure (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=7, help="cold starts per backend; the median is reported (default: %(default)s)"
    )
    p.add_argument(
        "--rows", type=int, default=10_000, help="descriptions for the throughput runs (default: %(default)s)"
    )
    p.add_argument(
        "--flat-rows",
        type=int,
        default=100_000,
        help="descriptions for the flat-memory run, ONNX default variant (default: %(default)s; 0 skips it)",
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="batch size everywhere (default: %(default)s, predict.py's)"
    )
    p.add_argument(
        "--data",
        default="data/IMDB-Movie-Data.csv",
        help="CSV whose descriptions are repeated for the throughput runs (default: %(default)s)",
    )
    p.add_argument(
        "--default-only",
        action="store_true",
        help="measure only predict.py's default (ONNX) backend: cold start and throughput (always for an ensemble)",
    )
    p.add_argument(
        "--previous-recipe",
        default="dynamic",
        help="int8 recipe to compare the run's own graph with (genre_tagger.modeling.INT8_RECIPES; '' skips it) "
        "(default: %(default)s)",
    )
    p.add_argument("--previous-copy", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.previous_copy:
        run_with_recipe(Path(args.previous_copy[0]), args.previous_copy[1], Path(args.previous_copy[2]))
        return
    if args.worker:
        plain_torch_loop(args.worker[0], args.worker[1], args.batch_size)
        return
    model = Path(args.model)
    default_only = args.default_only or (model / "ensemble.json").exists()
    if not default_only and not (model / "onnx.json").exists():
        raise SystemExit(f"{model} has no ONNX export; train first (python train.py) or pass --model")
    python = sys.executable
    description = "A retired hitman seeks revenge on the gangsters who killed his dog."
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"model: {model}")

    print("\ncold start: predict.py 'one description', fresh process each time")
    cold = {}
    for backend in ("onnx",) if default_only else ("onnx", "torch"):
        command = [python, "predict.py", "--model", str(model), "--backend", backend, description]
        run_measured(command)  # warm the OS file cache once, as a user's second call would be
        walls = [run_measured(command)[0] for _ in range(args.repeats)]
        cold[backend] = statistics.median(walls)
        print(
            f"  {backend:<6} median {cold[backend]:.3f} s  (min {min(walls):.3f}, max {max(walls):.3f}, n={len(walls)})"
        )
    if "torch" in cold:
        print(f"  torch / onnx: {cold['torch'] / cold['onnx']:.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "descriptions.txt"
        write_descriptions(texts, args.rows, args.data)
        print(f"\nthroughput over {args.rows} descriptions (batch {args.batch_size}), one process each")
        results = {}
        cases = {}
        if default_only:
            runs = (("predict.py default",),)
        else:
            cases["plain PyTorch loop, pad 128"] = [
                python,
                "bench/predict.py",
                "--batch-size",
                str(args.batch_size),
                "--worker",
                str(model),
                str(texts),
            ]
            recipe = json.loads((model / "onnx.json").read_text()).get("int8_recipe", "dynamic")
            runs = [
                ("predict.py torch", "--backend", "torch"),
                ("predict.py onnx fp32", "--backend", "onnx", "--onnx-variant", "fp32"),
                (f"predict.py onnx int8 {recipe}", "--backend", "onnx", "--onnx-variant", "int8"),
            ]
            if args.previous_recipe and args.previous_recipe != recipe:
                previous = str(Path(tmp) / "previous")
                # In a child: loading the graphs here would count in every later child's peak RSS (fork).
                run_measured(
                    [python, "bench/predict.py", "--previous-copy", str(model), args.previous_recipe, previous]
                )
                runs.append(
                    (f"predict.py onnx int8 {args.previous_recipe}", "--onnx-variant", "int8", "--model", previous)
                )
        for label, *extra in runs:
            out = Path(tmp) / f"{label.replace(' ', '-')}.jsonl"
            cases[label] = [
                python,
                "predict.py",
                "--model",
                str(model),
                "--input",
                str(texts),
                "--output",
                str(out),
                "--batch-size",
                str(args.batch_size),
                *extra,
            ]
        for label, command in cases.items():
            wall, rss, _ = run_measured(command)
            results[label] = (args.rows / wall, rss)
            print(f"  {label:<28} {args.rows / wall:8.1f} descriptions/s   peak RSS {rss:7.0f} MiB   ({wall:.1f} s)")
        if not default_only:
            base = results["plain PyTorch loop, pad 128"][0]
            for label, (rate, _) in results.items():
                print(f"  {label:<28} {rate / base:5.2f}x the plain loop")
            previous = f"predict.py onnx int8 {args.previous_recipe}"
            if previous in results and args.previous_recipe != recipe:
                ratio = results[f"predict.py onnx int8 {recipe}"][0] / results[previous][0]
                print(f"  int8 {recipe} / int8 {args.previous_recipe}: {ratio:.2f}x")

        if args.flat_rows and not default_only:
            big = Path(tmp) / "many.txt"
            write_descriptions(big, args.flat_rows, args.data)
            wall, rss, _ = run_measured(
                [
                    python,
                    "predict.py",
                    "--model",
                    str(model),
                    "--input",
                    str(big),
                    "--output",
                    str(Path(tmp) / "many.jsonl"),
                ]
            )
            small_rss = results[f"predict.py onnx int8 {recipe}"][1]
            print(
                f"\nflat memory: predict.py --input {args.flat_rows} rows: peak RSS {rss:.0f} MiB ({args.rows} rows: {small_rss:.0f} MiB), {args.flat_rows / wall:.1f} descriptions/s"
            )


if __name__ == "__main__":
    main()
