"""Quality benchmark: train.py on the public notebook's 80/20 split, several seeds, one table.

The protocol is fixed so that numbers are comparable between recipes and with the public notebook:
`train_test_split(rows, test_size=0.2, random_state=42)` on the CSV's rows in file order gives the
200 test rows and 800 training rows (train.py carves its validation rows out of those 800). Each seed
runs train.py as a subprocess; the table reports mean ± std over seeds of the fine-tuned model, the
TF-IDF baseline and the trivial most-frequent-genres baseline, all read from the runs' metrics.json.

    python bench/quality.py                        # 3 seeds, --model minilm, train.py defaults
    python bench/quality.py --seeds 42 -- --lr 5e-5 --epochs 12   # flags after -- go to train.py
    python bench/quality.py --model mpnet -- --freeze-encoder      # frozen encoder, trained head

Beside each run's training time the table reports its peak resident memory (the train.py process's
maximum RSS, from the operating system's accounting of the finished child).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from measure import run_measured  # bench/measure.py, beside this script
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from genre_tagger.run import Run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

METRICS = ["macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss"]
# (row name, path of keys into metrics.json); the fine-tuned rows first, then the baselines.
ROWS = [
    ("fine-tuned, default decisions (0.3 uncalibrated)", ["test"]),
    ("fine-tuned @ tuned global", ["test_tuned_global"]),
    ("fine-tuned @ tuned per genre", ["test_tuned_per_genre"]),
    ("TF-IDF @ 0.3", ["baseline_tfidf", "test"]),
    ("TF-IDF @ tuned global", ["baseline_tfidf", "test_tuned_global"]),
    ("most frequent @ 0.3", ["baseline_most_frequent", "test"]),
]
# What a run folder keeps after it has been read, unless --keep-runs: the small, readable files.
SMALL_FILES = {"metrics.json", "train_config.json", "thresholds.json", "per_genre.csv", "onnx.json"}


def build_parser():
    p = argparse.ArgumentParser(
        description="Train on the public notebook's 800 rows, test on its 200 rows, over several seeds; print mean ± std.",
        epilog="Arguments after -- are passed to train.py unchanged (e.g. -- --lr 5e-5 --epochs 12).",
    )
    p.add_argument(
        "--data",
        default=str(ROOT / "data" / "IMDB-Movie-Data.csv"),
        help="the full CSV to split 80/20 (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="base model passed to train.py --model (default: %(default)s, the packaged offline model)",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[42, 43, 44], help="train.py seeds, one run each (default: %(default)s)"
    )
    p.add_argument(
        "--test-size",
        type=float,
        default=0.2,
        help="fraction of rows held out for test (default: %(default)s, the notebook's)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="random_state of the 80/20 split (default: %(default)s, the notebook's)",
    )
    p.add_argument(
        "--work-dir",
        default=str(ROOT / "bench" / "results" / "quality"),
        help="folder for the split CSVs, runs and the result table (default: %(default)s)",
    )
    p.add_argument(
        "--name",
        default="quality",
        help="file name stem of the written table: NAME.json and NAME.md in --work-dir (default: %(default)s)",
    )
    p.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep each run's model, ONNX files and zip (default: keep only its small JSON/CSV files)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds one train.py run may take before it is stopped (default: %(default)s)",
    )
    return p


def split_csv(data_path, work, test_size, split_seed):
    """Write train.csv and test.csv (same columns as the original) and return their paths."""
    # dtype=str and no NA parsing: the split files are byte-for-byte the original's fields.
    frame = pd.read_csv(data_path, dtype=str, keep_default_na=False)
    train_rows, test_rows = train_test_split(frame, test_size=test_size, random_state=split_seed)
    train_path, test_path = work / "train.csv", work / "test.csv"
    train_rows.to_csv(train_path, index=False)
    test_rows.to_csv(test_path, index=False)
    print(
        f"{data_path}: {len(frame)} rows -> {len(train_rows)} train ({train_path}), {len(test_rows)} test ({test_path})"
    )
    return train_path, test_path


def run_seed(seed, args, train_path, test_path, work, extra):
    """Run train.py for one seed; return (metrics.json, train_config.json) of its run folder."""
    run_dir = work / f"run-{seed}"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--data",
        str(train_path),
        "--test-data",
        str(test_path),
        "--model",
        args.model,
        "--seed",
        str(seed),
        "--output",
        str(run_dir),
        "--checkpoint-dir",
        str(work / "ck"),
        *extra,
    ]
    print(f"\n=== seed {seed}: {' '.join(command)}", flush=True)
    # train.py runs from the repository root, as its relative defaults expect; its log streams through.
    wall, peak_rss_mb, _ = run_measured(command, timeout=args.timeout, quiet=False)
    print(
        f"=== seed {seed} finished in {wall:.0f} s (wall clock, whole run), peak RSS {peak_rss_mb:.0f} MB", flush=True
    )
    with Run.open(run_dir) as run:
        metrics, config = run.json("metrics.json"), dict(run.train_config)
    config["peak_rss_mb"] = peak_rss_mb
    if not args.keep_runs:
        # Model weights, ONNX files and plots are ~100 MB a run; the numbers are all in the JSON files.
        for item in run_dir.iterdir():
            if item.name not in SMALL_FILES:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        run_dir.with_suffix(".zip").unlink(missing_ok=True)
    return metrics, config


def dig(payload, keys):
    for key in keys:
        payload = payload[key]
    return payload


def summarise(results):
    """{row: {metric: {mean, std, values}}} over seeds, plus training seconds for the fine-tuned rows."""
    table = {}
    for name, keys in ROWS:
        table[name] = {}
        for metric in METRICS:
            values = [dig(metrics, keys)[metric] for metrics, _ in results]
            table[name][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    seconds = [config["seconds"]["train"] for _, config in results]
    peaks = [config["peak_rss_mb"] for _, config in results]
    for name, _ in ROWS[:3]:
        for key, values in (("train_seconds", seconds), ("peak_rss_mb", peaks)):
            table[name][key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return table


def markdown(table, seeds):
    header = ["", "macro-F1", "micro-F1", "macro ROC-AUC", "Hamming loss", "train time (s)", "peak RSS (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cells in table.items():
        row = [name] + [f"{cells[m]['mean']:.4f} ± {cells[m]['std']:.4f}" for m in METRICS]
        for key in ("train_seconds", "peak_rss_mb"):
            row.append(f"{cells[key]['mean']:.0f} ± {cells[key]['std']:.0f}" if key in cells else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append(
        f"\nmean ± std (population std) over seeds {', '.join(map(str, seeds))}; train time is wall clock on this "
        "machine; peak RSS is the whole train.py process (training, evaluation, ONNX export)."
    )
    return "\n".join(lines)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_path, test_path = split_csv(args.data, work, args.test_size, args.split_seed)

    results = [run_seed(seed, args, train_path, test_path, work, extra) for seed in args.seeds]
    shutil.rmtree(work / "ck", ignore_errors=True)
    table = summarise(results)
    text = markdown(table, args.seeds)
    print(
        f"\nmodel {args.model}, train.py extra flags: {' '.join(extra) or '(none)'}, test rows {results[0][0]['test']['rows']}\n"
    )
    print(text)
    payload = {
        "protocol": {
            "data": str(args.data),
            "test_size": args.test_size,
            "split_seed": args.split_seed,
            "seeds": args.seeds,
        },
        "model": args.model,
        "train_py_extra_flags": extra,
        "best_epochs": [metrics["best_epoch"] for metrics, _ in results],
        "tuned_global_thresholds": [metrics["tuned_thresholds"]["global"] for metrics, _ in results],
        "table": table,
    }
    (work / f"{args.name}.json").write_text(json.dumps(payload, indent=2))
    (work / f"{args.name}.md").write_text(
        f"model {args.model}, train.py extra flags: {' '.join(extra) or '(none)'}\n\n{text}\n"
    )
    print(f"\nwritten {work / (args.name + '.json')} and {work / (args.name + '.md')}")


if __name__ == "__main__":
    main()
