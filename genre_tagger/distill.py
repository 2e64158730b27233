"""Distillation targets (`train.py --teacher RUN`): a saved run's probabilities on the training rows.

GenreClassifier mixes the loss on them with the true-label loss (see its forward). The teacher's
probabilities are softened (or sharpened) by a temperature on its logits: sigmoid(logit(p) / T).
"""

import numpy as np
import pandas as pd

from genre_tagger import UserError
from genre_tagger.runs import OpenRun, labels_of


def soften(probabilities, temperature):
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))


def teacher_probabilities(teacher, labels, train_texts, held_out_texts, max_length):
    """The teacher run's (folder or zip) probabilities for the training rows, by its own PyTorch model.

    Refuses a teacher with other genres, or one that trained on any of the student's validation or test
    rows (its probabilities would carry those rows' labels into the student's training).
    """
    from genre_tagger.modeling import load_classifier, predict_probabilities

    with OpenRun(teacher) as folder:
        if labels_of(folder) != list(labels):
            raise UserError(
                f"--teacher {teacher} tags other genres than these training rows; train it on the same data"
            )
        split = pd.read_csv(folder / "split.csv", keep_default_na=False)
        seen = set(split.loc[split["split"] == "train", "text"])
        leaked = seen.intersection(held_out_texts)
        if leaked:
            raise UserError(
                f"--teacher {teacher} trained on {len(leaked)} of this run's validation/test rows; "
                "train the teacher with the same --data, --test-data, fractions and --seed"
            )
        model, tokenizer = load_classifier(folder)
        return predict_probabilities(model, tokenizer, train_texts, max_length)
