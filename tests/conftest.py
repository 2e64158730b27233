"""Shared fixtures. Tests are hermetic: no network, nothing read from ~/.cache."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before transformers is imported anywhere: never reach for the hub, never use the user's cache.
_HF_HOME = tempfile.mkdtemp(prefix="genre-tagger-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "IMDB-Movie-Data.csv"
REPO_DATA = ROOT / "data" / "IMDB-Movie-Data.csv"


# Tiers: a test that trains a model (these session fixtures, or train.py on real rows), drives a browser,
# torchrun or Jupyter is `slow`; everything else is `fast` (`pytest -m fast`, about a minute on 2 cores).
SLOW_FIXTURES = {"trained", "frozen_trained", "launched", "minilm_run", "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


def free_port():
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(result, *fragments, code=2):
    """A finished command failed the way every command must: exit `code`, one `error:` line last, no traceback."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def real_data_path():
    for path in (REPO_DATA, SHARED_DATA):
        if path.exists():
            return path
    pytest.skip("the IMDB CSV is not in data/ (see data/README.md)")


@pytest.fixture(scope="session")
def imdb_csv():
    return real_data_path()


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory):
    """A 2-layer random DistilBERT with the real uncased vocab: exercises the DistilBERT code path in seconds."""
    from transformers import AutoModel, DistilBertConfig, DistilBertTokenizerFast

    from genre_tagger.modeling import packaged_model_path

    folder = tmp_path_factory.mktemp("tiny-distilbert")
    shutil.copy(Path(packaged_model_path()) / "vocab.txt", folder / "vocab.txt")
    # from_pretrained reads vocab.txt; the constructor's vocab_file is ignored by transformers 5 (a 5-token vocab).
    DistilBertTokenizerFast.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=512)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def run_script(*args, cwd=ROOT, env=None, timeout=900):
    """Run a project script as a user would: a fresh Python process, output captured."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_distilbert, imdb_csv):
    """One tiny DistilBERT run on 200 real rows (train.py as a subprocess), shared by the tests that read a run."""
    work = tmp_path_factory.mktemp("e2e")
    output = work / "models" / "genre-classifier"
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", tiny_distilbert, "--epochs", "2",
        "--batch-size", "16", "--lr", "1e-3", "--output", output, "--checkpoint-dir", work / "checkpoints",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        "base": tiny_distilbert,
        "output": output,
        "zip": output.with_suffix(".zip"),
        "work": work,
        "log": result.stdout,
    }


@pytest.fixture(scope="session")
def frozen_trained(tmp_path_factory, tiny_distilbert, imdb_csv):
    """A `--freeze-encoder` run on the same 200 rows and seed as `trained` (so the same split), its thresholds
    tuned for precision / recall goals; read-only."""
    work = tmp_path_factory.mktemp("frozen")
    output = work / "run"
    result = run_script(
        "train.py", "--data", imdb_csv, "--limit", "200", "--model", tiny_distilbert, "--freeze-encoder",
        "--output", output, "--checkpoint-dir", work / "checkpoints",
        "--threshold-goal", "precision>=0.9", "Drama=recall>=0.5", "Comedy=f1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"base": tiny_distilbert, "output": output, "log": result.stdout}
