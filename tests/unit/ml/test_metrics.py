"""ml.metrics: metrics on known inputs, and the same values as scikit-learn's (the implementation they replace) on
seeded random data: ties in the scores, classes absent from y or from the predictions, one class, no rows, float32
probabilities; the constant predictor's metrics from counts equal those of its repeated prediction."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

from ml.metrics import compute_metrics, constant_prediction_metrics


def sklearn_metrics(
    task: str, y_true: Any, predictions: Any, probabilities: Any = None, *, num_classes: int | None = None
) -> dict[str, float]:
    """The scikit-learn implementation that ml.metrics replaced, verbatim but for the keyword `y_proba`."""
    from sklearn import metrics

    y_true = np.asarray(y_true)
    predictions = np.asarray(predictions)
    if task == "classification":
        labels = list(range(num_classes or (probabilities.shape[1] if probabilities is not None else 0)))
        y = y_true.astype(np.int64)
        result = {
            "accuracy": float(metrics.accuracy_score(y, predictions)),
            "f1_macro": float(
                metrics.f1_score(y, predictions, average="macro", labels=labels or None, zero_division=0)
            ),
            "roc_auc": _sklearn_roc_auc(y, probabilities),
        }
        if probabilities is not None and len(y):
            clipped = np.clip(probabilities, 1e-15, 1.0)
            clipped = clipped / clipped.sum(axis=1, keepdims=True)
            result["log_loss"] = float(metrics.log_loss(y, y_proba=clipped, labels=labels))
        else:
            result["log_loss"] = math.nan
        return result
    y_float = y_true.astype(np.float64)
    pred = predictions.astype(np.float64)
    return {
        "rmse": float(math.sqrt(metrics.mean_squared_error(y_float, pred))) if len(y_float) else math.nan,
        "mae": float(metrics.mean_absolute_error(y_float, pred)) if len(y_float) else math.nan,
        "r2": float(metrics.r2_score(y_float, pred)) if len(y_float) > 1 and np.ptp(y_float) > 0 else math.nan,
    }


def _sklearn_roc_auc(y: np.ndarray, probabilities: np.ndarray | None) -> float:
    from sklearn import metrics

    if probabilities is None or len(np.unique(y)) < 2:
        return math.nan
    try:
        if probabilities.shape[1] == 2:
            return float(metrics.roc_auc_score(y, probabilities[:, 1]))
        present = sorted(int(c) for c in np.unique(y))
        return float(np.mean([metrics.roc_auc_score(y == c, probabilities[:, c]) for c in present]))
    except ValueError:
        return math.nan


def assert_same(ours: dict[str, float], expected: dict[str, float], exact: tuple[str, ...] = ("accuracy",)) -> None:
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(ours[name]), (name, ours[name])
        elif name in exact:
            assert ours[name] == value, name
        else:
            assert ours[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def both(*args: Any, **kwargs: Any) -> tuple[dict[str, float], dict[str, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns of labels absent from y
        expected = sklearn_metrics(*args, **kwargs)
    return compute_metrics(*args, **kwargs), expected


# -- known inputs


def test_classification_metrics_on_known_inputs() -> None:
    y = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    metrics = compute_metrics("classification", y, probabilities.argmax(axis=1), probabilities, num_classes=2)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # Class 0: precision 1, recall 0.5 -> F1 2/3; class 1: precision 2/3, recall 1 -> F1 0.8.
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    # Positive-class scores 0.1, 0.6 (negatives) vs 0.7, 0.8 (positives): every pair is ordered correctly.
    assert metrics["roc_auc"] == pytest.approx(1.0)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])))


def test_multiclass_auc_is_one_vs_rest_macro() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2] * 10)
    probabilities = rng.dirichlet(np.ones(3), size=30)
    metrics = compute_metrics("classification", y, probabilities.argmax(axis=1), probabilities, num_classes=3)
    expected = np.mean([roc_auc_score(y == c, probabilities[:, c]) for c in range(3)])
    assert metrics["roc_auc"] == pytest.approx(expected)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr", average="macro"))


def test_auc_is_nan_when_one_class_is_present() -> None:
    metrics = compute_metrics(
        "classification", np.array([1, 1]), np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]), num_classes=2
    )
    assert math.isnan(metrics["roc_auc"])
    assert metrics["accuracy"] == 0.5


def test_regression_metrics_on_known_inputs() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 6.0])
    metrics = compute_metrics("regression", y, pred)
    assert metrics["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(1 - 4 / 5)  # SS_res 4, SS_tot 5


def test_unknown_task_has_no_metrics() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("ranking", np.array([1.0]), np.array([1.0]))


def test_regression_metrics_of_one_row_or_a_constant_target() -> None:
    one = compute_metrics("regression", np.array([2.0]), np.array([3.0]))
    assert one["rmse"] == pytest.approx(1.0) and one["mae"] == pytest.approx(1.0) and math.isnan(one["r2"])
    empty = compute_metrics("regression", np.array([]), np.array([]))
    assert all(math.isnan(value) for value in empty.values())
    constant = compute_metrics("regression", np.array([5.0, 5.0, 5.0]), np.array([5.0, 4.0, 6.0]))
    assert math.isnan(constant["r2"])


def test_log_loss_without_probabilities_is_nan() -> None:
    metrics = compute_metrics("classification", np.array([0, 1]), np.array([0, 1]), None, num_classes=2)
    assert metrics["accuracy"] == 1.0 and math.isnan(metrics["log_loss"]) and math.isnan(metrics["roc_auc"])


# -- the same values as scikit-learn on random data


def random_classification(
    rng: np.random.Generator, rows: int, k: int, *, present: int, decimals: int | None, predicted: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels from `present` of the k classes, Dirichlet probabilities (rounded for ties), argmax or random
    predictions (which may name classes absent from y, or none of the labels: -1)."""
    classes = rng.choice(k, size=present, replace=False)
    y = rng.choice(classes, size=rows)
    probabilities = rng.dirichlet(np.full(k, 0.7), size=rows)
    if decimals is not None:
        probabilities = np.round(probabilities, decimals)  # many ties, zeros that the clip lifts, rows off one
    predictions = probabilities.argmax(axis=1) if predicted == "argmax" else rng.integers(-1, k, size=rows)
    return y, predictions, probabilities


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_classification_equals_sklearn(seed: int, k: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed * 31 + k)
    rows = int(rng.choice([1, 2, 7, 60, 3000]))
    present = int(rng.integers(1, k + 1))
    predicted = "argmax" if seed % 2 else "random"
    y, predictions, probabilities = random_classification(
        rng, rows, k, present=present, decimals=decimals, predicted=predicted
    )
    ours, expected = both("classification", y, predictions, probabilities, num_classes=k)
    assert_same(ours, expected, exact=("accuracy", "log_loss"))
    # Without probabilities: the labels are range(num_classes), or those y and the predictions show.
    assert_same(*both("classification", y, predictions, None, num_classes=k))
    assert_same(*both("classification", y, predictions, None))


def test_float32_probabilities_equal_sklearn() -> None:
    rng = np.random.default_rng(7)
    y, predictions, probabilities = random_classification(rng, 5000, 4, present=3, decimals=None, predicted="argmax")
    probabilities[:5] = [1.0, 0.0, 0.0, 0.0]  # at the clip of float32's eps
    y[:5] = 0
    ours, expected = both("classification", y, predictions, probabilities.astype(np.float32), num_classes=4)
    assert_same(ours, expected, exact=("accuracy", "log_loss"))


def test_auc_with_ties_and_absent_classes_equals_sklearn() -> None:
    rng = np.random.default_rng(3)
    rows = 200_000
    y = rng.choice([0, 2, 3], size=rows)  # class 1 absent from y; its column is ignored by the AUC
    scores = rng.integers(0, 50, size=(rows, 4)).astype(np.float64)  # heavy ties
    probabilities = scores / scores.sum(axis=1, keepdims=True).clip(1)
    ours, expected = both("classification", y, probabilities.argmax(axis=1), probabilities, num_classes=4)
    assert_same(ours, expected, exact=("accuracy", "log_loss"))
    binary = np.stack([1 - probabilities[:, 0], probabilities[:, 0]], axis=1)
    y_binary = (y == 0).astype(np.int64)
    assert_same(*both("classification", y_binary, binary.argmax(axis=1), binary, num_classes=2))


def test_the_auc_is_nan_where_sklearn_refuses() -> None:
    probabilities = np.full((4, 2), 0.5)
    probabilities[0, 1] = np.inf  # a non-finite score
    y = np.array([0, 1, 0, 1])
    ours, expected = both("classification", y, y, probabilities, num_classes=2)
    assert math.isnan(ours["roc_auc"]) and math.isnan(expected["roc_auc"])
    assert ours["log_loss"] == expected["log_loss"]  # the clip makes infinity a probability of one


@pytest.mark.parametrize(
    "args",
    [
        ("classification", np.array([], np.int64), np.array([], np.int64), np.zeros((0, 3))),  # no rows
        ("classification", np.array([], np.int64), np.array([], np.int64), None),
        ("classification", np.array([0, 1]), np.array([0, 1]), np.array([[0.5, 0.5], [np.nan, 0.5]])),  # NaN
        ("classification", np.array([0, 2]), np.array([0, 1]), np.full((2, 2), 0.5)),  # y outside the labels
        ("classification", np.array([0, 1]), np.array([0, 1]), np.full((2, 3), 1 / 3), 2),  # 3 columns, 2 labels
        ("classification", np.array([0, 0]), np.array([0, 0]), np.ones((2, 1))),  # one label
        ("classification", np.array([0, 1, 1]), np.array([0, 1]), None, 2),  # lengths differ
        ("regression", np.array([1.0, np.nan]), np.array([1.0, 2.0])),
        ("regression", np.array([1.0, 2.0]), np.array([1.0, np.inf])),
        ("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0])),
    ],
)
def test_what_sklearn_refuses_is_refused(args: tuple[Any, ...]) -> None:
    task, y, predictions, *rest = args
    probabilities, num_classes = [*rest, None, None][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            sklearn_metrics(task, y, predictions, probabilities, num_classes=num_classes)
    with pytest.raises(ValueError):
        compute_metrics(task, y, predictions, probabilities, num_classes=num_classes)


@pytest.mark.parametrize("seed", range(8))
def test_regression_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.choice([1, 2, 5, 100, 10_000]))
    y = rng.normal(3.0, 2.0, size=rows).astype(np.float32 if seed % 2 else np.float64)
    if seed == 3:
        y[:] = 5.0  # a constant target: r2 undefined
    predictions = y + rng.normal(0.0, 0.5, size=rows)
    assert_same(*both("regression", y, predictions))
    assert_same(*both("regression", np.array([]), np.array([])))


# -- the constant predictor from counts


def tiled(y: np.ndarray, prediction: float, row: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    return np.full(len(y), prediction), None if row is None else np.tile(row, (len(y), 1))


@pytest.mark.parametrize("seed", range(12))
def test_constant_classification_equals_the_repeated_prediction(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    k = int(rng.choice([2, 3, 4]))
    rows = int(rng.choice([1, 3, 50, 4000]))
    present = int(rng.integers(1, k + 1))
    y = rng.choice(rng.choice(k, size=present, replace=False), size=rows)  # classes absent from y
    row = rng.dirichlet(np.ones(k))
    if seed % 3 == 0:
        row[0] = 0.0  # a class never seen in training: its probability is clipped
    prediction = int(rng.integers(0, k))  # perhaps a class y lacks
    for probabilities in (row, None):
        ours = constant_prediction_metrics("classification", y, prediction, probabilities, num_classes=k)
        predictions, repeated = tiled(y, prediction, probabilities)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sklearn_metrics("classification", y, predictions, repeated, num_classes=k)
        assert_same(ours, expected)
        assert_same(ours, compute_metrics("classification", y, predictions, repeated, num_classes=k))
    if len(np.unique(y)) >= 2:  # every pair of a constant score is tied
        assert constant_prediction_metrics("classification", y, prediction, row, num_classes=k)["roc_auc"] == 0.5


def test_constant_prediction_refuses_what_the_repeated_one_does() -> None:
    with pytest.raises(ValueError, match="no rows"):
        constant_prediction_metrics("classification", np.array([], np.int64), 0, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="outside the labels"):
        constant_prediction_metrics("classification", np.array([0, 2]), 0, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="unknown task"):
        constant_prediction_metrics("ranking", np.array([1.0]), 1.0)
    nan = constant_prediction_metrics("classification", np.array([0, 1, 2]), 0, np.array([0.2, np.inf, 0.3]))
    assert math.isnan(nan["roc_auc"])


@pytest.mark.parametrize("y", [np.array([1.0, 2.0, 6.0, 7.0]), np.array([5.0, 5.0]), np.array([3.0]), np.array([])])
def test_constant_regression_equals_the_repeated_prediction(y: np.ndarray) -> None:
    ours = constant_prediction_metrics("regression", y, 4.5)
    predictions, _ = tiled(y, 4.5, None)
    assert_same(ours, sklearn_metrics("regression", y, predictions))
    assert ours == pytest.approx(compute_metrics("regression", y, predictions), nan_ok=True, rel=0)
