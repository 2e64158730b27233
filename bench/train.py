"""Training speed: the default recipe's batching against the seed notebook's, measured in one run.

    python bench/train.py

Both train the same classifier on the same rows for --epochs with the same Trainer settings; they differ
only in batching: dynamic padding with length-grouped batches (ours) versus every batch padded to 128
tokens in random order (the seed notebook). Prints samples/s, wall time and the ratio. With --full-run
it also times the whole default offline run (train, evaluate, save, export, zip) as a user runs it.
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
    args = p.parse_args()

    import torch

    from genre_tagger.data import DEFAULT_DATA_PATH, encode_labels, fit_binarizer, load_labelled_csv

    frame = load_labelled_csv(DEFAULT_DATA_PATH)[0].head(args.rows)
    binarizer = fit_binarizer(frame["labels"])
    label_matrix = encode_labels(binarizer, frame["labels"])
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


if __name__ == "__main__":
    main()
