"""ml.drift.window: live values read as the preprocessing job read the training ones, binned like ml.drift.stats, and
a verdict per feature that is quiet on the training distribution and loud on a shifted one; payloads validate."""

from __future__ import annotations

import numpy as np
import pytest

from ml.drift import bin_counts, category_counts, chi_square, ks, psi, with_missing
from ml.drift.window import DriftThresholds, category_key, drift_payload, numeric_value, window_drift
from ml.events.envelope import make_envelope
from ml.features import NULL_TOKENS
from ml.features.distributions import CategoricalDistribution, NumericDistribution, TrainingDistributions
from ml.topics import DRIFT

EDGES = [1.0, 2.0, 3.0]
DISTRIBUTIONS = TrainingDistributions(
    dataset="toy",
    snapshot_id="snap",
    rows=1000,
    numeric=[NumericDistribution("x", EDGES, [0.25, 0.25, 0.25, 0.25], count=900, missing=0.1)],
    categorical=[CategoricalDistribution("colour", ["red", "blue"], [0.5, 0.4, 0.1], count=1000, missing=0.0)],
)
THRESHOLDS = DriftThresholds(psi=0.25, min_rows=20)


def as_texts(values: list[object]) -> dict[str | None, int]:
    """Values as the serving event's JSON text, each distinct one with its count (what Spark hands the driver)."""
    counted: dict[str | None, int] = {}
    for value in values:
        text = None if value is None else str(value)
        counted[text] = counted.get(text, 0) + 1
    return counted


def test_numeric_values_are_read_as_the_job_reads_them() -> None:
    assert [numeric_value(t) for t in ("1.5", " 2 ", "1e3", "-0.5")] == [1.5, 2.0, 1000.0, -0.5]
    # missing: null, blank, non-finite spellings, and what is not a plain decimal number (as Spark's job reads it)
    assert [numeric_value(t) for t in (None, "", "  ", "nan", "Infinity", "-inf", "NA", "3D", "0x10", "1_000")] == [
        None
    ] * 10


def test_categories_are_keyed_as_the_job_keys_them() -> None:
    assert [category_key(t) for t in ("red", " red ", "True", "3.0", "3")] == ["red", "red", "true", "3", "3"]
    assert {category_key(t) for t in (None, "", "   ", *NULL_TOKENS)} == {None}
    # the job trims after matching the null spellings: " NA " is the category "NA", as in the features
    assert category_key(" NA ") == "NA"


def test_counts_match_the_stats_modules_binning() -> None:
    rng = np.random.default_rng(3)
    numbers = [*np.round(rng.normal(2.0, 1.5, size=400), 2).tolist(), None, "nan", "oops"]
    colours = ["red", "blue", "green", " red", None, "NA", "blue"] * 30
    (x, colour) = window_drift(DISTRIBUTIONS, {"x": as_texts(numbers), "colour": as_texts(colours)}, THRESHOLDS)

    present = [v for v in numbers if isinstance(v, float)]
    counts = bin_counts(present, EDGES).tolist()
    assert x["rows"] == len(numbers) and x["missing_share"] == pytest.approx(3 / len(numbers))
    assert x["psi"] == pytest.approx(psi(with_missing([0.25] * 4, 0.1).tolist(), [*counts, 3]))
    assert (x["statistic"], x["p_value"]) == pytest.approx(ks([0.25] * 4, counts))
    assert x["test"] == "ks" and x["kind"] == "numeric" and x["expected_missing_share"] == 0.1

    keys = [category_key(None if c is None else str(c)) for c in colours]
    category = category_counts(keys, ["red", "blue"]).tolist()
    assert category == [60, 60, 30]  # " red" is red; green is __other__; None and NA are missing
    assert colour["missing_share"] == pytest.approx(60 / 210)
    assert colour["psi"] == pytest.approx(psi(with_missing([0.5, 0.4, 0.1], 0.0).tolist(), [*category, 60]))
    assert (colour["statistic"], colour["p_value"]) == pytest.approx(chi_square([0.5, 0.4, 0.1], category))


def training_like_window(rng: np.random.Generator, rows: int) -> dict[str, dict[str | None, int]]:
    bins = rng.choice(4, size=rows, p=[0.25] * 4)
    lows, highs = np.array([-1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 5.0])
    numbers: list[object] = np.round(rng.uniform(lows[bins] + 0.001, highs[bins]), 3).tolist()
    numbers[: rows // 10] = [None] * (rows // 10)  # the training missing share
    colours = rng.choice(["red", "blue", "grey"], size=rows, p=[0.5, 0.4, 0.1]).tolist()
    return {"x": as_texts(numbers), "colour": as_texts(colours)}


def test_a_window_like_training_raises_no_drift() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        features = window_drift(DISTRIBUTIONS, training_like_window(rng, 500), THRESHOLDS)
        assert [f["drifted"] for f in features] == [False, False], features
        assert all(f["psi"] < 0.1 for f in features), features


def test_a_shift_on_one_feature_drifts_that_feature_only() -> None:
    rng = np.random.default_rng(8)
    window = training_like_window(rng, 500)
    window["x"] = as_texts((rng.normal(4.5, 0.5, size=500)).round(3).tolist())  # most above the last edge
    x, colour = window_drift(DISTRIBUTIONS, window, THRESHOLDS)
    assert x["drifted"] and x["psi"] > 1 and x["p_value"] < 1e-6
    assert not colour["drifted"]


def test_a_change_of_the_missing_share_alone_is_drift() -> None:
    window = {"colour": as_texts(["red", "blue"] * 10 + [None] * 80)}
    (colour,) = window_drift(DISTRIBUTIONS, window, THRESHOLDS)
    assert colour["drifted"] and colour["missing_share"] == 0.8


def test_too_few_rows_give_statistics_but_no_verdict() -> None:
    (x,) = window_drift(DISTRIBUTIONS, {"x": as_texts([4.5] * 19)}, THRESHOLDS)
    assert x["psi"] > 1 and not x["drifted"]


def test_a_feature_with_only_missing_values_has_psi_but_no_test() -> None:
    (x,) = window_drift(DISTRIBUTIONS, {"x": as_texts([None] * 30)}, THRESHOLDS)
    assert x["statistic"] is None and x["p_value"] is None and x["psi"] > 1 and x["drifted"]


def test_columns_the_model_does_not_have_are_ignored_and_absent_ones_skipped() -> None:
    features = window_drift(DISTRIBUTIONS, {"colour": as_texts(["red"] * 30), "extra": as_texts([1] * 30)}, THRESHOLDS)
    assert [f["name"] for f in features] == ["colour"]


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="PSI threshold"):
        DriftThresholds(psi=0)
    with pytest.raises(ValueError, match="min_rows"):
        DriftThresholds(min_rows=0)


def test_the_payload_names_the_drifted_features_and_validates() -> None:
    rng = np.random.default_rng(9)
    window = training_like_window(rng, 300)
    window["colour"] = as_texts(["green"] * 300)
    features = window_drift(DISTRIBUTIONS, window, THRESHOLDS)
    payload = drift_payload(
        model_name="toy-classification",
        model_version="3",
        distributions=DISTRIBUTIONS,
        window_start="2026-12-03T10:00:00Z",
        window_end="2026-12-03T10:01:00Z",
        features=features,
        thresholds=THRESHOLDS,
    )
    assert payload["drifted"] and payload["drifted_features"] == ["colour"] and payload["rows"] == 300
    assert (payload["dataset"], payload["snapshot_id"]) == ("toy", "snap")
    make_envelope(DRIFT, payload)  # validates against drift.v1
