"""One way to load a run in Python: `load_tagger(path)` opens a run folder or its zip and tags descriptions.

    from genre_tagger import load_tagger

    tagger = load_tagger("models/genre-classifier.zip")          # backend="auto": ONNX when the run has it
    tagger.tag(["A retired hitman seeks revenge on the gangsters who killed his dog."])
    # [[('Crime', p), ('Drama', p), ...]]: genres at or above 0.3, highest first
    tagger.probabilities(texts)                                 # array (len(texts), len(tagger.labels))

The ONNX backend runs on onnxruntime + tokenizers and never imports torch or transformers; the torch
backend loads the run's PreTrainedModel. Labels come from the run's config.json (`id2label`); nothing
is unpickled to predict (binarizer.joblib stays in the run for whoever wants the fitted binarizer).
predict.py uses `open_tagger` from here. An ensemble run (`python -m genre_tagger.ensemble`) opens as
an `EnsembleTagger`: each member on its own ONNX export, their probabilities averaged.
"""

import math
from pathlib import Path, PurePosixPath

import numpy as np

from genre_tagger import UserError
from genre_tagger.metrics import DEFAULT_THRESHOLD, decode
from genre_tagger.runs import (
    DEFAULT_RUN,
    ENSEMBLE_FILE,
    OpenRun,
    check_consistency,
    is_ensemble,
    labels_of,
    note,
    read_run_json,
    thresholds_from,
    verify_manifest,
)

BACKENDS = ("auto", "onnx", "torch")


class TorchTagger:
    """PyTorch backend: the run's own loader, for runs without an ONNX export or on request.

    Labels come from config.json; binarizer.joblib (a pickle) is never loaded here.
    """

    def __init__(self, folder, threads=0, origin=None):
        import torch

        from genre_tagger.modeling import load_classifier
        from genre_tagger.onnx_backend import load_tokenizer
        from genre_tagger.runs import verify_files

        if threads:
            torch.set_num_threads(threads)
        origin = origin or folder
        verify_files(folder, ["model.safetensors"], origin)
        self.max_length = read_run_json(folder, "train_config.json", origin).get("settings", {}).get("max_length")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise UserError(f"{origin}: train_config.json has no max_length setting; re-create the run with train.py")
        self.check_tokenizer = load_tokenizer(folder, self.max_length, origin)
        try:
            self.model, self.tokenizer = load_classifier(folder)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"{origin}: the PyTorch model cannot be loaded ({first}); re-create the run") from None
        if self.model.classifier.out_features != len(labels_of(folder, origin)):
            raise UserError(f"{origin}: the model's outputs do not match the genres in config.json; re-create the run")

    def unknown_token_shares(self, texts):
        from genre_tagger.onnx_backend import unknown_token_shares

        return unknown_token_shares(self.check_tokenizer, texts)

    def probabilities(self, texts, batch_size=32):
        from genre_tagger.modeling import predict_probabilities

        return predict_probabilities(self.model, self.tokenizer, texts, self.max_length, batch_size)


def ensemble_members(folder, origin=None):
    """[(member folder, weight)] from an ensemble's ensemble.json, checked: inside the run, weights positive."""
    origin = origin or folder
    spec = read_run_json(folder, ENSEMBLE_FILE, origin)
    members = spec.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise UserError(
            f"{origin}: {ENSEMBLE_FILE} lists no members; re-create it with python -m genre_tagger.ensemble"
        )
    found = []
    for member in members:
        where = member.get("folder") if isinstance(member, dict) else None
        weight = member.get("weight") if isinstance(member, dict) else None
        parts = PurePosixPath(where).parts if isinstance(where, str) else ()
        if len(parts) != 2 or parts[0] != "members" or not parts[1].isdigit():
            raise UserError(f"{origin}: {ENSEMBLE_FILE} names a member outside members/; refusing it")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
            raise UserError(f"{origin}: {ENSEMBLE_FILE} gives a member a weight that is not a positive number")
        found.append((Path(folder) / where, float(weight)))
    return found


class EnsembleTagger:
    """Weighted mean of the members' probabilities; each member is opened like a run, manifest checks included."""

    def __init__(self, folder, backend="auto", variant=None, threads=0, origin=None, spinning=True):
        from genre_tagger.onnx_backend import OnnxTagger

        origin = origin or folder
        if backend == "torch" or variant is not None:
            raise UserError(
                f"{origin} is an ensemble: it runs each member's default ONNX model; drop --backend torch / --onnx-variant"
            )
        self.labels = labels_of(folder, origin)
        self.members, weights = [], []
        for member, weight in ensemble_members(folder, origin):
            where = f"{origin} ({member.parent.name}/{member.name})"
            if not verify_manifest(member, where):
                raise UserError(
                    f"{where} has no manifest.json; re-create the ensemble with python -m genre_tagger.ensemble"
                )
            if check_consistency(member, where) != self.labels:
                raise UserError(f"{where} tags other genres than the ensemble; re-create the ensemble")
            if not (member / "onnx.json").is_file():
                raise UserError(f"{where} has no ONNX export; re-create the ensemble")
            self.members.append(OnnxTagger(member, threads=threads, origin=where, spinning=spinning))
            weights.append(weight)
        self.weights = np.array(weights) / sum(weights)
        self.variant = "+".join(m.variant for m in self.members)
        self.max_length = max(m.tokenizer.truncation["max_length"] for m in self.members)

    def unknown_token_shares(self, texts):
        # The members' vocabularies differ: warn when any of them sees mostly unknown tokens.
        return np.max([m.unknown_token_shares(texts) for m in self.members], axis=0)

    def probabilities(self, texts, batch_size=32):
        texts = list(texts)
        return sum(w * m.probabilities(texts, batch_size) for w, m in zip(self.weights, self.members)).astype(
            np.float32
        )


def open_tagger(folder, backend, variant, threads, origin=None, spinning=True):
    """The backend that computes probabilities for an opened run folder (predict.py's and serve.py's entry point).

    spinning=False lets onnxruntime's idle threads sleep (serve.py, whose cores are shared with HTTP).
    """
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if is_ensemble(folder):
        return EnsembleTagger(folder, backend, variant, threads, origin, spinning)
    has_onnx = (Path(folder) / "onnx.json").exists()
    if backend == "onnx" and not has_onnx:
        raise UserError(f"{origin or folder} has no ONNX export; run: python -m genre_tagger.export RUN_FOLDER")
    if backend == "onnx" or (backend == "auto" and has_onnx):
        from genre_tagger.onnx_backend import OnnxTagger

        return OnnxTagger(folder, variant=variant, threads=threads, origin=origin, spinning=spinning)
    if backend == "auto":
        note(
            f"{origin or folder} has no ONNX export, so the PyTorch backend runs (slower to start); "
            "add one with python -m genre_tagger.export RUN_FOLDER"
        )
    return TorchTagger(folder, threads=threads, origin=origin)


class Tagger:
    """A loaded run: `.labels`, `.probabilities(texts)` and `.tag(texts, threshold=...)`."""

    def __init__(self, backend, labels, saved_thresholds, source):
        self._backend = backend
        self.labels = labels
        self.backend = {TorchTagger: "torch", EnsembleTagger: "ensemble"}.get(type(backend), "onnx")
        self.saved_thresholds = saved_thresholds
        self.source = source

    def __repr__(self):
        return f"Tagger({str(self.source)!r}, backend={self.backend!r}, {len(self.labels)} genres)"

    def probabilities(self, texts, batch_size=32):
        """Probability of every genre (columns in `.labels` order) for each text; a str counts as one text."""
        return self._backend.probabilities([texts] if isinstance(texts, str) else list(texts), batch_size)

    def thresholds(self, threshold=DEFAULT_THRESHOLD):
        """A number in (0, 1), 'tuned' (per genre, tuned on validation by train.py) or 'tuned-global'."""
        try:
            return thresholds_from(self.saved_thresholds, self.labels, threshold)
        except UserError as err:
            raise ValueError(str(err).replace("--threshold", "threshold")) from None

    def tag(self, texts, threshold=DEFAULT_THRESHOLD, top_k=None, batch_size=32):
        """For each text, [(genre, probability), ...] at or above the threshold, highest first (at most `top_k`)."""
        thresholds = self.thresholds(threshold)
        return decode(self.probabilities(texts, batch_size), self.labels, thresholds, top_k)


def load_tagger(path=DEFAULT_RUN, backend="auto", variant=None, threads=0):
    """Open a run folder or its .zip written by train.py and return a `Tagger`.

    backend: "auto" (ONNX when the run has an export, else torch), "onnx" or "torch". variant: the ONNX
    file, "int8" or "fp32" (default: the one train.py chose). threads: CPU threads (0 = all cores).
    A zip is extracted to a temporary folder that is gone once the model is loaded.
    """
    opened = OpenRun(path)
    with opened as folder:
        labels = labels_of(folder)
        saved_thresholds = read_run_json(folder, "thresholds.json")
        return Tagger(
            open_tagger(folder, backend, variant, threads, opened.origin), labels, saved_thresholds, Path(path)
        )
