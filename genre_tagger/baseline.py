"""TF-IDF + one-vs-rest logistic regression: the cheap baseline every transformer run is compared with."""

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline


def fit_baseline(texts, label_matrix, seed=42):
    """Word 1-2-grams with sublinear TF, one balanced logistic regression per genre.

    class_weight="balanced" keeps rare genres' probabilities from collapsing towards zero, which
    would make the baseline look worse than it is at a fixed 0.3 threshold.
    """
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode"),
        OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced", random_state=seed)),
    )
    model.fit(list(texts), np.asarray(label_matrix).astype(np.int64))
    return model


def baseline_probabilities(model, texts):
    return model.predict_proba(list(texts))


def most_frequent_probabilities(train_label_matrix, rows):
    """The trivial baseline: every row gets each genre's training frequency as its probability.

    At threshold 0.3 it tags every movie with the genres that occur in at least 30% of training rows.
    """
    frequencies = np.asarray(train_label_matrix, dtype=np.float64).mean(axis=0)
    return np.tile(frequencies, (rows, 1))
