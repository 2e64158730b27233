"""Training speed: the default recipe's batching against the seed notebook's, measured in one run.

    python bench/train.py

Both train the same classifier on the same rows for --epochs with the same Trainer settings; they differ
only in batching: dynamic padding with length-grouped batches (ours) versus every batch padded to 128
tokens in random order (the seed notebook). Prints samples/s, wall time and the ratio. With --full-run
it also times the whole default offline run (train, evaluate, save, export, zip) as a user runs it.

    python bench/train.py --distributed

measures data parallelism instead: the same training as one process with 2 threads, against 2 processes
with 1 thread each under torchrun (gloo), at 16 rows per process (a 32-row optimizer step) and at 8
(the same 16-row step as one process). Each case is a fresh process (group); samples/s counts training
rows seen per second of `trainer.train()` on the main process.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_once(texts, label_matrix, labels, fixed_padding, args, work):
    import torch
    import transformers
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from genre_tagger.modeling import TextDataset, build_classifier, packaged_model_path

    transformers.set_seed(0)
    base = packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build_classifier(base, labels, "mean", 0.1)
    collator = (
        DataCollatorWithPadding(tokenizer, padding="max_length", max_length=128)
        if fixed_padding
        else DataCollatorWithPadding(tokenizer)
    )
    arguments = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        train_sampling_strategy="random" if fixed_padding else "group_by_length",
        # As in genre_tagger.modeling.fine_tune: under torchrun on CPU, data-parallel over gloo.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        ddp_find_unused_parameters=True,  # all-MiniLM-L6-v2's pooler is never used by mean pooling
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=TextDataset(texts, tokenizer, 128, label_matrix),
        processing_class=tokenizer,
        data_collator=collator,
    )
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows", type=int, default=720, help="training rows, the default run's train split size (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (default: %(default)s)")
    p.add_argument("--full-run", action="store_true", help="also time `python train.py --model minilm` end to end")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="compare 1 process x 2 threads with 2 processes x 1 thread (torchrun, gloo) instead",
    )
    p.add_argument("--worker-threads", type=int, default=0, help=argparse.SUPPRESS)  # one measured case
    args = p.parse_args()

    import torch

    from genre_tagger.data import DEFAULT_DATA_PATH, encode_labels, fit_binarizer, load_labelled_csv

    if args.distributed:
        return compare_processes(args)
    frame = load_labelled_csv(DEFAULT_DATA_PATH)[0].head(args.rows)
    binarizer = fit_binarizer(frame["labels"])
    label_matrix = encode_labels(binarizer, frame["labels"])
    if args.worker_threads:
        torch.set_num_threads(args.worker_threads)
        with tempfile.TemporaryDirectory() as work:
            wall = train_once(frame["text"].tolist(), label_matrix, list(binarizer.classes_), False, args, work)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"WALL {wall:.3f}")
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    print(f"{len(frame)} rows x {args.epochs} epochs, batch {args.batch_size}, all-MiniLM-L6-v2")
    rates = {}
    with tempfile.TemporaryDirectory() as work:
        for name, fixed in (
            ("dynamic padding, length-grouped (ours)", False),
            ("every batch padded to 128 (seed notebook)", True),
        ):
            wall = train_once(frame["text"].tolist(), label_matrix, list(binarizer.classes_), fixed, args, work)
            rates[name] = len(frame) * args.epochs / wall
            print(f"  {name:<44} {rates[name]:6.1f} samples/s  {wall:6.1f} s")
    ours, seed = rates.values()
    print(f"  speed-up: {ours / seed:.2f}x")
    if args.full_run:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "train.py",
                    "--model",
                    "minilm",
                    "--output",
                    f"{out}/run",
                    "--checkpoint-dir",
                    f"{out}/ck",
                ],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(
                f"whole default offline run (train, evaluate, save, export, zip): {time.perf_counter() - started:.0f} s"
            )


def compare_processes(args):
    """Run each layout as its own fresh process (group) and print samples/s side by side."""
    cases = [
        ("1 process x 2 threads", 16, [], 2),
        (
            "2 processes x 1 thread, 16 rows each",
            16,
            ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
            1,
        ),
        (
            "2 processes x 1 thread, 8 rows each",
            8,
            ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
            1,
        ),
    ]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; all-MiniLM-L6-v2, CPU")
    print(f"{args.rows} rows x {args.epochs} epochs, dynamic padding, length-grouped batches (train.py's recipe)")
    print(f"  {'layout':<40} {'rows/optimizer step':>19} {'samples/s':>10} {'wall':>8}")
    rates = []
    for name, batch, launcher, threads in cases:
        command = [sys.executable, *launcher, str(ROOT / "bench" / "train.py"), "--rows", str(args.rows)]
        command += ["--epochs", str(args.epochs), "--batch-size", str(batch), "--worker-threads", str(threads)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        wall = float(next(line for line in result.stdout.splitlines() if line.startswith("WALL ")).split()[1])
        rates.append(args.rows * args.epochs / wall)
        step_rows = batch * (2 if launcher else 1)
        print(f"  {name:<40} {step_rows:>19} {rates[-1]:>10.1f} {wall:>7.1f}s", flush=True)
    print(
        f"  2 processes against 1: {rates[1] / rates[0]:.2f}x (16 rows each), {rates[2] / rates[0]:.2f}x (8 rows each)"
    )


if __name__ == "__main__":
    main()
