"""Calibration: make a genre's probability mean what it says, fitted on held-out rows only.

The classifier is trained with BCE whose positives are weighted by each genre's negatives/positives
ratio (`--pos-weight`), which pushes every genre's probabilities up on purpose (that is why 0.3 is a good
decision point) but means a "0.8" is not 80%. Calibration rescales each genre's logit,

    calibrated logit = scale[g] * logit + shift[g]

an affine map per genre, fitted on validation rows. Being affine in the logit, it is folded into the
classifier's last linear layer (`fold_into`), so every runtime that runs the model (predict.py on ONNX or
torch, load_tagger, serve.py, Hugging Face's pipeline) applies it without code of its own. An ensemble
applies the same map to its averaged probabilities (`apply_to_probabilities`).

Methods (`--calibrate`), measured in bench/RESULTS.md:
- `prior-temperature` (the default): one scale and one shift shared by every genre, applied after
  removing each genre's known pos-weight offset (the log of its weight in the loss). Two numbers are
  fitted, so a genre with 1-3 validation positives cannot over-fit: its own correction is the offset,
  which comes from the training rows' counts.
- `temperature`: one shared scale and shift, without the offsets.
- `platt`: a free scale and shift per genre (40 numbers on ~100 rows: it over-fits the rare genres).
- `none`: the model's own probabilities.
Isotonic regression was measured too and is not offered: it is worse on held-out log loss and, not
being affine, could not travel inside the model.
"""

import numpy as np

METHODS = ("prior-temperature", "temperature", "platt", "none")
DEFAULT_METHOD = "prior-temperature"
ECE_BINS = 15
_CLIP = 1e-7


def logits_of(probabilities):
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _CLIP, 1 - _CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(logits):
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))  # no overflow for any logit


def reliability_bins(y_true, probabilities, bins=ECE_BINS):
    """Per non-empty equal-width probability bin, (cells, mean probability, positive rate); cells pooled."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    return [(int((which == b).sum()), p[which == b].mean(), y[which == b].mean()) for b in np.unique(which)]


def expected_calibration_error(y_true, probabilities, bins=ECE_BINS):
    """Sum over equal-width probability bins of (share of cells in the bin) x |positive rate - mean probability|."""
    counted = reliability_bins(y_true, probabilities, bins)
    if not counted:
        return float("nan")
    return float(sum(cells * abs(rate - mean) for cells, mean, rate in counted) / sum(c for c, _, _ in counted))


def calibration_report(y_true, probabilities, labels, bins=ECE_BINS):
    """Expected calibration error (micro: every row x genre cell pooled; macro: mean of the genres'),
    Brier score and log loss over all cells, and the mean probability against the positive rate."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    clipped = np.clip(p, _CLIP, 1 - _CLIP)
    per_genre = {label: expected_calibration_error(y[:, j], p[:, j], bins) for j, label in enumerate(labels)}
    return {
        "micro_ece": expected_calibration_error(y, p, bins),
        "macro_ece": float(np.mean(list(per_genre.values()))),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "mean_probability": float(p.mean()),
        "positive_rate": float(y.mean()),
        "bins": bins,
        "per_genre_ece": per_genre,
        "rows": len(y),
    }


def before_and_after(rows, calibration, labels):
    """{"NAME_before" / "NAME_after": calibration_report} for each NAME: (0/1 truth, uncalibrated logits)."""
    return {
        f"{name}_{stage}": calibration_report(y, sigmoid(apply(z, calibration) if stage == "after" else z), labels)
        for name, (y, z) in rows.items()
        for stage in ("before", "after")
    }


def format_change(reports, name="test"):
    """One line: each calibration figure of `name`'s rows, before -> after."""
    figures = (("micro_ece", "micro ECE"), ("macro_ece", "macro ECE"), ("brier", "Brier"), ("log_loss", "log loss"))
    return "; ".join(
        f"{label} {reports[f'{name}_before'][key]:.4f} -> {reports[f'{name}_after'][key]:.4f}" for key, label in figures
    )


def fit(logits, y_true, method=DEFAULT_METHOD, offsets=None):
    """Fit `method` on held-out logits (rows x genres) and their 0/1 truth.

    offsets: per genre, the logit shift the pos-weighted loss adds (log of the genre's weight); only
    `prior-temperature` uses them. Returns {"method", "scale", "shift", ...}: calibrated logit = scale * logit + shift.
    """
    from scipy.optimize import minimize

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    rows, genres = z.shape
    if method == "none":
        return {"method": "none", "scale": [1.0] * genres, "shift": [0.0] * genres}
    offsets = np.asarray(offsets, dtype=np.float64) if method == "prior-temperature" else np.zeros(genres)
    shared = method != "platt"

    def unpack(theta):
        if shared:  # scale * (z - offset) + shift
            return np.full(genres, theta[0]), theta[1] - theta[0] * offsets
        return theta[:genres], theta[genres:]

    def objective(theta):
        scale, shift = unpack(theta)
        calibrated = z * scale + shift
        loss = (np.logaddexp(0.0, calibrated) - y * calibrated).sum()  # BCE, stable for large logits
        residual = sigmoid(calibrated) - y
        d_scale, d_shift = (residual * z).sum(0), residual.sum(0)
        if shared:
            grad = np.array([d_scale.sum() - (d_shift * offsets).sum(), d_shift.sum()])
        else:
            grad = np.concatenate([d_scale, d_shift])
        return loss / rows, grad / rows

    start = np.array([1.0, 0.0]) if shared else np.concatenate([np.ones(genres), np.zeros(genres)])
    # The scale stays positive: calibration may soften or sharpen a genre's scores, never reverse their order.
    bounds = [(1e-3, 100.0), (None, None)] if shared else [(1e-3, 100.0)] * genres + [(None, None)] * genres
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    scale, shift = unpack(result.x)
    return {
        "method": method,
        "scale": [float(v) for v in scale],
        "shift": [float(v) for v in shift],
        "offsets": [float(v) for v in offsets],
        "rows": rows,
    }


def apply(logits, calibration):
    """Calibrated logits: scale * logits + shift, per genre."""
    return np.asarray(logits, dtype=np.float64) * np.asarray(calibration["scale"]) + np.asarray(calibration["shift"])


def apply_to_probabilities(probabilities, calibration):
    """Calibrated probabilities from uncalibrated ones (an ensemble's averaged probabilities)."""
    return sigmoid(apply(logits_of(probabilities), calibration))


def undo(probabilities, calibration):
    """The uncalibrated probabilities behind calibrated ones (None: there was no calibration)."""
    if calibration is None:
        return np.asarray(probabilities, dtype=np.float64)
    scale, shift = np.asarray(calibration["scale"]), np.asarray(calibration["shift"])
    return sigmoid((logits_of(probabilities) - shift) / scale)


def map_threshold(threshold, calibration):
    """Per genre, the calibrated probability that an uncalibrated `threshold` becomes (the same decisions).

    A steep map (Platt scaling fitted on a few validation rows) sends it to exactly 0.0 or 1.0 in float64,
    which no run may hold (run.is_probability: strictly between 0 and 1); the nearest floats inside keep
    the decisions as far as a float can tell them apart.
    """
    mapped = sigmoid(apply(np.full(len(calibration["scale"]), logits_of(threshold)), calibration))
    return np.clip(mapped, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))


def fold_into(linear, calibration):
    """Fold the per-genre affine map into the classifier's last torch.nn.Linear (its outputs are the logits)."""
    import torch

    weight = linear.weight  # on whatever device the model was trained on
    scale = torch.as_tensor(calibration["scale"], dtype=weight.dtype, device=weight.device)
    shift = torch.as_tensor(calibration["shift"], dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        linear.weight.mul_(scale.unsqueeze(1))
        linear.bias.mul_(scale).add_(shift)
