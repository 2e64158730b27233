"""Tag a catalogue on a Ray cluster: CSV, JSON lines or Parquet in, sharded Parquet (or JSONL / CSV) out.

    python -m genre_tagger.batch --model models/genre-classifier.zip --input 'catalogue/*.parquet' --output tagged/
    python -m genre_tagger.batch ... --address auto          # on a running cluster (ray start --head)

The driver reads every input once, strictly and in bounded pieces, as predict.py does (so a bad row is found
before any tagging), and cuts each file into shards of --rows-per-shard rows by byte range (CSV, JSON lines) or
row group (Parquet). Ray Data hands the shards to a pool of actors (`map_batches` with a callable class on an
`ActorPoolStrategy`); each actor opens and verifies the run once through `Run.open`, with onnxruntime's threads
matched to its `num_cpus`, reads its shard, tags it exactly as predict.py does and writes
`part-FFFFF-SSSSS.<format>` under a temporary name, renamed when complete. A rerun into the same --output skips
finished shards; job.json refuses a rerun with another run, other settings or changed inputs. Ray is imported
here only: training and predict.py never need it (pip install -r requirements-batch.txt).
"""

import glob
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.common import first_line, note, printable, umask_mode
from genre_tagger.settings import MAX_PREDICT_BATCH, bounded_int, genre_count_problem

JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
JOB_FORMAT = 1
OUTPUT_FORMATS = ("parquet", "jsonl", "csv")
INPUT_FORMATS = ("auto", "csv", "jsonl", "parquet")
MAX_WORKERS = 4096
JOB_SETTINGS = (
    "format", "text_column", "id_column", "threshold", "max_genres", "min_genres",
    "batch_size", "rows_per_shard", "on_bad_row", "input_format",
)  # fmt: skip
MAX_THREADS_PER_WORKER = 1024
MAX_ROWS_PER_SHARD = 10**7
CONNECT_TIMEOUT_S = 10  # for the check that something listens at --address, before Ray tries (for minutes)
# What this tool writes into --output: its two JSON files, finished shards and their temporary names.
OWN_NAME = re.compile(
    r"(job\.json|summary\.json|part-\d{5}-\d{5}\.(parquet|jsonl|csv)|\.(job\.json|summary\.json|part-\d{5}-\d{5}\.(parquet|jsonl|csv))\..+\.part)"
)


def build_parser():
    p = ArgumentParser(
        prog="python -m genre_tagger.batch",
        description="Tag CSV, JSON lines or Parquet files with a run, on a Ray cluster (or a local one).",
    )
    p.add_argument("--model", required=True, help="run folder or its .zip, readable at this path on every node")
    p.add_argument("--input", required=True, help="a file, a folder (its .csv/.jsonl/.parquet files) or a glob")
    p.add_argument("--output", required=True, help="folder for the shards, job.json and summary.json")
    p.add_argument(
        "--address", help="Ray cluster to join ('auto': the one `ray start` runs here); default: a local one"
    )
    p.add_argument(
        "--workers",
        type=bounded_int(0, MAX_WORKERS, zero_means="the cluster's CPUs / --threads-per-worker"),
        default=0,
        help="tagging actors (default: 0 = the cluster's CPUs / --threads-per-worker)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=bounded_int(1, MAX_THREADS_PER_WORKER),
        default=1,
        help="CPU threads (Ray num_cpus) of each actor (default: 1)",
    )
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="parquet", help="shard format (default: %(default)s)")
    p.add_argument(
        "--input-format", choices=INPUT_FORMATS, default="auto", help="auto: by extension (default: %(default)s)"
    )
    p.add_argument("--text-column", default="Description", help="text column or field (default: %(default)s)")
    p.add_argument(
        "--id-column",
        help="the input's own id column, copied to `id` (default: none, id = FILE:ROW as predict.py counts)",
    )
    p.add_argument(
        "--threshold", default="default", help="as predict.py's: default, tuned, tuned-global or a probability"
    )
    p.add_argument("--max-genres", type=bounded_int(1, 10**6), help="tag at most N genres, most probable first")
    p.add_argument("--min-genres", type=bounded_int(0, 10**6), default=0, help="tag at least N genres (default: 0)")
    p.add_argument("--onnx-variant", choices=["int8", "fp32"], help="which ONNX file (default: the run's choice)")
    p.add_argument(
        "--batch-size",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=16,
        help="descriptions per forward pass (default: %(default)s)",
    )
    p.add_argument(
        "--rows-per-shard",
        type=bounded_int(1, MAX_ROWS_PER_SHARD),
        default=10_000,
        help="rows per output shard, the unit of work and of resuming (default: %(default)s)",
    )
    p.add_argument(
        "--on-bad-row",
        choices=["fail", "skip"],
        default="fail",
        help="fail: stop at the first bad row, naming its file and row, before any tagging; skip: leave it out and "
        "count it in summary.json (default: %(default)s)",
    )
    return p


# %% Inputs: files, formats and shards


def input_files(pattern):
    """The regular files --input names: itself, a folder's .csv/.jsonl/.parquet files, or a glob's matches, sorted."""
    from genre_tagger.textio import RECORD_EXTENSIONS

    path = Path(pattern)
    if path.is_dir():
        ends = tuple(end for ends in RECORD_EXTENSIONS.values() for end in ends)
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(ends))
        if not found:
            raise UserError(f"--input {pattern} holds no .csv, .jsonl or .parquet file")
        return found
    if path.is_file():
        return [pattern]
    found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not found:
        raise UserError(f"--input {pattern} matches no file; give a file, a folder or a glob such as 'data/*.parquet'")
    return found


def file_format(path, chosen):
    from genre_tagger.textio import format_by_extension

    fmt = chosen if chosen != "auto" else format_by_extension(path)
    if fmt == "txt":
        raise UserError(f"{path}: give .csv, .jsonl or .parquet files (or --input-format) to the batch tool")
    return fmt


class _CountedLines:
    """bounded_lines' (number, line, cut), counting the bytes and lines consumed so far (shard boundaries)."""

    def __init__(self, lines, position):
        self.lines, self.position, self.count = lines, position, 0

    def __iter__(self):
        for number, line, cut in self.lines:
            self.position += len(line.encode("utf-8", "surrogatepass"))
            self.count += 1
            yield number, line, cut


class _Piece:
    """A binary stream of `prefix` (a CSV's header) then `length` bytes of `raw` from where it stands."""

    def __init__(self, prefix, raw, length):
        self.prefix, self.raw, self.left = prefix, raw, length

    def read(self, size=-1):
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        if self.left <= 0:
            return b""
        data = self.raw.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data


def _records(lines, fmt, path, args, bad_row, first_row):
    from genre_tagger.textio import _csv_records, _jsonl_records

    if fmt == "csv":
        return _csv_records(lines, path, args.text_column, None, args.id_column, bad_row, first_row)
    return _jsonl_records(lines, path, args.text_column, None, args.id_column, bad_row)


def _identity(path):
    """Where an input is (as given: ids name it so; and absolute: for the actors) and what it was when planned."""
    stat = os.stat(path)
    return {"path": path, "absolute": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class _BadRows:
    """fail: raise the first bad row's one line; skip: count them."""

    def __init__(self, mode):
        self.mode, self.count = mode, 0

    def __call__(self, message):
        if self.mode == "fail":
            raise UserError(f"{message} (or pass --on-bad-row skip to leave such rows out)")
        self.count += 1


def plan_file(path, file_index, fmt, args, max_chars):
    """Read one input whole, strictly, and cut it into shards of --rows-per-shard good rows each:
    [{file, index, where it lies, first_row, rows, bad_rows, cut_rows}]."""
    from genre_tagger.textio import LINE_CAP, _CsvFeed, _parquet_records, bounded_lines, open_parquet, prepared_records

    bad, cut, shards = _BadRows(args.on_bad_row), [], []
    if fmt == "parquet":
        metadata = open_parquet(path).metadata
        groups, first_row, rows = [], 1, 0
        for group in range(metadata.num_row_groups):
            groups.append(group)
            rows += metadata.row_group(group).num_rows
            if rows >= args.rows_per_shard or group == metadata.num_row_groups - 1:
                shards.append({"row_groups": groups, "first_row": first_row})
                first_row, groups, rows = first_row + rows, [], 0
        for piece in shards:
            bad.count, cut = 0, []
            records = _parquet_records(
                path, args.text_column, None, args.id_column, bad, piece["row_groups"], piece["first_row"]
            )
            piece["rows"] = sum(1 for _ in prepared_records(records, path, max_chars, bad, cut))
            piece.update(bad_rows=bad.count, cut_rows=cut)
    else:
        with open(path, "rb") as raw:
            bom = 3 if raw.read(3) == b"\xef\xbb\xbf" else 0
            size = os.fstat(raw.fileno()).st_size
            raw.seek(0)
            lines = _CountedLines(bounded_lines(raw, path, LINE_CAP), bom)
            header = {"header_bytes": 0, "header_lines": 0}
            if fmt == "csv":  # the header's own bytes, put in front of every shard
                from genre_tagger.data import csv_rows

                next(csv_rows(_CsvFeed(lines, path, LINE_CAP), path), None)
                header = {"header_bytes": lines.position, "header_lines": lines.count}
                raw.seek(0)
                lines = _CountedLines(bounded_lines(raw, path, LINE_CAP), bom)
            first_row = 2 if fmt == "csv" else 1
            records = prepared_records(_records(lines, fmt, path, args, bad, first_row), path, max_chars, bad, cut)
            start = {"start": header["header_bytes"], "first_line": header["header_lines"] + 1, "first_row": first_row}
            rows = bad_before = cut_before = 0
            for number, *_ in records:
                rows += 1
                if rows == args.rows_per_shard:
                    shards.append({**header, **start, "stop": lines.position, "rows": rows})
                    shards[-1].update(bad_rows=bad.count - bad_before, cut_rows=cut[cut_before:])
                    start = {"start": lines.position, "first_line": lines.count + 1, "first_row": number + 1}
                    rows, bad_before, cut_before = 0, bad.count, len(cut)
            if rows or bad.count > bad_before or not shards:
                shards.append({**header, **start, "stop": size, "rows": rows})
                shards[-1].update(bad_rows=bad.count - bad_before, cut_rows=cut[cut_before:])
    for index, piece in enumerate(shards):
        piece.update(file=file_index, index=index)
    return shards


def read_shard(path, fmt, piece, args, max_chars):
    """The prepared records (number, text, None, id) of one shard, read as plan_file read them."""
    from genre_tagger.textio import LINE_CAP, _parquet_records, bounded_lines, prepared_records

    bad = _BadRows("skip")  # the plan already decided: a bad row here is one it counted
    if fmt == "parquet":
        records = _parquet_records(
            path, args.text_column, None, args.id_column, bad, piece["row_groups"], piece["first_row"]
        )
        yield from prepared_records(records, path, max_chars, bad)
        return
    with open(path, "rb") as raw:
        prefix = raw.read(piece["header_bytes"])
        raw.seek(piece["start"])
        stream = _Piece(prefix, raw, piece["stop"] - piece["start"])
        lines = bounded_lines(stream, path, LINE_CAP, first_number=piece["first_line"] - piece["header_lines"])
        yield from prepared_records(_records(lines, fmt, path, args, bad, piece["first_row"]), path, max_chars, bad)


# %% The output folder: what belongs there, the job it holds, finished shards


def shard_name(piece, fmt):
    return f"part-{piece['file']:05d}-{piece['index']:05d}.{fmt}"


def check_output_folder(output, create=True):
    """Refuse an --output that holds anything this tool did not write, or cannot be written; create it (`create`)."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {output} is a file; give a folder (new, or one this tool wrote)")
    foreign = []
    try:
        if folder.is_dir():
            # A folder or a link under one of the tool's names is not its file: a shard's name alone marks it done.
            foreign = sorted(
                p.name for p in folder.iterdir() if not OWN_NAME.fullmatch(p.name) or p.is_symlink() or not p.is_file()
            )
        elif not create:
            parent = next(p for p in folder.absolute().parents if p.exists())
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot create --output {output} (in {parent}); choose a writable folder")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".{SUMMARY_FILE}.write-test.part"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write --output {output} ({err.strerror or err}); choose a writable folder") from None
    if foreign:
        shown = ", ".join(printable(name) for name in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UserError(f"--output {output} holds files this tool did not write ({shown}); give a new or empty folder")
    return folder


def write_json_atomically(path, payload):
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_identity(run, variant):
    """sha256 over the files the run tags with (as its manifest lists them): the same run gives the same value."""
    variant, model_file = run.onnx_file(variant)
    names = ["config.json", "thresholds.json", "tokenizer.json", "onnx.json", model_file]
    digest = hashlib.sha256(json.dumps({name: run.sha256(name) for name in names}, sort_keys=True).encode())
    return digest.hexdigest(), variant


def job_settings(args):
    """The settings a job's results depend on: a resumed job must have the same, and the actors read them."""
    return {name: getattr(args, name) for name in JOB_SETTINGS}


def job_description(args, run_sha256, variant, inputs, shards):
    settings = job_settings(args)
    return {
        "format_version": JOB_FORMAT,
        "written_by": "genre_tagger.batch",
        "run_sha256": run_sha256,
        "onnx_variant": variant,
        "settings": settings,
        "inputs": inputs,
        "shards": shards,
    }


def check_or_write_job(folder, job):
    """A new folder gets job.json; a resumed one must hold the same job (run, settings, inputs), or is refused."""
    path = folder / JOB_FILE
    if not path.exists():
        if any(folder.iterdir()):
            raise UserError(f"--output {folder} holds shards but no {JOB_FILE}; give a new or empty folder")
        write_json_atomically(path, job)
        return False
    # The job this run would write, as it would write it: a job.json much larger cannot be it, and is not read whole.
    limit = 2 * len(json.dumps(job, indent=2)) + 4096
    try:
        with open(path, "rb") as handle:
            text = handle.read(limit + 1)
        if len(text) > limit:
            raise UserError(
                f"--output {folder} holds a {JOB_FILE} far larger than this job's; rerun with the same inputs and "
                "settings to resume, or give a new folder"
            )
        held = json.loads(text)
    except (OSError, ValueError, RecursionError):
        raise UserError(f"{path} is damaged; give a new --output folder") from None
    if not isinstance(held, dict) or held.get("written_by") != "genre_tagger.batch":
        raise UserError(f"{path} was not written by genre_tagger.batch; give a new --output folder")
    for key, what in (
        ("format_version", "another version of this tool"),
        ("run_sha256", "another run (or another --onnx-variant)"),
        ("onnx_variant", "another --onnx-variant"),
        ("settings", "other settings"),
        ("inputs", "other inputs (or inputs changed since)"),
        ("shards", "another cut of the inputs"),
    ):
        if held.get(key) != job[key]:
            raise UserError(
                f"--output {folder} holds a job with {what}; rerun with the same ones to resume, or give a new folder"
            )
    return True


# %% Tagging: one actor per worker, one shard per call


class ShardTagger:
    """A Ray actor: opens and verifies the run once, then tags whole shards and writes each one atomically.

    `job` (a class attribute, set by `tag_shards` on a subclass) says what to open and where to write: Ray ships
    a class with its attributes, where constructor arguments would sit in the object store.
    """

    job = None

    def __init__(self):
        from argparse import Namespace

        from genre_tagger.run import Run
        from genre_tagger.tagger import open_tagger
        from genre_tagger.textio import description_limit

        model, variant, threads, settings, self.inputs, output = self.job
        if threads == 1:
            # The tokenizer's own thread pool spans every core of the machine, where the other actors tag: at
            # one CPU an actor tokenizes on its own thread, which costs 9% less CPU per row (bench/RESULTS.md).
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.args, self.output = Namespace(**settings), Path(output)
        with Run.open(model) as run:
            self.labels = run.labels
            self.thresholds = run.thresholds_for(self.args.threshold)
            self.tagger = open_tagger(run, "onnx", variant, threads)
        self.max_chars = description_limit(self.tagger.max_length)

    def __call__(self, batch):
        shards, errors, seconds = [], [], []
        for text in batch["shard"]:
            piece = json.loads(text)
            started = time.perf_counter()
            try:
                self.tag(piece)
                errors.append("")
            except UserError as err:
                errors.append(str(err))
            shards.append(text)
            seconds.append(time.perf_counter() - started)
        return {"shard": shards, "error": errors, "seconds": seconds}

    def tag(self, piece):
        from genre_tagger.metrics import decode
        from genre_tagger.textio import CHUNK_ROWS, ResultWriter

        source = self.inputs[piece["file"]]
        try:
            changed = any(_identity(source["absolute"])[key] != source[key] for key in ("bytes", "mtime_ns"))
        except OSError:
            changed = True
        if changed:
            raise UserError(f"{source['path']} changed or went away while the job ran; rerun into a new --output")
        args, fmt = self.args, source["format"]
        name = str(self.output / shard_name(piece, args.format))
        writer = ResultWriter(name, self.labels, args.threshold, True, with_ids=True, replace=True)
        try:
            chunk = []
            for record in read_shard(source["absolute"], fmt, piece, args, self.max_chars):
                chunk.append(record)
                if len(chunk) == CHUNK_ROWS:
                    self._write(writer, chunk, source["path"], decode)
                    chunk = []
            if chunk:
                self._write(writer, chunk, source["path"], decode)
            writer.commit()
        finally:
            writer.discard()

    def _write(self, writer, chunk, path, decode):
        texts = [text for _, text, _, _ in chunk]
        ids = [ident if ident is not None else f"{path}:{number}" for number, _, _, ident in chunk]
        probabilities = self.tagger.probabilities(texts, self.args.batch_size)
        decoded = decode(probabilities, self.labels, self.thresholds, self.args.max_genres, self.args.min_genres)
        writer.write(texts, probabilities, decoded, ids=ids)


def check_address(address, named="--address "):
    """A HOST:PORT that nothing answers at is one line now: Ray itself would wait minutes before failing."""
    if address in (None, "auto"):
        return
    host, colon, port = address.split("://", 1)[-1].rpartition(":")
    if not colon or not port.isdigit():
        return  # another of Ray's address forms: ray.init says what is wrong with it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, OverflowError) as err:  # OverflowError: a port past 65535
        reason = getattr(err, "strerror", None) or first_line(err, 80)
        raise UserError(
            f"nothing answers at {named}{address} ({reason}); start the cluster there (ray start --head) "
            "or give its address"
        ) from None


def start_ray(address, threads):
    """Join --address, or start a Ray on this machine; quiet: Ray's own logs and progress bars stay off stderr."""
    import logging

    try:
        import ray
    except ImportError:
        raise UserError("the batch tool needs Ray: pip install -r requirements-batch.txt") from None
    import genre_tagger

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray.data  # noqa: F401 - configures its loggers, quietened just below

    # Ray's usage reporting, unless the caller asks for it: it would reach for the internet, and Ray Data starts
    # one more actor (a worker process, seconds of CPU) per job to collect it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ core prints a warning per actor on this stderr; at this level it prints one line instead.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    callers_path = os.environ.get("PYTHONPATH")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A Ray started here runs its workers from this environment: they import genre_tagger from where the
        # driver does. Shipping it as py_modules would cost every actor a fresh worker process (seconds each).
        # Ray's processes, started by ray.init, inherit the path; the caller's environment gets its own back.
        package_root = str(Path(genre_tagger.__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, callers_path]))
        runtime_env = None
    else:
        runtime_env = {"py_modules": [genre_tagger]}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            runtime_env=runtime_env,
        )
    except Exception as err:  # noqa: BLE001 - ray.init raises many types (connection, version, resources)
        # Ray finds a cluster's authentication token for --address auto, but not for HOST:PORT by itself.
        hint = (
            "; if the cluster uses Ray's token authentication, set RAY_AUTH_MODE=token"
            if address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ
            else ""
        )
        where = address or "this machine"
        raise UserError(f"cannot reach a Ray cluster at {where} ({first_line(err, 160)}){hint}") from None
    finally:
        if callers_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = callers_path
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < threads:
        ray.shutdown()
        raise UserError(f"the Ray cluster has {cpus} CPU(s), fewer than --threads-per-worker {threads}")
    return ray, cpus


def main(argv=None):
    args = build_parser().parse_args(argv)
    if problem := genre_count_problem(args):
        raise UserError(problem)
    from genre_tagger.run import Run, parse_threshold
    from genre_tagger.textio import description_limit

    parse_threshold(args.threshold)
    if args.address:
        check_address(args.address)
    else:
        check_address(os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS=")
    files = input_files(args.input)
    formats = [file_format(path, args.input_format) for path in files]
    model, output = Path(args.model).resolve(), Path(args.output).resolve()
    if output == model or output.is_relative_to(model):
        raise UserError(f"--output {args.output} is inside the run {args.model}; write results somewhere else")
    for path in files:
        if Path(path).resolve().is_relative_to(output):
            raise UserError(f"--input {path} is inside --output {args.output}; write results somewhere else")
    check_output_folder(args.output, create=False)
    with Run.open(model) as run:
        run.thresholds_for(args.threshold)
        run_sha256, variant = run_identity(run, args.onnx_variant)
        max_chars = description_limit(run.max_length)
    started = time.perf_counter()
    inputs, shards = [], []
    for index, (path, fmt) in enumerate(zip(files, formats)):
        inputs.append({**_identity(path), "format": fmt})
        shards.extend(plan_file(path, index, fmt, args, max_chars))
    folder = check_output_folder(args.output)
    rows, bad_rows = sum(s["rows"] for s in shards), sum(s["bad_rows"] for s in shards)
    if not rows:
        raise UserError(f"--input {args.input} has no descriptions to tag")
    job = job_description(args, run_sha256, variant, inputs, shards)
    resumed = check_or_write_job(folder, job)
    for stale in folder.glob(".part-*.part"):  # a killed job's unfinished shard: never renamed, so never finished
        stale.unlink()
    todo = [s for s in shards if not (folder / shard_name(s, args.format)).exists()]
    if resumed:
        note(f"resuming: {len(shards) - len(todo)} of {len(shards)} shards are finished")
    workers, tagged, busy, ray_start = 0, sum(s["rows"] for s in todo), 0.0, 0.0
    if todo:
        ray_started = time.perf_counter()
        ray, cpus = start_ray(args.address, args.threads_per_worker)
        ray_start = time.perf_counter() - ray_started
        workers = min(args.workers or max(1, cpus // args.threads_per_worker), len(todo))
        try:
            busy = tag_shards(ray, args, model, variant, inputs, folder, todo, workers)
        finally:
            ray.shutdown()
    seconds = time.perf_counter() - started
    cut_rows = sum(len(s["cut_rows"]) for s in shards)
    summary = {
        "rows": rows,
        "shards": len(shards),
        "bad_rows": bad_rows,
        "cut_rows": cut_rows,
        "rows_tagged_now": tagged,
        "shards_resumed": len(shards) - len(todo),
        "workers": workers,
        "threads_per_worker": args.threads_per_worker,
        "seconds": round(seconds, 3),
        "ray_start_seconds": round(ray_start, 3),
        "shard_seconds": round(busy, 3),
        "rows_per_second": round(tagged / seconds, 1) if tagged and seconds > 0 else None,
        "run_sha256": run_sha256,
    }
    write_json_atomically(folder / SUMMARY_FILE, summary)
    if cut_rows:
        note(f"{cut_rows} description(s) longer than {max_chars} characters were cut there (rows in {JOB_FILE})")
    skipped = f", {bad_rows} bad row(s) left out" if bad_rows else ""
    print(
        f"tagged {rows} rows into {len(shards)} shard(s) in {args.output}{skipped}: {tagged} now in {seconds:.1f} s "
        f"with {workers} worker(s); {SUMMARY_FILE} has the figures",
        file=sys.stderr,
    )


def tag_shards(ray, args, model, variant, inputs, folder, todo, workers):
    """Ray Data: one item per shard, tagged by a fixed pool of actors; the first failed shard is one line."""
    settings = job_settings(args)
    dataset = ray.data.from_items([{"shard": json.dumps(s)} for s in todo], override_num_blocks=len(todo))
    job = (str(model), variant, args.threads_per_worker, settings, inputs, str(folder))
    results = dataset.map_batches(
        type("ShardTagger", (ShardTagger,), {"job": job}),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=args.threads_per_worker,
    )
    busy = 0.0
    try:
        for result in results.iter_rows():
            if result["error"]:
                raise UserError(result["error"])
            busy += result["seconds"]
    except ray.exceptions.RayError as err:
        raise UserError(
            f"the Ray job failed ({first_line(err, 200)}); finished shards are kept, rerun to resume"
        ) from None
    return busy


if __name__ == "__main__":
    run_main(main, interrupted_note="finished shards are kept; rerun the same command to resume")
