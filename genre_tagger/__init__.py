"""Shared pieces of genre-tagger: train.py, predict.py, the notebook and the tests import them from here.

Submodules are split by what they import, so that predict.py's ONNX path never loads torch:
- data: download, clean and validate the CSV, encode labels, split (pandas, scikit-learn)
- metrics: metrics, threshold tuning and decoding (numpy, scikit-learn)
- runs: the saved run folder, its zip and safe extraction (standard library, numpy)
- modeling: the torch Dataset, the classifier, the Trainer glue and ONNX export (torch, transformers)
- onnx_backend: fast CPU inference with onnxruntime and tokenizers (no torch)
- serving: serve.py's app: the run it serves, request schemas, the dynamic batcher (FastAPI; no torch);
  web/ holds the page it serves at /
- baseline: TF-IDF + logistic regression and most-frequent-genres baselines (scikit-learn)
- plots: the evaluation pictures of a run (matplotlib)
- export: `python -m genre_tagger.export RUN` adds an ONNX export to an existing run
"""


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line, without a traceback."""
