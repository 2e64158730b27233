"""Register the project's model classes with transformers' auto classes, without importing transformers early.

`import genre_tagger` calls `register_when_transformers_loads()`: if transformers is already imported the
classes are registered at once, otherwise right after the first `import transformers`. So
`AutoModelForSequenceClassification.from_pretrained(run)` and `pipeline(..., model=run)` find the model
in this process without `trust_remote_code`, while predict.py's ONNX path, which never imports
transformers, never pays for torch.
"""

import importlib.abc
import importlib.util
import sys


def register():
    """Make AutoConfig and AutoModelForSequenceClassification know the genre-tagger model type."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from genre_tagger.hf_classifier import MODEL_TYPE, GenreTaggerConfig, GenreTaggerForSequenceClassification
    from genre_tagger.hf_ensemble import ENSEMBLE_MODEL_TYPE, GenreTaggerEnsembleConfig, GenreTaggerEnsembleRefusal

    AutoConfig.register(MODEL_TYPE, GenreTaggerConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(GenreTaggerConfig, GenreTaggerForSequenceClassification, exist_ok=True)
    # An ensemble folder has no single model: loading one through the auto classes raises a clear error.
    AutoConfig.register(ENSEMBLE_MODEL_TYPE, GenreTaggerEnsembleConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForSequenceClassification):
        auto_class.register(GenreTaggerEnsembleConfig, GenreTaggerEnsembleRefusal, exist_ok=True)


class _RegisterAfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps transformers' own loader so that `register()` runs once it has loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def load_then_register(module):
            load(module)
            try:
                register()
            except ImportError:  # transformers without torch: nothing to register with
                pass

        spec.loader.exec_module = load_then_register
        return spec


def register_when_transformers_loads():
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterTransformersImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformersImport())
