"""Batch tagging on Ray against predict.py --input, on the same rows and machine; and a killed run resumed.

    python bench/batch.py --model models/genre-classifier --rows 20000

Writes --rows real descriptions (the dataset's, repeated, each with its own id) to a CSV, then measures as
fresh processes: `predict.py --input rows.csv --output x.parquet --threads T` (T = all cores), and `python
-m genre_tagger.batch` on a Ray the job starts, with 1 and then 2 single-thread workers (--workers). A
shared machine's speed drifts over minutes, so predict.py runs again just before each batch job, and each
job is compared with the predict.py run beside it. It first prints how long `import ray` takes in a fresh
process: every one of Ray's processes pays it, and it depends on what else the environment holds. For each
job it prints wall seconds and rows/s; for the batch tool also Ray's start-up (ray.init to a usable
cluster) and the seconds the shards took inside the actors (summary.json). Then (unless --no-cluster) it
starts a Ray cluster on this machine (`ray start --head`, as docs/BATCH.md deploys one) and runs 2 workers
against it with --address twice: the first job on a new cluster also installs the code on it; the second
is what each later job costs. Then (unless --no-kill) it kills a batch job after its first shards are
written, reruns it and counts output rows against input rows.
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


def batch_command(model, rows_csv, output, workers, rows_per_shard, address=None):
    return [
        sys.executable, "-m", "genre_tagger.batch", "--model", model, "--input", rows_csv, "--output", output,
        "--id-column", "id", "--workers", str(workers), "--threads-per-worker", "1",
        "--rows-per-shard", str(rows_per_shard), *(["--address", address] if address else []),
    ]  # fmt: skip


def measure_predict(predict, rows):
    Path(predict[predict.index("--output") + 1]).unlink(missing_ok=True)
    wall, rss, _ = run_measured(predict)
    print(f"predict.py --input, {predict[-1]} threads: {wall:.1f} s, {rows / wall:.0f} rows/s, peak RSS {rss:.0f} MiB")
    return rows / wall


def measure_batch(what, command, output, rows, predict):
    baseline = measure_predict(predict, rows)
    wall, _, _ = run_measured(command)
    summary = json.loads(Path(output, "summary.json").read_text())
    print(
        f"{what}: {wall:.1f} s, {rows / wall:.0f} rows/s ({rows / wall / baseline:.2f}x the predict.py run above); "
        f"Ray start-up {summary['ray_start_seconds']:.1f} s, shards {summary['shard_seconds']:.1f} s of actor time"
    )


def ray_import_seconds():
    command = [sys.executable, "-c", "import time; t = time.perf_counter(); import ray; print(time.perf_counter() - t)"]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def running_cluster(work, cores):
    """`ray start --head` on this machine, in its own temp dir, on a free port: the cluster's address ("auto",
    the latest cluster started here, which also finds its authentication token), and how to stop it."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    start = [*ray_cli, "start", "--head", "--port", str(port), "--num-cpus", str(cores), "--include-dashboard=false",
             "--disable-usage-stats", "--temp-dir", os.path.join(work, "ray")]  # fmt: skip
    subprocess.run(start, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "auto", [*ray_cli, "stop"]


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
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="single-thread workers of each job that starts its own Ray, one job per count (default: %(default)s)",
    )
    p.add_argument("--no-cluster", action="store_true", help="skip the jobs on a running `ray start --head` cluster")
    p.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume check")
    args = p.parse_args()
    if min(args.workers) < 1 or len(set(args.workers)) < len(args.workers):
        # A repeated count would write into the folder of the job before it, which the rerun resumes.
        p.error(f"--workers takes distinct counts of at least 1, not {' '.join(map(str, args.workers))}")
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; rows: {args.rows}")
    print(f"`import ray` in a fresh process: {ray_import_seconds():.2f} s ({sys.executable})")
    with tempfile.TemporaryDirectory() as work:
        rows_csv = os.path.join(work, "rows.csv")
        write_rows(rows_csv, args.rows, args.data)
        predict = [
            sys.executable, "predict.py", "--model", args.model, "--input", rows_csv, "--output",
            os.path.join(work, "predict.parquet"), "--threads", str(cores),
        ]  # fmt: skip
        for workers in args.workers:
            output = os.path.join(work, f"batch-{workers}")
            command = batch_command(args.model, rows_csv, output, workers, args.rows_per_shard)
            what = f"genre_tagger.batch, a Ray started by the job, {workers} single-thread worker(s)"
            measure_batch(what, command, output, args.rows, predict)
        if not args.no_cluster:
            address, stop = running_cluster(work, cores)
            try:
                for job in ("first", "second"):
                    output = os.path.join(work, f"cluster-{job}")
                    command = batch_command(args.model, rows_csv, output, 2, args.rows_per_shard, address)
                    what = f"genre_tagger.batch --address (a running cluster), {job} job, 2 single-thread workers"
                    measure_batch(what, command, output, args.rows, predict)
            finally:
                subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not args.no_kill:
            done, written, distinct = kill_and_resume(
                args.model, rows_csv, os.path.join(work, "killed"), args.rows, args.rows_per_shard
            )
            verdict = "exactly one row per input row" if written == distinct == args.rows else "MISMATCH"
            print(f"killed after {done} shard(s), resumed: {written} rows, {distinct} distinct ids: {verdict}")


if __name__ == "__main__":
    main()
