"""train.py under torch.distributed: 2 CPU processes (gloo) with the tiny random DistilBERT, as a user launches them.

Each run works in its own empty folder (the script is given by absolute path), so anything a rank
writes is seen: the folder must end up holding the run folder and its zip, and nothing else.
"""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, run_script
from genre_tagger import distributed

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# accelerate starts N processes through torchrun only with --multi_gpu; on a machine without GPUs they use gloo.
ACCELERATE = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
ACCELERATE += ["--mixed_precision", "no", "--dynamo_backend", "no"]
# What a user types on a machine without GPUs: accelerate starts one process, train.py restarts as torchrun.
ACCELERATE_PLAIN = [Path(sys.executable).parent / "accelerate", "launch", "--num_processes", "2"]
LIMIT, EPOCHS, BATCH = 200, 2, 16


def train_args(data, base, epochs=EPOCHS):
    return [
        ROOT / "train.py", "--data", data, "--limit", LIMIT, "--model", base, "--epochs", epochs,
        "--batch-size", BATCH, "--lr", "1e-3", "--output", "models/ddp", "--checkpoint-dir", "checkpoints",
    ]  # fmt: skip


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture(
    scope="module",
    params=[("torchrun", 1), ("accelerate", 2), ("accelerate-plain", 1)],
    ids=["torchrun", "accelerate-grad-accum-2", "accelerate-plain"],
)
def launched(request, tmp_path_factory, tiny_distilbert, imdb_csv):
    launcher, grad_accum = request.param
    work = tmp_path_factory.mktemp(launcher)
    command = {
        "torchrun": TORCHRUN,
        "accelerate": [*ACCELERATE, "--main_process_port", free_port()],
        "accelerate-plain": ACCELERATE_PLAIN,
    }[launcher]
    result = run_script(*command, *train_args(imdb_csv, tiny_distilbert), "--grad-accum", grad_accum, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        "work": work,
        "run": work / "models" / "ddp",
        "zip": work / "models" / "ddp.zip",
        "log": result.stdout,
        "grad_accum": grad_accum,
        "launcher": launcher,
    }


def test_one_complete_run_and_zip_and_nothing_else(launched):
    run, work = launched["run"], launched["work"]
    # No staging folder, no partial zip, no checkpoints, nothing a second rank wrote of its own.
    assert sorted(p.name for p in work.iterdir()) == ["models"]
    assert sorted(p.name for p in (work / "models").iterdir()) == ["ddp", "ddp.zip"]
    expected = {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "binarizer.joblib",
        "train_config.json", "metrics.json", "thresholds.json", "split.csv", "per_genre.csv", "model.onnx",
        "model.int8.onnx", "onnx.json", "plots/per_genre_f1.png", "plots/threshold_curve.png",
        "plots/precision_recall.png", "plots/cooccurrence.png",
    }  # fmt: skip
    assert expected <= set(files_under(run))
    import zipfile

    onnx = json.loads((run / "onnx.json").read_text())
    unused = {f for v, f in onnx["files"].items() if v != onnx["default"]}
    with zipfile.ZipFile(launched["zip"]) as archive:
        assert set(archive.namelist()) == set(files_under(run)) - unused


def test_world_size_and_effective_batch_are_recorded_and_printed(launched):
    config = json.loads((launched["run"] / "train_config.json").read_text())
    assert config["parallel"] == {
        "world_size": 2,
        "processes_per_machine": 2,
        "backend": "gloo",
        "batch_size_per_process": BATCH,
        "grad_accum": launched["grad_accum"],
        "effective_batch_size": 2 * BATCH * launched["grad_accum"],
    }
    assert config["machine"]["torch_threads"] == max(1, distributed.usable_cores() // 2)
    assert f"effective batch {2 * BATCH * launched['grad_accum']} rows per optimizer step" in launched["log"]


def test_the_ranks_really_shared_the_data(launched):
    # Each rank takes every other batch, so an epoch is half the optimizer steps of one process (and
    # a K-th of that with --grad-accum K): had every rank trained alone on all rows, the log would count
    # twice as many.
    metrics = json.loads((launched["run"] / "metrics.json").read_text())
    train_rows = json.loads((launched["run"] / "train_config.json").read_text())["split_sizes"]["train"]
    steps_per_epoch = math.ceil(math.ceil(math.ceil(train_rows / BATCH) / 2) / launched["grad_accum"])
    assert max(e["step"] for e in metrics["log_history"]) == EPOCHS * steps_per_epoch
    evaluations = [e for e in metrics["log_history"] if "eval_macro_f1" in e]
    assert [e["epoch"] for e in evaluations] == [float(epoch) for epoch in range(1, EPOCHS + 1)]
    for key in ("macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss"):
        assert 0 <= metrics["test"][key] <= 1


def test_only_the_main_process_printed(launched):
    log = launched["log"]
    assert log.count("saved models/ddp/ and models/ddp.zip") == 1
    assert log.count("ONNX export checked") == 1
    assert log.count("val loss") == EPOCHS  # one line per evaluation, not one per rank
    assert log.count("train 160 | validation 20 | test 20 rows") == 1


def test_predict_tags_from_the_distributed_run(launched):
    result = run_script("predict.py", "--model", launched["zip"], "--json", "A detective hunts a serial killer.")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert len(record["probabilities"]) >= 15


@pytest.mark.slow
def test_resume_under_torchrun_continues_from_the_latest_checkpoint(tiny_distilbert, imdb_csv, tmp_path):
    args = [sys.executable, *TORCHRUN, *train_args(imdb_csv, tiny_distilbert, epochs=4)]
    checkpoints = tmp_path / "checkpoints" / "ddp"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(list(map(str, args)), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Interrupt as a user or a scheduler would (torchrun passes SIGTERM on to every rank), as soon
            # as the first checkpoint is complete: trainer_state.json is the last file the Trainer writes.
            deadline = time.monotonic() + 600
            while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and first.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.05)
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode != 0, (tmp_path / "first.log").read_text()[-3000:]
    assert not (tmp_path / "models" / "ddp").exists()
    resumed_from = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))

    resumed = run_script(*TORCHRUN, *train_args(imdb_csv, tiny_distilbert, epochs=4), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "models"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["ddp", "ddp.zip"]
    metrics = json.loads((tmp_path / "models" / "ddp" / "metrics.json").read_text())
    evaluated = [e["step"] for e in metrics["log_history"] if "eval_macro_f1" in e]
    # Evaluations up to the checkpoint come from before the interruption; the resumed run printed only
    # those after it, and went on to the last epoch.
    assert resumed_from in evaluated and evaluated[-1] > resumed_from
    assert resumed.stdout.count("val loss") == len([step for step in evaluated if step > resumed_from])
    assert json.loads((tmp_path / "models" / "ddp" / "train_config.json").read_text())["parallel"]["world_size"] == 2


def test_threads_are_shared_out_among_the_processes_of_a_machine(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.threads_per_process(0) == 0  # one process: torch's own default
    assert distributed.threads_per_process(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    assert distributed.threads_per_process(0) == 4
    assert distributed.threads_per_process(2) == 2
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    assert distributed.threads_per_process(0) == 1


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world_size() == 1 and distributed.is_main_process()
    distributed.leave_unless_main(("anything", [1.0]))  # returns: nothing to leave
    assert distributed.description(16, 4)["effective_batch_size"] == 64


def test_accelerate_single_process_launch_is_pointed_out(monkeypatch, capsys):
    """When N cannot be read back from accelerate's command line, the note names the commands that work."""
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setattr(distributed, "accelerate_plain_launch_args", lambda: None)
    distributed.relaunch_if_accelerate_started_one()
    assert "--multi_gpu --num_processes N" in capsys.readouterr().out


def test_only_plain_accelerate_launch_restarts_as_torchrun(launched):
    restarted = "restarting as torchrun with 2 processes" in launched["log"]
    assert restarted == (launched["launcher"] == "accelerate-plain")
