"""Task metrics in numpy, with scikit-learn's values and without its (rows x classes) temporaries.

classification: accuracy, f1_macro (over `labels`, zero_division=0), roc_auc (binary: of the positive class; else
one-vs-rest macro over the classes present in y; NaN with fewer than two), log_loss (probabilities clipped to
[1e-15, 1] and renormalised per row, then as `sklearn.metrics.log_loss` with `labels`).
regression: rmse, mae, r2 (NaN for fewer than two rows or a constant target).

`compute_metrics` scores per-row predictions; `constant_prediction_metrics` scores a predictor that gives every row
the same prediction (the evaluation's baseline) from the labels' counts, without a (rows x classes) matrix. Both give
what `sklearn.metrics` gives for the same inputs (tests/unit/ml/test_metrics.py): accuracy and log_loss exactly,
the rest to rounding (ROC-AUC is the Mann-Whitney U, which equals the trapezoid under the ROC curve, ties included).
The errors scikit-learn raises are kept: no rows, lengths that differ, NaN probabilities or regression values, labels
outside `labels` or fewer than two of them for log_loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ml.models import CLASSIFICATION, REGRESSION

_CLIP_LOW = 1e-15  # the probabilities' clip before renormalising (scikit-learn's historical eps)
_CHUNK_ROWS = 1 << 16  # rows of probabilities clipped and renormalised at a time


def compute_metrics(
    task: str,
    y_true: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray | None = None,
    *,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Task metrics as plain floats (NaN where undefined, e.g. ROC-AUC with one class present)."""
    y_true = np.asarray(y_true)
    predictions = np.asarray(predictions)
    _check_lengths(y_true, predictions, probabilities)
    if task == CLASSIFICATION:
        y = y_true.astype(np.int64, copy=False)
        labels = _labels(y, predictions, probabilities, num_classes)
        hits = y == predictions
        result = {
            "accuracy": float(np.mean(hits)),
            "f1_macro": _f1_macro(_counts(y[hits], labels), _counts(predictions, labels), _counts(y, labels)),
            "roc_auc": math.nan,
            "log_loss": math.nan,
        }
        if probabilities is not None:
            scores = probabilities
            result["roc_auc"] = _roc_auc(
                y, scores.shape[1], lambda positive, column: _binary_auc(positive, scores[:, column])
            )
            result["log_loss"] = _log_loss(y, probabilities, labels)
        return result
    if task == REGRESSION:
        return _regression_metrics(y_true, predictions)
    raise ValueError(f"unknown task {task!r}")


def constant_prediction_metrics(
    task: str,
    y_true: np.ndarray,
    prediction: float,
    probabilities: np.ndarray | None = None,
    *,
    num_classes: int | None = None,
) -> dict[str, float]:
    """`compute_metrics` of a predictor that gives every row `prediction` (and the one row of class `probabilities`),
    computed from the labels' counts: the same values as scoring the repeated prediction, without repeating it."""
    y_true = np.asarray(y_true)
    if task == CLASSIFICATION:
        y = y_true.astype(np.int64, copy=False)
        row = None if probabilities is None else np.asarray(probabilities).reshape(1, -1)
        labels = _labels(y, np.array([prediction]), row, num_classes)
        true_sum = _counts(y, labels)
        predicted = labels == prediction
        hits = int(np.count_nonzero(y == prediction))
        result = {
            "accuracy": hits / len(y),
            "f1_macro": _f1_macro(predicted * hits, predicted * len(y), true_sum),
            "roc_auc": math.nan,
            "log_loss": math.nan,
        }
        if row is not None:
            scores = row
            # Every row scores the same: all pairs are tied, an AUC of one half (NaN for a non-finite score).
            result["roc_auc"] = _roc_auc(
                y, scores.shape[1], lambda _, c: 0.5 if math.isfinite(scores[0, c]) else math.nan
            )
            result["log_loss"] = _constant_log_loss(y, row, labels)
        return result
    if task == REGRESSION:
        return _regression_metrics(y_true, np.broadcast_to(np.asarray(prediction, np.float64), y_true.shape))
    raise ValueError(f"unknown task {task!r}")


def _check_lengths(y: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray | None) -> None:
    lengths = {len(y), len(predictions)} | ({len(probabilities)} if probabilities is not None else set())
    if len(lengths) > 1:
        raise ValueError(f"inconsistent numbers of rows: {sorted(lengths)}")


def _labels(
    y: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray | None, num_classes: int | None
) -> np.ndarray:
    """range(num_classes or the probabilities' width), else the classes that y and the predictions show."""
    if not len(y):
        raise ValueError("no rows to score")  # as scikit-learn: metrics of nothing are an error, not NaN
    count = num_classes or (probabilities.shape[1] if probabilities is not None else 0)
    return np.arange(count) if count else np.union1d(np.unique(y), np.unique(predictions))


def _counts(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How often each of the sorted `labels` occurs in `values` (other values are not counted)."""
    position = np.searchsorted(labels, values)
    known = position < len(labels)
    known[known] = labels[position[known]] == values[known]
    return np.bincount(position[known], minlength=len(labels))


def _f1_macro(tp: np.ndarray, pred_sum: np.ndarray, true_sum: np.ndarray) -> float:
    """The mean over labels of 2 tp / (true + predicted), 0 for a label neither true nor predicted (zero_division=0),
    in scikit-learn's arithmetic."""
    denominator = true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    f1 = np.zeros(len(denominator))
    defined = denominator > 0
    f1[defined] = 2.0 * tp[defined].astype(np.float64) / denominator[defined]
    return float(np.mean(f1))


def _roc_auc(y: np.ndarray, columns: int, class_auc: Callable[[np.ndarray, int], float]) -> float:
    """Binary (two probability columns): `class_auc` of the positive class (the greater label) and column 1; else the
    mean of `class_auc` over the classes present in y, one class at a time (an absent class has no defined AUC)."""
    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    if columns == 2:
        return class_auc(y == present[-1], 1) if len(present) == 2 else math.nan  # else a multiclass y, one score
    return float(np.mean([class_auc(y == c, int(c)) for c in present]))


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """The Mann-Whitney U / (positives x negatives): the probability that a positive outscores a negative, a tie
    counting one half, which is the trapezoidal area under the ROC curve. NaN for non-finite scores."""
    if not np.isfinite(scores).all():
        return math.nan
    negatives = np.sort(scores[~positive])
    positives = np.sort(scores[positive])  # sorted keys make searchsorted walk forward
    below = int(np.searchsorted(negatives, positives, side="left").sum())
    not_above = int(np.searchsorted(negatives, positives, side="right").sum())
    return (below + not_above) / (2 * len(positives) * len(negatives))


def _check_log_loss_labels(y: np.ndarray, labels: np.ndarray, width: int) -> None:
    if len(labels) < 2:
        raise ValueError(f"log_loss needs at least two labels, got {labels.tolist()}")
    if width != len(labels):
        raise ValueError(f"probabilities have {width} columns for {len(labels)} labels")
    if (y < 0).any() or (y >= len(labels)).any():
        raise ValueError(f"y_true holds values outside the labels {labels.tolist()}")


def _renormalised(probabilities: np.ndarray) -> np.ndarray:
    """Clipped to [1e-15, 1] and divided by the row sums, in the probabilities' float type; NaN is an error."""
    clipped = np.clip(probabilities, _CLIP_LOW, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    if np.isnan(clipped).any():
        raise ValueError("probabilities contain NaN")
    return clipped


def _row_losses(picked: np.ndarray) -> np.ndarray:
    """-log p of the true classes' probabilities, clipped to [eps, 1 - eps] of their float type as scikit-learn
    clips them."""
    eps = np.finfo(picked.dtype).eps
    return -np.log(np.clip(picked, eps, 1 - eps))


def _log_loss(y: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean of the rows' losses; the probabilities are renormalised a chunk of rows at a time."""
    _check_log_loss_labels(y, labels, probabilities.shape[1])
    losses: np.ndarray | None = None
    for start in range(0, len(y), _CHUNK_ROWS):
        chunk = _renormalised(probabilities[start : start + _CHUNK_ROWS])
        picked = _row_losses(chunk[np.arange(len(chunk)), y[start : start + _CHUNK_ROWS]])
        if losses is None:
            losses = np.empty(len(y), picked.dtype)
        losses[start : start + len(picked)] = picked
    assert losses is not None  # y is not empty
    return float(np.mean(losses))


def _constant_log_loss(y: np.ndarray, row: np.ndarray, labels: np.ndarray) -> float:
    """The per-class loss of the one row, weighted by the classes' counts."""
    _check_log_loss_labels(y, labels, row.shape[1])
    losses = _row_losses(_renormalised(row)[0])
    return float(np.dot(np.bincount(y, minlength=len(labels)), losses.astype(np.float64)) / len(y))


def _regression_metrics(y_true: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    y = y_true.astype(np.float64)
    pred = predictions.astype(np.float64, copy=False)
    if not (np.isfinite(y).all() and np.isfinite(pred).all()):
        raise ValueError("regression labels or predictions contain NaN or infinity")
    if not len(y):
        return {"rmse": math.nan, "mae": math.nan, "r2": math.nan}
    residual = y - pred
    mae = float(np.mean(np.abs(residual)))
    np.square(residual, out=residual)
    squared_error = float(np.mean(residual))
    r2 = math.nan
    if len(y) > 1 and np.ptp(y) > 0:  # r2 is undefined for fewer than two samples or a constant target
        deviation = y - np.mean(y)
        r2 = float(1 - np.sum(residual) / np.sum(np.square(deviation, out=deviation)))
    return {"rmse": math.sqrt(squared_error), "mae": mae, "r2": r2}
