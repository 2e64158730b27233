"""A frozen encoder with a trained head (`train.py --freeze-encoder`): embed every text once, fit only the head.

The encoder's mean-pooled vectors are computed once for the training and validation rows; the head is
then fitted on those vectors in seconds and written into the classifier's linear layer, so the result
is an ordinary GenreTaggerForSequenceClassification (saved, exported to ONNX and reloaded like a fine-tuned one).

Two heads, both one linear layer in the end:
- `logreg`: one scikit-learn logistic regression per genre (positives weighted like the BCE loss),
  its inverse regularisation strength C picked from a small grid by the validation metric;
- `linear`: the linear layer trained with AdamW on BCE over the fixed vectors, with dropout on them,
  the best epoch picked by the validation metric.
"""

import numpy as np
import torch

from genre_tagger.metrics import multilabel_metrics
from genre_tagger.modeling import length_sorted_batches

LOGREG_C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SCORE_KEYS = ("macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss")


@torch.inference_mode()
def embed(model, tokenizer, texts, max_length, batch_size=64):
    """Pooled encoder vectors, shape (len(texts), hidden), in the order of `texts`."""
    model.eval()
    encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = encodings["input_ids"]
    vectors = np.zeros((len(ids), model.classifier.in_features), dtype=np.float32)
    for batch in length_sorted_batches([len(row) for row in ids], batch_size):
        padded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
        hidden = model.encoder(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).last_hidden_state
        vectors[batch] = model.pool(hidden, padded["attention_mask"]).float().numpy()
    return vectors


def _scores(Y, probabilities, threshold, loss):
    metrics = multilabel_metrics(Y, probabilities, threshold)
    return {"eval_loss": loss, **{f"eval_{k}": metrics[k] for k in SCORE_KEYS}}


def _better(select_by, candidate, best):
    key = f"eval_{select_by}"
    return best is None or (candidate[key] < best[key] if select_by == "loss" else candidate[key] > best[key])


def _bce(Y, probabilities, pos_weight):
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-(pos_weight * Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean())


def fit_logreg_head(X_train, Y_train, X_val, Y_val, pos_weight, threshold, select_by):
    """(weight, bias, log): per-genre logistic regressions, C chosen on validation."""
    from sklearn.linear_model import LogisticRegression

    log, best = [], None
    for number, c in enumerate(LOGREG_C_GRID, start=1):
        weight = np.zeros((Y_train.shape[1], X_train.shape[1]), dtype=np.float32)
        bias = np.zeros(Y_train.shape[1], dtype=np.float32)
        for j in range(Y_train.shape[1]):
            if Y_train[:, j].min() == Y_train[:, j].max():
                # No positive (or no negative) training row: a constant, the log-odds of what was seen.
                bias[j] = 10.0 if Y_train[0, j] else -10.0
                continue
            fitted = LogisticRegression(C=c, class_weight={0: 1.0, 1: float(pos_weight[j])}, max_iter=2000)
            fitted.fit(X_train, Y_train[:, j])
            weight[j], bias[j] = fitted.coef_[0], fitted.intercept_[0]
        probabilities = 1 / (1 + np.exp(-(X_val @ weight.T + bias)))
        entry = {
            "epoch": number,
            "head_C": c,
            **_scores(Y_val, probabilities, threshold, _bce(Y_val, probabilities, pos_weight)),
        }
        log.append(entry)
        if _better(select_by, entry, best):
            best, best_weights = entry, (weight, bias)
    return best_weights[0], best_weights[1], log


def fit_linear_head(X_train, Y_train, X_val, Y_val, pos_weight, threshold, settings, dropout):
    """(weight, bias, log): the linear layer trained by AdamW on BCE over fixed vectors, best epoch on validation."""
    generator = torch.Generator().manual_seed(settings["seed"])
    layer = torch.nn.Linear(X_train.shape[1], Y_train.shape[1])
    optimizer = torch.optim.AdamW(
        layer.parameters(), lr=settings["head_lr"] or settings["lr"], weight_decay=settings["weight_decay"]
    )
    X, Y = torch.from_numpy(X_train), torch.from_numpy(Y_train.astype(np.float32))
    X_v = torch.from_numpy(X_val)
    weights = torch.as_tensor(pos_weight, dtype=torch.float32)
    log, best, since_best = [], None, 0
    for epoch in range(1, settings["epochs"] + 1):
        layer.train()
        for batch in torch.randperm(len(X), generator=generator).split(settings["batch_size"]):
            logits = layer(torch.nn.functional.dropout(X[batch], dropout, training=True))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y[batch], pos_weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            probabilities = torch.sigmoid(layer(X_v)).numpy()
        entry = {"epoch": epoch, **_scores(Y_val, probabilities, threshold, _bce(Y_val, probabilities, pos_weight))}
        log.append(entry)
        if _better(settings["select_by"], entry, best):
            best, since_best = entry, 0
            best_weights = (layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
        else:
            since_best += 1
            if since_best >= settings["patience"]:
                break
    return best_weights[0], best_weights[1], log


def train_frozen_head(
    model, tokenizer, train_texts, Y_train, val_texts, Y_val, settings, threshold, head, dropout, max_length
):
    """Fit `model.classifier` on frozen encoder vectors; returns the log (one entry per C or epoch)."""
    X_train = embed(model, tokenizer, train_texts, max_length)
    X_val = embed(model, tokenizer, val_texts, max_length)
    pos_weight = model.pos_weight.numpy()
    if head == "logreg":
        weight, bias, log = fit_logreg_head(
            X_train, Y_train, X_val, Y_val, pos_weight, threshold, settings["select_by"]
        )
    else:
        weight, bias, log = fit_linear_head(X_train, Y_train, X_val, Y_val, pos_weight, threshold, settings, dropout)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    for entry in log:
        print(
            f"  {'C ' + str(entry['head_C']) if 'head_C' in entry else 'epoch ' + str(entry['epoch'])}  "
            f"val loss {entry['eval_loss']:.4f}  macro-F1 {entry['eval_macro_f1']:.4f}  "
            f"micro-F1 {entry['eval_micro_f1']:.4f}  ROC-AUC {entry['eval_macro_roc_auc']:.4f}",
            flush=True,
        )
    model.eval()
    return log
