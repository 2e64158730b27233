"""One way to load a run in Python: `load_tagger(path)` opens a run folder or its zip and tags descriptions.

    from genre_tagger import load_tagger

    tagger = load_tagger("models/genre-classifier.zip")          # backend="auto": ONNX when the run has it
    tagger.tag(["A retired hitman seeks revenge on the gangsters who killed his dog."])
    # [[('Crime', p), ('Drama', p), ...]]: the run's default decisions, highest first; p is calibrated
    tagger.probabilities(texts)                                 # array (len(texts), len(tagger.labels))
    tagger.explain(texts)                                       # per tagged genre, the words behind it

The ONNX backend runs on onnxruntime + tokenizers and never imports torch or transformers; the torch
backend loads the run's PreTrainedModel. Labels come from the run's config.json (`id2label`); nothing
is unpickled to predict (binarizer.joblib stays in the run for whoever wants the fitted binarizer).
predict.py and serve.py use `open_tagger` from here. An ensemble run (`python -m genre_tagger.ensemble`)
opens as an `EnsembleTagger`: each member on its own ONNX export, their probabilities averaged.
"""

import os
from pathlib import Path

import numpy as np

from genre_tagger import UserError
from genre_tagger.common import first_line, note
from genre_tagger.metrics import decode
from genre_tagger.run import DEFAULT_RUN, Run

BACKENDS = ("auto", "onnx", "torch")


class TorchTagger:
    """PyTorch backend: the run's own loader, for runs without an ONNX export or on request.

    Labels come from config.json; binarizer.joblib (a pickle) is never loaded here.
    """

    def __init__(self, run, threads=0):
        import torch

        from genre_tagger.modeling import load_classifier
        from genre_tagger.onnx_backend import run_tokenizer

        if threads:
            torch.set_num_threads(threads)
        run.verified_path("model.safetensors")
        self.max_length = run.max_length
        self.check_tokenizer = run_tokenizer(run)
        self.tokenizers = [self.check_tokenizer]
        try:
            self.model, self.tokenizer = load_classifier(run.folder, run.config)
        except Exception as err:  # safetensors, torch and transformers each raise their own types for a damaged file
            raise UserError(
                f"{run.origin}: the PyTorch model cannot be loaded ({first_line(err, 200)}); re-create the run"
            ) from None
        if self.model.classifier.out_features != len(run.labels):
            raise UserError(
                f"{run.origin}: the model's outputs do not match the genres in config.json; re-create the run"
            )

    def unknown_token_shares(self, texts):
        from genre_tagger.onnx_backend import unknown_token_shares

        return unknown_token_shares(self.check_tokenizer, texts)

    def probabilities(self, texts, batch_size=32):
        from genre_tagger.modeling import predict_probabilities

        try:
            return predict_probabilities(self.model, self.tokenizer, texts, self.max_length, batch_size)
        except (RuntimeError, IndexError, ValueError) as err:  # e.g. a token limit past the model's positions
            raise UserError(f"the PyTorch model failed to run ({first_line(err, 160)}); re-create the run") from None


class EnsembleTagger:
    """Weighted mean of the members' uncalibrated probabilities, then the ensemble's own calibration.

    Each member runs its default ONNX export, whose outputs carry the member's calibration (folded into its
    weights); that map is undone first, so the average is the one the ensemble's calibration was fitted on.
    """

    def __init__(self, run, backend="auto", variant=None, threads=0, spinning=True):
        from genre_tagger.onnx_backend import OnnxTagger

        if backend == "torch" or variant is not None:
            raise UserError(
                f"{run.origin} is an ensemble: it runs each member's default ONNX model; drop --backend torch / --onnx-variant"
            )
        self.labels = run.labels
        self.members = [OnnxTagger.from_run(member, threads=threads, spinning=spinning) for member, _ in run.members]
        self.member_calibrations = [member.calibration for member, _ in run.members]
        self.calibration = run.ensemble_calibration
        weights = np.array([weight for _, weight in run.members])
        self.weights = weights / weights.sum()
        self.variant = "+".join(m.variant for m in self.members)
        self.tokenizers = [m.tokenizer for m in self.members]
        self.max_length = run.max_length

    def unknown_token_shares(self, texts):
        # The members' vocabularies differ: warn when any of them sees mostly unknown tokens.
        return np.max([m.unknown_token_shares(texts) for m in self.members], axis=0)

    def uncalibrated_probabilities(self, texts, batch_size=32):
        """The weighted mean of the members' probabilities, each with its own calibration undone."""
        from genre_tagger.calibration import undo

        texts = list(texts)
        return sum(
            w * undo(m.probabilities(texts, batch_size), calibration)
            for w, m, calibration in zip(self.weights, self.members, self.member_calibrations)
        )

    def probabilities(self, texts, batch_size=32):
        from genre_tagger.calibration import apply_to_probabilities

        averaged = self.uncalibrated_probabilities(texts, batch_size)
        if self.calibration is not None:
            averaged = apply_to_probabilities(averaged, self.calibration)
        return averaged.astype(np.float32)


def open_tagger(run, backend="auto", variant=None, threads=0, spinning=True):
    """The backend that computes probabilities for an opened `Run` (predict.py's and serve.py's entry point).

    spinning=False lets onnxruntime's idle threads sleep (serve.py, whose cores are shared with HTTP).
    """
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if run.is_ensemble:
        return EnsembleTagger(run, backend, variant, threads, spinning)
    if backend == "onnx" or (backend == "auto" and run.onnx is not None):
        from genre_tagger.onnx_backend import OnnxTagger

        return OnnxTagger.from_run(run, variant=variant, threads=threads, spinning=spinning)
    if variant is not None:
        raise UserError("--onnx-variant goes with the ONNX backend; drop it with --backend torch")
    if backend == "auto":
        note(
            f"{run.origin} has no ONNX export, so the PyTorch backend runs (slower to start); "
            "add one with python -m genre_tagger.export RUN_FOLDER"
        )
    return TorchTagger(run, threads=threads)


def _checked_texts(texts):
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise ValueError(f"texts must be a str or a list of str, not {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if isinstance(text, str) and ("\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)):
            raise ValueError(f"text {i} holds a NUL character or a lone surrogate; give valid Unicode text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, not a str")
        if not text.strip():
            raise ValueError(f"text {i} is empty; give some text to tag")
    return texts


def _check_genre_counts(top_k, min_genres):
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a whole number of at least 1, not {top_k!r}")
    if isinstance(min_genres, bool) or not isinstance(min_genres, int) or min_genres < 0:
        raise ValueError(f"min_genres must be a whole number of at least 0, not {min_genres!r}")
    if top_k is not None and min_genres > top_k:
        raise ValueError(f"min_genres ({min_genres}) must not exceed top_k ({top_k})")


class Tagger:
    """A loaded run: `.labels`, `.probabilities(texts)` and `.tag(texts, threshold=...)`."""

    def __init__(self, backend, run, source):
        self._backend = backend
        self.labels = run.labels
        self.backend = {TorchTagger: "torch", EnsembleTagger: "ensemble"}.get(type(backend), "onnx")
        self.saved_thresholds = run.thresholds
        self.max_length = run.max_length
        self.source = source

    @property
    def tokenizers(self):
        """The tokenizers the model reads with (explain.py finds what a long text's model saw)."""
        return getattr(self._backend, "tokenizers", [])

    def __repr__(self):
        return f"Tagger({str(self.source)!r}, backend={self.backend!r}, {len(self.labels)} genres)"

    def probabilities(self, texts, batch_size=32):
        """Probability of every genre (columns in `.labels` order) for each text; a str counts as one text."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive whole number, not {batch_size!r}")
        texts = _checked_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._backend.probabilities(texts, batch_size)

    def thresholds(self, threshold="default"):
        """'default' (the run's decisions), a number in (0, 1), 'tuned' (per genre, for train.py's
        --threshold-goal, on validation) or 'tuned-global'."""
        from genre_tagger.run import thresholds_from

        try:
            return thresholds_from(self.saved_thresholds, self.labels, threshold, flag="threshold")
        except UserError as err:
            raise ValueError(str(err)) from None

    def tag(self, texts, threshold="default", top_k=None, batch_size=32, min_genres=0):
        """For each text, [(genre, probability), ...] at or above the threshold, highest first: at most `top_k`
        (max genres), topped up to `min_genres` with the most probable genres below it."""
        _check_genre_counts(top_k, min_genres)
        thresholds = self.thresholds(threshold)
        return decode(self.probabilities(texts, batch_size), self.labels, thresholds, top_k, min_genres)

    def explain(self, texts, threshold="default", top_k=None, words=5, min_genres=0):
        """Per text, which words pushed each tagged genre up or down (leave-one-word-out; genre_tagger.explain).

        Returns [{"truncated": bool, "genres": [{"genre", "probability", "up", "down"}, ...]}, ...]; each word is
        {"word", "start", "end", "score"} with offsets into the text. `words`: at most this many up and down.
        """
        from genre_tagger.explain import explain

        _check_genre_counts(top_k, min_genres)
        if isinstance(words, bool) or not isinstance(words, int) or words < 1:
            raise ValueError(f"words must be a whole number of at least 1, not {words!r}")
        thresholds = self.thresholds(threshold)
        texts = _checked_texts(texts)
        probabilities = self.probabilities(texts)
        return explain(self, texts, thresholds, top_k, words, probabilities=probabilities, min_genres=min_genres)


def load_tagger(path=DEFAULT_RUN, backend="auto", variant=None, threads=0):
    """Open a run folder or its .zip written by train.py and return a `Tagger`.

    backend: "auto" (ONNX when the run has an export, else torch), "onnx" or "torch". variant: the ONNX
    file, "int8" or "fp32" (default: the one train.py chose). threads: CPU threads (0 = all cores).
    A zip is extracted to a temporary folder that is gone once the model is loaded.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a run folder or .zip (a str or Path), not {type(path).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {backend!r}")
    if variant not in (None, "int8", "fp32"):
        raise ValueError(f"variant must be None, 'int8' or 'fp32', not {variant!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be 0 (all cores) or a positive whole number, not {threads!r}")
    with Run.open(path) as run:
        return Tagger(open_tagger(run, backend, variant, threads), run, Path(path))
