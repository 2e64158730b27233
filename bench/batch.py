"""Batch tagging on Ray against predict.py --input, on the same rows and machine; and a killed run resumed.

    python bench/batch.py --model models/genre-classifier --rows 20000

Writes --rows real descriptions (the dataset's, repeated, each with its own id) to a CSV, then measures as
fresh processes: `predict.py --input rows.csv --output x.parquet --threads T` (T = all cores), and
`python -m genre_tagger.batch` on a local Ray with 1 and with 2 single-thread workers. For each it prints
wall seconds and rows/s; for the batch tool also Ray's start-up (ray.init to a usable cluster) and the
seconds the shards took inside the actors (summary.json). Then (unless --no-kill) it kills a batch job
after its first shards are written, reruns it and counts output rows against input rows.
"""

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import run_measured  # noqa: E402  (bench/measure.py, beside this script)


def write_rows(path, rows, data):
    from genre_tagger.data import load_labelled_csv

    texts = load_labelled_csv(data)[0]["text"].tolist()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "Description"])
        for i in range(rows):
            writer.writerow([i, texts[i % len(texts)]])


def batch_command(model, rows_csv, output, workers, rows_per_shard):
    return [
        sys.executable, "-m", "genre_tagger.batch", "--model", model, "--input", rows_csv, "--output", output,
        "--id-column", "id", "--workers", str(workers), "--threads-per-worker", "1",
        "--rows-per-shard", str(rows_per_shard),
    ]  # fmt: skip


def kill_and_resume(model, rows_csv, output, rows, rows_per_shard):
    """Kill a job once 2 shards are written, rerun it: (shards done at the kill, output rows, distinct ids)."""
    import pyarrow.parquet as pq

    command = batch_command(model, rows_csv, output, 2, rows_per_shard)
    job = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    while len(list(Path(output).glob("part-*.parquet"))) < 2 and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done = len(list(Path(output).glob("part-*.parquet")))
    subprocess.run(command, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    ids = [i for part in sorted(Path(output).glob("part-*.parquet")) for i in pq.read_table(part)["id"].to_pylist()]
    return done, len(ids), len(set(ids))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder or zip (default: %(default)s)")
    p.add_argument("--data", default="data/IMDB-Movie-Data.csv", help="where the descriptions come from")
    p.add_argument("--rows", type=int, default=20_000, help="descriptions to tag (default: %(default)s)")
    p.add_argument(
        "--rows-per-shard", type=int, default=2_000, help="the batch tool's shard size (default: %(default)s)"
    )
    p.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume check")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; rows: {args.rows}")
    with tempfile.TemporaryDirectory() as work:
        rows_csv = os.path.join(work, "rows.csv")
        write_rows(rows_csv, args.rows, args.data)
        predict = [
            sys.executable, "predict.py", "--model", args.model, "--input", rows_csv, "--output",
            os.path.join(work, "predict.parquet"), "--threads", str(cores),
        ]  # fmt: skip
        wall, rss, _ = run_measured(predict)
        baseline = args.rows / wall
        print(f"predict.py --input, {cores} threads: {wall:.1f} s, {baseline:.0f} rows/s, peak RSS {rss:.0f} MiB")
        for workers in (1, 2):
            output = os.path.join(work, f"batch-{workers}")
            wall, _, _ = run_measured(batch_command(args.model, rows_csv, output, workers, args.rows_per_shard))
            summary = json.loads(Path(output, "summary.json").read_text())
            print(
                f"genre_tagger.batch, {workers} single-thread worker(s): {wall:.1f} s, {args.rows / wall:.0f} rows/s "
                f"({args.rows / wall / baseline:.2f}x predict.py); Ray start-up {summary['ray_start_seconds']:.1f} s, "
                f"shards {summary['shard_seconds']:.1f} s of actor time"
            )
        if not args.no_kill:
            done, written, distinct = kill_and_resume(
                args.model, rows_csv, os.path.join(work, "killed"), args.rows, args.rows_per_shard
            )
            verdict = "exactly one row per input row" if written == distinct == args.rows else "MISMATCH"
            print(f"killed after {done} shard(s), resumed: {written} rows, {distinct} distinct ids: {verdict}")


if __name__ == "__main__":
    main()
