"""The README's dev install gives a working `jupyter lab`, whose python3 kernel imports the project."""

import subprocess
import sys
from pathlib import Path

import nbformat

from conftest import ROOT


def test_jupyter_lab_is_installed_in_this_environment():
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), "jupyter is missing: pip install -r requirements-dev.txt"
    result = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().split(".")[0] == "4"


def test_the_notebook_kernel_imports_the_project():
    from nbclient import NotebookClient

    committed = nbformat.read(ROOT / "notebook.ipynb", as_version=4)
    kernel = committed.metadata["kernelspec"]["name"]
    assert kernel == "python3"
    probe = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import sys, genre_tagger\nfrom genre_tagger import load_tagger\nprint(sys.prefix, genre_tagger.__file__)"
            )
        ]
    )
    # Jupyter starts a notebook's kernel in the notebook's folder: the repository root.
    NotebookClient(probe, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(ROOT)}}).execute()
    prefix, module = probe.cells[0].outputs[0]["text"].split()
    assert prefix == sys.prefix  # the kernel runs in the environment jupyter was installed in
    assert Path(module).resolve().parent == (ROOT / "genre_tagger").resolve()
