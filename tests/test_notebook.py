"""notebook.ipynb is train.py as a notebook: kept in sync, committed clean, and it runs top to bottom."""

import os
import shutil

import jupytext
import nbformat
import pytest

from conftest import ROOT


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_is_train_py_and_has_no_outputs():
    committed = nbformat.read(ROOT / "notebook.ipynb", as_version=4)
    assert cells(committed) == cells(jupytext.read(ROOT / "train.py")), (
        "notebook.ipynb is out of date: jupytext --to ipynb --set-kernel python3 train.py -o notebook.ipynb"
    )
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebook.ipynb without outputs"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, imdb_csv, monkeypatch):
    from nbclient import NotebookClient

    (tmp_path / "data").mkdir()
    shutil.copy(imdb_csv, tmp_path / "data" / "IMDB-Movie-Data.csv")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(ROOT / "notebook.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "shape: (1000, 12)" in outputs
    assert "fine-tuned, default decisions" in outputs and "TF-IDF baseline" in outputs
    assert "calibration prior-temperature fitted on" in outputs
    assert "A retired hitman seeks revenge" in outputs
    assert (tmp_path / "models" / "notebook-run" / "model.safetensors").exists()
    assert (tmp_path / "models" / "notebook-run.zip").exists()
    images = sum(
        1 for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    )
    assert images >= 5  # bar chart, histogram and the saved evaluation pictures
