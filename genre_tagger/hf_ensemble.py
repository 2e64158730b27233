"""An ensemble run has no single model: Hugging Face's auto classes refuse it with one clear line.

`import genre_tagger` registers these classes (auto.py), so `AutoModel.from_pretrained(ensemble)` or
`AutoModelForSequenceClassification.from_pretrained(ensemble)` raises a ValueError that says what the
folder is and how to load it, instead of building a model with a random head. Without this project
installed, transformers itself refuses the unknown model type.
"""

from transformers import PreTrainedConfig, PreTrainedModel

from genre_tagger.run import ENSEMBLE_MODEL_TYPE


class GenreTaggerEnsembleConfig(PreTrainedConfig):
    """config.json of an ensemble run: its labels; the members are listed in ensemble.json."""

    model_type = ENSEMBLE_MODEL_TYPE


def refusal(path):
    where = f"{path} is" if path else "this is"
    return (
        f"{where} a genre-tagger ensemble (the averaged probabilities of several runs), not one model: "
        "open it with genre_tagger.load_tagger or predict.py, or load one member, members/<i>, with its own run"
    )


class GenreTaggerEnsembleRefusal(PreTrainedModel):
    """Stands in the auto classes' mapping for the ensemble type, only to refuse loading it."""

    config_class = GenreTaggerEnsembleConfig

    def __init__(self, config, *args, **kwargs):
        raise ValueError(refusal(None))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        raise ValueError(refusal(pretrained_model_name_or_path))
