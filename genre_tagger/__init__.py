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
- hf_classifier: the classifier as a Hugging Face PreTrainedModel and its config (torch, transformers);
  save_pretrained copies this file into each run, so `trust_remote_code=True` loads a run anywhere
- auto: registers those classes with transformers' auto classes once transformers is imported
- tagger: `load_tagger(path)`, the one way to load a run in Python (ONNX or torch backend)
- convert: `python -m genre_tagger.convert RUN` rewrites a run saved before the PreTrainedModel change
"""


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line, without a traceback."""


from genre_tagger.auto import register_when_transformers_loads  # noqa: E402

register_when_transformers_loads()


def load_tagger(path="models/genre-classifier", backend="auto", variant=None, threads=0):
    """Open a run folder or zip and return a Tagger (`.labels`, `.probabilities(texts)`, `.tag(texts)`).

    See genre_tagger.tagger.load_tagger; imported on call so that `import genre_tagger` stays light.
    """
    from genre_tagger.tagger import load_tagger as load

    return load(path, backend=backend, variant=variant, threads=threads)
