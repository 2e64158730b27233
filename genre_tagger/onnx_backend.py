"""Fast CPU inference from a run's ONNX export, with onnxruntime and tokenizers: torch is never imported."""

import os
import threading
from pathlib import Path

import numpy as np

from genre_tagger import UserError
from genre_tagger.common import first_line

# A description whose tokens are mostly unknown to the vocabulary (emoji, a script the model never saw)
# gets probabilities that say nothing about it: predict.py warns above this share.
UNKNOWN_TOKEN_WARNING_SHARE = 0.5


def load_tokenizer(source, max_length, origin):
    """A fast tokenizer truncating at `max_length`, without padding, from tokenizer.json's bytes or its path."""
    from tokenizers import Tokenizer

    try:
        if isinstance(source, bytes):
            tokenizer = Tokenizer.from_str(source.decode("utf-8"))
        else:
            tokenizer = Tokenizer.from_file(str(source))
    except Exception as err:  # the tokenizers library raises a bare Exception for a damaged file
        raise UserError(f"{origin}: tokenizer.json is damaged ({type(err).__name__}); re-create the run") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    try:  # a tokenizer.json that loads can still be unable to tokenize (an empty vocabulary, no [UNK] token)
        tokenizer.encode("A detective hunts a killer in the rain.")
    except Exception as err:  # the tokenizers library raises a bare Exception
        raise UserError(
            f"{origin}: tokenizer.json cannot tokenize text ({first_line(err, 120)}); re-create the run"
        ) from None
    return tokenizer


def run_tokenizer(run):
    """The run's own tokenizer (tokenizer.json, as verified on open), truncating at the run's token limit."""
    if not run.has("tokenizer.json"):
        raise UserError(f"{run.origin} has no tokenizer.json; re-create the run with train.py")
    return load_tokenizer(run.read("tokenizer.json"), run.max_length, run.origin)


def unknown_token_shares(tokenizer, texts):
    """Per text, the share of its (non-special) tokens that the vocabulary maps to the unknown token."""
    unknown = getattr(tokenizer.model, "unk_token", None)
    unknown_id = tokenizer.token_to_id(unknown) if unknown else None
    shares = []
    for encoding in tokenizer.encode_batch(list(texts)):
        real = [i for i, special in zip(encoding.ids, encoding.special_tokens_mask) if not special]
        shares.append(sum(i == unknown_id for i in real) / len(real) if real and unknown_id is not None else 0.0)
    return np.array(shares)


def _identity(path):
    """What tells a file from one written over it or renamed onto its name; None once it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class OnnxTagger:
    """Probabilities per genre for a list of texts, from an ONNX graph and a tokenizer.

    `OnnxTagger.from_run(run)` is the usual way in: the graph onnx.json names, hashed against the manifest.
    """

    def __init__(
        self, model_path, tokenizer, labels, origin, variant="fp32", threads=0, spinning=True, file_outlives_us=False
    ):
        self.variant, self.labels, self.origin = variant, labels, origin
        self.model_path, self.model_file = model_path, model_path.name
        # `threads` single-thread sessions, each running whole batches, side by side: on 2 cores this tags
        # 1.4-1.6x more per second than one session with 2 threads (bench/RESULTS.md), whose many small
        # operators pay a thread synchronisation each. The first is built now, the others on the first call
        # with more than one batch, so a one-description start pays for one.
        self.workers = threads or len(os.sched_getaffinity(0))
        self._growing = threading.Lock()
        self.spinning = spinning
        # The later sessions are built from the file where it stays (a run folder); from its bytes, read now,
        # where it does not (a zip's extracted copy is gone once the run is closed). Bytes held until then
        # double the model's memory, so only the second case pays for them.
        if file_outlives_us:
            self._model_source, self._model_stat = str(model_path), _identity(model_path)
        else:
            try:
                self._model_source = model_path.read_bytes()
            except OSError as err:
                raise UserError(
                    f"{origin}: {model_path.name} cannot be read ({err.strerror}); re-create the run"
                ) from None
        self.sessions = [self._session()]
        self._drop_source_when_built()
        inputs = sorted(i.name for i in self.sessions[0].get_inputs())
        outputs = self.sessions[0].get_outputs()
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if (
            inputs != ["attention_mask", "input_ids"]
            or len(outputs) != 1
            or (isinstance(width, int) and width != len(labels))
        ):
            raise UserError(
                f"{origin}: {model_path.name} does not fit the run (its inputs/outputs differ from {len(labels)} "
                "genres); re-create the run with train.py"
            )
        self.tokenizer = tokenizer
        self.tokenizers = [tokenizer]  # what the model reads with (explain.py asks every backend for them)
        self.max_length = tokenizer.truncation["max_length"]

    @property
    def session(self):
        return self.sessions[0]

    def _drop_source_when_built(self):
        if len(self.sessions) >= self.workers:
            self._model_source = None

    def _session(self):
        import onnxruntime

        if isinstance(self._model_source, str) and _identity(Path(self._model_source)) != self._model_stat:
            raise UserError(
                f"{self.origin}: {self.model_file} changed while it was in use (was the run rewritten?); "
                "start again to use the new run"
            )

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # its warnings would interleave with ours; failures raise
        if not self.spinning:  # idle threads sleep instead of busy-waiting: better where the cores are shared
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(self._model_source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise UserError(
                f"{self.origin}: {self.model_file} cannot be loaded ({first_line(err, 200)}); "
                "re-create the run with train.py"
            ) from None
        return session

    @classmethod
    def from_run(cls, run, variant=None, threads=0, spinning=True):
        variant, model_file = run.onnx_file(variant)
        path = run.verified_path(model_file)
        tokenizer = run_tokenizer(run)
        return cls(path, tokenizer, run.labels, run.origin, variant, threads, spinning, not run.removed_on_close)

    def unknown_token_shares(self, texts):
        return unknown_token_shares(self.tokenizer, texts)

    def probabilities(self, texts, batch_size=32):
        """Shape (len(texts), genres), in the order of `texts`; batches rows of similar length together and runs
        the batches on `threads` sessions at once."""
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        except Exception as err:  # the tokenizers library raises a bare Exception (or TypeError for odd text)
            raise UserError(f"{self.origin}: the tokenizer failed ({first_line(err, 120)}); check the text") from None
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        outputs = np.zeros((len(encodings), len(self.labels)), dtype=np.float32)
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        workers = min(self.workers, len(batches))
        if workers <= 1:
            for batch in batches:
                outputs[batch] = self._run(self.sessions[0], encodings, lengths, batch)
            return outputs
        with self._growing:  # serve.py tags and explains on two threads: the source must outlast every build
            while len(self.sessions) < workers:
                self.sessions.append(self._session())
            self._drop_source_when_built()
        self._run_side_by_side(self.sessions[:workers], encodings, lengths, batches, outputs)
        return outputs

    def _run_side_by_side(self, sessions, encodings, lengths, batches, outputs):
        """Each session in its own thread takes the next batch until none is left (onnxruntime releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        pending, lock, stop = iter(batches), threading.Lock(), threading.Event()

        def work(session):
            while not stop.is_set():
                with lock:
                    batch = next(pending, None)
                if batch is None:
                    return
                outputs[batch] = self._run(session, encodings, lengths, batch)

        with ThreadPoolExecutor(len(sessions)) as pool:
            futures = [pool.submit(work, session) for session in sessions]
            try:
                for future in futures:
                    future.result()
            finally:
                stop.set()  # an error or Ctrl-C here: the other sessions stop after their current batch

    def _run(self, session, encodings, lengths, batch):
        width = int(lengths[batch].max())
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, i in enumerate(batch):
            input_ids[row, : lengths[i]] = encodings[i].ids
            attention_mask[row, : lengths[i]] = 1
        try:
            (probabilities,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        except Exception as err:  # onnxruntime's own exception types
            raise UserError(
                f"{self.origin}: the ONNX model failed to run ({type(err).__name__}); re-create the run"
            ) from None
        if probabilities.shape != (len(batch), len(self.labels)) or not (
            np.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
        ):
            raise UserError(
                f"{self.origin}: the ONNX model's output does not fit the run's {len(self.labels)} genres; "
                "re-create the run with train.py"
            )
        return probabilities
