"""The batch tool (genre_tagger.batch): shards that cover every row once, refusals, and on a two-node Ray cluster
the same answers as predict.py and a killed job resumed with exactly one row per input row."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, free_port, one_line_error, run_script
from genre_tagger import UserError
from genre_tagger.batch import OWN_NAME, plan_file, read_shard
from genre_tagger.textio import _csv_records, _jsonl_records, _parquet_records, bounded_lines, prepared_records

MAX_CHARS = 5000


def plan_args(rows_per_shard, id_column=None, on_bad_row="fail", text_column="Description"):
    return Namespace(rows_per_shard=rows_per_shard, id_column=id_column, on_bad_row=on_bad_row, text_column=text_column)


def whole_file(path, fmt, args):
    """What predict.py's reader yields for the whole file: (number, text, id), bad rows skipped."""
    from genre_tagger.batch import _BadRows

    bad = _BadRows(args.on_bad_row)
    if fmt == "parquet":
        records = _parquet_records(str(path), args.text_column, None, args.id_column, bad)
        return [(n, t, i) for n, t, _, i in prepared_records(records, str(path), MAX_CHARS, bad)], bad.count
    with open(path, "rb") as raw:
        lines = bounded_lines(raw, str(path), 1 << 22)
        if fmt == "csv":
            records = _csv_records(lines, str(path), args.text_column, None, args.id_column, bad)
        else:
            records = _jsonl_records(lines, str(path), args.text_column, None, args.id_column, bad)
        return [(n, t, i) for n, t, _, i in prepared_records(records, str(path), MAX_CHARS, bad)], bad.count


def sharded(path, fmt, args):
    shards = plan_file(str(path), 0, fmt, args, MAX_CHARS)
    rows = [(n, t, i) for piece in shards for n, t, _, i in read_shard(str(path), fmt, piece, args, MAX_CHARS)]
    return shards, rows


descriptions = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00\r"), min_size=0, max_size=40
) | st.sampled_from(['a "quoted", word', "two\nlines", "  ", "café 🎬", "=1+1", "line\r\nbreak"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(descriptions, min_size=1, max_size=25),
    rows_per_shard=st.integers(1, 7),
    bom=st.booleans(),
    crlf=st.booleans(),
    blank_lines=st.booleans(),
    fmt=st.sampled_from(["csv", "jsonl"]),
)
def test_shards_cover_every_row_once_as_predict_reads_it(tmp_path, texts, rows_per_shard, bom, crlf, blank_lines, fmt):
    import csv
    import io

    path = tmp_path / f"in.{fmt}"
    newline = "\r\n" if crlf else "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=newline)
        writer.writerow(["Rank", "Description"])
        for i, text in enumerate(texts):
            writer.writerow([i, text])
            if blank_lines and i % 3 == 0:
                buffer.write(newline)
        body = buffer.getvalue()
    else:
        body = "".join(
            json.dumps({"Rank": i, "Description": text}) + newline + (newline if blank_lines and i % 3 == 0 else "")
            for i, text in enumerate(texts)
        )
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    args = plan_args(rows_per_shard, id_column="Rank", on_bad_row="skip")
    try:
        expected, bad = whole_file(path, fmt, args)
    except UserError as err:  # a file predict.py refuses whole is refused with the same line
        with pytest.raises(UserError, match=re.escape(str(err))):
            sharded(path, fmt, args)
        return
    shards, rows = sharded(path, fmt, args)
    assert rows == expected
    assert sum(s["rows"] for s in shards) == len(expected)
    assert sum(s["bad_rows"] for s in shards) == bad == sum(1 for t in texts if not " ".join(t.split()))
    assert all(s["rows"] == rows_per_shard for s in shards[:-1])


def test_parquet_shards_follow_row_groups_and_count_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"a film number {i}" if i % 7 else None for i in range(1, 101)]
    table = pa.table({"Description": texts, "key": [f"k{i}" for i in range(100)]})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=10)
    args = plan_args(25, id_column="key", on_bad_row="skip")
    expected, bad = whole_file(path, "parquet", args)
    shards, rows = sharded(path, "parquet", args)
    assert rows == expected and bad == 14
    assert [s["row_groups"] for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [s["first_row"] for s in shards] == [1, 31, 61, 91]
    assert sum(s["bad_rows"] for s in shards) == 14
    with pytest.raises(UserError, match=r"row 7 has no 'Description'"):
        plan_file(str(path), 0, "parquet", plan_args(25), MAX_CHARS)


def test_a_bad_row_is_named_by_file_and_row_before_any_tagging(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"Description": "a heist"}\n{"Description": ""}\nnot json\n')
    with pytest.raises(UserError, match=r"in\.jsonl: row 2 has an empty description.*--on-bad-row skip"):
        plan_file(str(path), 0, "jsonl", plan_args(10), MAX_CHARS)
    shards = plan_file(str(path), 0, "jsonl", plan_args(10, on_bad_row="skip"), MAX_CHARS)
    assert [(s["rows"], s["bad_rows"]) for s in shards] == [(1, 2)]


def test_only_the_tools_own_files_count_as_its_output():
    assert OWN_NAME.fullmatch("part-00001-00042.parquet") and OWN_NAME.fullmatch("job.json")
    assert OWN_NAME.fullmatch(".part-00001-00042.parquet.x1y2.part")
    assert not OWN_NAME.fullmatch("part-1-2.parquet") and not OWN_NAME.fullmatch("notes.txt")


def batch(*args, **kwargs):
    return run_script("-m", "genre_tagger.batch", *args, **kwargs)


def test_refusals_before_any_run_or_ray_is_opened(tmp_path):
    missing = tmp_path / "no-run"
    one_line_error(
        batch("--model", missing, "--input", tmp_path / "*.csv", "--output", tmp_path / "o"), "matches no file"
    )
    (tmp_path / "in.txt").write_text("a heist\n")
    one_line_error(
        batch("--model", missing, "--input", tmp_path / "in.txt", "--output", tmp_path / "o"),
        "give .csv, .jsonl or .parquet",
    )
    data = tmp_path / "in.csv"
    data.write_text("Description\na heist\n")
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("keep me")
    one_line_error(batch("--model", missing, "--input", data, "--output", kept), "did not write (notes.txt)")
    assert (kept / "notes.txt").read_text() == "keep me"
    one_line_error(batch("--model", missing, "--input", data, "--output", data / "sub"), "--output")
    one_line_error(batch("--model", missing, "--input", data, "--output", tmp_path / "o"), "no trained model")
    one_line_error(
        batch("--model", missing, "--input", data, "--output", tmp_path / "o", "--workers", "-1"), "--workers"
    )
    for address in (f"127.0.0.1:{free_port()}", "127.0.0.1:99999"):  # Ray itself would retry for minutes
        one_line_error(
            batch("--model", missing, "--input", data, "--output", tmp_path / "o", "--address", address),
            f"nothing answers at --address {address}",
        )
    one_line_error(
        batch("--model", missing, "--input", data, "--output", tmp_path / "o", env={"RAY_ADDRESS": "127.0.0.1:1"}),
        "nothing answers at RAY_ADDRESS=127.0.0.1:1",
    )
    assert not (tmp_path / "o").exists()


def test_refusals_that_need_the_run(tmp_path, trained):
    run = trained["output"]
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("Description\na heist\n")
    one_line_error(batch("--model", run, "--input", not_parquet, "--output", tmp_path / "o"), "not a readable Parquet")
    no_column = tmp_path / "in.csv"
    no_column.write_text("Plot\na heist\n")
    one_line_error(batch("--model", run, "--input", no_column, "--output", tmp_path / "o"), "no column 'Description'")
    one_line_error(
        batch(
            "--model",
            run,
            "--input",
            no_column,
            "--output",
            tmp_path / "o",
            "--text-column",
            "Plot",
            "--id-column",
            "key",
        ),
        "no column 'key'",
    )
    assert not (tmp_path / "o").exists()


# %% One actor, outside Ray


@pytest.mark.parametrize("threads, parallel_tokenizer", [(1, False), (2, True)])
def test_an_actor_tags_a_shard_and_tokenizes_on_its_own_cpus(
    tmp_path, monkeypatch, trained, threads, parallel_tokenizer
):
    import numpy as np
    import pandas as pd

    from genre_tagger import load_tagger
    from genre_tagger.batch import ShardTagger, _identity, build_parser, job_settings, shard_name

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    data, out = tmp_path / "rows.jsonl", tmp_path / "tagged"
    texts = [f"a heist crew plans job number {i} in a city at night" for i in range(5)]
    data.write_text("".join(json.dumps({"Description": text}) + "\n" for text in texts))
    out.mkdir()
    args = build_parser().parse_args(["--model", str(trained["output"]), "--input", str(data), "--output", str(out)])
    (shard,) = plan_file(str(data), 0, "jsonl", args, MAX_CHARS)
    job = (
        str(trained["output"]),
        "int8",
        threads,
        job_settings(args),
        [{**_identity(str(data)), "format": "jsonl"}],
        str(out),
    )
    actor = type("OneShardTagger", (ShardTagger,), {"job": job})()
    # At one CPU the tokenizer's own thread pool, which would span every core of the machine, stays off.
    assert (os.environ.get("TOKENIZERS_PARALLELISM") != "false") is parallel_tokenizer
    assert actor({"shard": [json.dumps(shard)]})["error"] == [""]
    tagged = pd.read_parquet(out / shard_name(shard, "parquet"))
    assert [i.rsplit(":", 1)[1] for i in tagged["id"]] == ["1", "2", "3", "4", "5"]
    tagger = load_tagger(trained["output"])
    np.testing.assert_allclose(tagged[tagger.labels].to_numpy(), tagger.probabilities(texts), atol=1e-6)


# %% A job that starts its own Ray on this machine


def test_a_job_without_an_address_starts_its_own_ray_and_gives_predict_pys_answers(tmp_path, trained, imdb_csv):
    import pandas as pd

    pytest.importorskip("ray")
    data = tmp_path / "rows.csv"
    pd.read_csv(imdb_csv).head(60).to_csv(data, index=False)
    out = tmp_path / "tagged"
    # The driver imports genre_tagger from a path that only its own sys.path names (a notebook's, say): the
    # workers of the Ray it starts must import the same code.
    argv = ["--model", str(trained["output"]), "--input", str(data), "--output", str(out), "--id-column", "Rank",
            "--rows-per-shard", "20", "--workers", "2"]  # fmt: skip
    driver = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from genre_tagger.batch import main; main({argv!r})"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    tagged = read_shards(out)
    expected = predict_parquet(trained["output"], data, tmp_path / "predict.parquet")
    expected["id"] = pd.read_csv(data)["Rank"].astype(str)
    joined = tagged.merge(expected, on="id", suffixes=("", "_predict"))
    assert len(joined) == len(tagged) == 60
    assert all(list(a) == list(b) for a, b in zip(joined["genres"], joined["genres_predict"]))
    assert json.loads((out / "summary.json").read_text())["workers"] == 2


# %% On a two-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this machine)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes.address
    ray.shutdown()
    nodes.shutdown()


def read_shards(folder):
    import pandas as pd

    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def predict_parquet(run, data, output, *extra):
    import pandas as pd

    result = run_script(
        "predict.py", "--model", run, "--input", data, "--output", output, "--label-column", "none", *extra
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_parquet(output)


def test_two_nodes_give_predict_pys_answers_joined_on_id(tmp_path, cluster, trained, imdb_csv):
    import numpy as np
    import pandas as pd

    run = trained["output"]
    for variant in ("fp32", "int8"):
        out = tmp_path / f"tagged-{variant}"
        result = batch(
            "--model", run, "--input", imdb_csv, "--output", out, "--address", cluster, "--id-column", "Rank",
            "--rows-per-shard", "250", "--onnx-variant", variant,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rows"] == 1000 and summary["shards"] == 4 and summary["workers"] == 2
        tagged = read_shards(out)
        expected = predict_parquet(run, imdb_csv, tmp_path / f"predict-{variant}.parquet", "--onnx-variant", variant)
        expected["id"] = pd.read_csv(imdb_csv)["Rank"].astype(str)
        assert tagged["id"].is_unique and len(tagged) == 1000
        joined = tagged.merge(expected, on="id", suffixes=("", "_predict"))
        assert len(joined) == 1000
        assert (joined["description"] == joined["description_predict"]).all()
        labels = [c for c in expected.columns if c not in ("id", "description", "genres")]
        difference = np.abs(joined[labels].to_numpy() - joined[[f"{c}_predict" for c in labels]].to_numpy())
        # fp32: float rounding; int8 rowwise: a rounding difference upstream can move one int8 step (README)
        assert difference.max() <= (1e-6 if variant == "fp32" else 1e-3), (variant, difference.max())
        assert all(list(a) == list(b) for a, b in zip(joined["genres"], joined["genres_predict"]))


def test_a_killed_job_resumes_with_one_row_per_input_row(tmp_path, cluster, trained, imdb_csv):
    run, out = trained["output"], tmp_path / "tagged"
    command = [
        sys.executable, "-m", "genre_tagger.batch", "--model", str(run), "--input", str(imdb_csv),
        "--output", str(out), "--address", cluster, "--rows-per-shard", "40", "--format", "jsonl",
    ]  # fmt: skip
    job = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while len(list(out.glob("part-*.jsonl"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, job.stderr.read()[-3000:]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    finished = sorted(out.glob("part-*.jsonl"))
    assert 3 <= len(finished) < 25
    for part in finished:  # a shard there is whole: every line a JSON object with an id
        assert all("id" in json.loads(line) for line in part.read_text().splitlines())
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    ids = [
        json.loads(line)["id"] for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 1000
    assert not list(out.glob(".*.part"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == 25 and summary["shards_resumed"] == len(finished)
    other = [c if c != "jsonl" else "csv" for c in command]
    one_line_error(subprocess.run(other, cwd=ROOT, capture_output=True, text=True), "other settings")


def test_skipped_bad_rows_are_counted(tmp_path, cluster, trained):
    data = tmp_path / "in.jsonl"
    lines = [json.dumps({"key": i, "Description": f"A heist crew plans job {i}."}) for i in range(30)]
    lines[3], lines[10], lines[20] = "not json", json.dumps({"key": 99}), json.dumps({"key": 5, "Description": " "})
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tagged"
    common = [
        "--model",
        trained["output"],
        "--input",
        data,
        "--output",
        out,
        "--address",
        cluster,
        "--id-column",
        "key",
    ]
    one_line_error(batch(*common), "line 4 is not JSON")
    assert not out.exists()
    result = batch(*common, "--on-bad-row", "skip", "--rows-per-shard", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 27 and summary["bad_rows"] == 3
    assert sorted(read_shards(out)["id"], key=int) == [str(i) for i in range(30) if i not in (3, 10, 20)]
