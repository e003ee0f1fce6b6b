"""ml.preprocess.distributions on the local SparkSession, checked against numpy/pandas on the same rows: edges within
approxQuantile's rank tolerance, bin fractions exactly as ml.drift.bin_counts counts them, moments, missing shares,
category frequencies; and the cleaning steps' missing values (null spellings, non-numbers) counted as missing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.drift import bin_counts, category_counts, psi
from ml.features import OTHER, CategoricalFeature, TrainingDistributions
from ml.preprocess import distributions, steps
from ml.preprocess.distributions import fit_distributions, quantile_edges

ROWS = 4_000
ERROR = 0.001


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    x = rng.normal(50.0, 10.0, ROWS)
    ties = rng.choice([0.0, 1.0, 2.0, 3.0], ROWS, p=[0.55, 0.3, 0.1, 0.05])  # deciles coincide
    sparse = np.where(rng.random(ROWS) < 0.2, np.nan, rng.exponential(3.0, ROWS))
    c = rng.choice(["a", "b", "c", "d", None], ROWS, p=[0.4, 0.3, 0.15, 0.05, 0.1])
    return pd.DataFrame(
        {"x": x, "ties": ties, "sp.arse`": sparse, "flat": 5.0, "none": np.nan, "c": c, "all gone": None}
    )


def spark_frame(spark: Any, frame: pd.DataFrame) -> Any:
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in frame.itertuples(index=False)]
    schema = ", ".join(
        f"{steps.quote(n)} {'double' if frame[n].dtype.kind == 'f' else 'string'}" for n in frame.columns
    )
    return spark.createDataFrame(rows, schema)


@pytest.fixture(scope="module")
def fitted(spark: Any, data: pd.DataFrame) -> TrainingDistributions:
    categories = [CategoricalFeature("c", ["a", "b"]), CategoricalFeature("all gone", [])]
    numeric = ["x", "ties", "sp.arse`", "flat", "none"]
    return fit_distributions(spark_frame(spark, data), numeric, categories, dataset="d", snapshot_id="s")


def rank_within_tolerance(values: np.ndarray, edge: float, probability: float) -> bool:
    """approxQuantile's guarantee: some rank of `edge` among the values is within ERROR * n of probability * n."""
    below, at_most = np.sum(values < edge), np.sum(values <= edge)
    target, slack = probability * len(values), ERROR * len(values) + 1
    return bool(below - slack <= target <= at_most + slack)


def test_numeric_edges_are_training_quantiles_within_the_tolerance(fitted: Any, data: pd.DataFrame) -> None:
    x = fitted.feature("x")
    values = data["x"].to_numpy()
    assert len(x.edges) == 9 and x.edges == sorted(x.edges)
    for decile, edge in enumerate(x.edges, start=1):
        assert rank_within_tolerance(values, edge, decile / 10)
        assert edge in set(values)  # a value of the data, as approxQuantile returns
        # the same as pandas' quantiles, as far as the tolerance goes
        slack = ERROR + 1 / ROWS
        low, high = data["x"].quantile([decile / 10 - slack, decile / 10 + slack], interpolation="nearest")
        assert low <= edge <= high


def test_bin_fractions_are_what_bin_counts_gives_on_the_same_values(fitted: Any, data: pd.DataFrame) -> None:
    for name in ["x", "ties", "sp.arse`", "flat"]:
        feature = fitted.feature(name)
        values = data[name].to_numpy()
        present = values[~np.isnan(values)]
        assert feature.fractions == pytest.approx(list(bin_counts(values, feature.edges) / len(present)), abs=0)
        assert sum(feature.fractions) == pytest.approx(1.0)
        assert len(feature.fractions) == len(feature.edges) + 1
    # equal deciles are merged: 55% zeros, 30% ones, ...: edges 0, 1, 2 and bins (-inf, 0], (0, 1], (1, 2], (2, inf)
    ties = fitted.feature("ties")
    assert ties.edges == [0.0, 1.0, 2.0]
    shares = data["ties"].value_counts(normalize=True)
    assert ties.fractions == pytest.approx([shares[0.0], shares[1.0], shares[2.0], shares[3.0]])
    assert fitted.feature("x").fractions == pytest.approx([0.1] * 10, abs=2 * ERROR + 1 / ROWS)


def test_moments_count_and_missing_share_match_pandas(fitted: Any, data: pd.DataFrame) -> None:
    assert fitted.rows == ROWS
    for name in ["x", "ties", "sp.arse`", "flat"]:
        feature, column = fitted.feature(name), data[name]
        assert feature.count == column.count()
        assert feature.missing == column.isna().sum() / ROWS
        assert feature.mean == pytest.approx(column.mean(), rel=1e-11)
        assert feature.std == pytest.approx(column.std(ddof=0), rel=1e-10, abs=1e-12)
        assert (feature.min, feature.max) == (column.min(), column.max())
    assert 0.15 < fitted.feature("sp.arse`").missing < 0.25


def test_constant_and_empty_numeric_columns(fitted: Any) -> None:
    flat = fitted.feature("flat")
    assert (flat.edges, flat.fractions, flat.std) == ([5.0], [1.0, 0.0], 0.0)
    none = fitted.feature("none")
    assert (none.edges, none.fractions, none.count, none.missing) == ([], [0.0], 0, 1.0)
    assert (none.mean, none.std, none.min, none.max) == (None, None, None, None)


def test_category_frequencies_with_other_and_missing(fitted: Any, data: pd.DataFrame) -> None:
    c = fitted.feature("c")
    present = data["c"].dropna()
    shares = present.value_counts(normalize=True)
    assert c.categories == ["a", "b"] and c.bins == ["a", "b", OTHER]
    assert c.fractions == pytest.approx([shares["a"], shares["b"], shares["c"] + shares["d"]])
    assert c.fractions == pytest.approx(list(category_counts(list(present), c.categories) / len(present)))
    assert (c.count, c.missing) == (len(present), data["c"].isna().sum() / ROWS)
    gone = fitted.feature("all gone")
    assert (gone.categories, gone.fractions, gone.count, gone.missing) == ([], [0.0], 0, 1.0)


def test_the_training_values_have_psi_zero_and_shifted_ones_do_not(fitted: Any, data: pd.DataFrame) -> None:
    x = fitted.feature("x")
    values = data["x"].to_numpy()
    assert psi(x.fractions, bin_counts(values, x.edges)) == pytest.approx(0.0, abs=1e-12)
    assert 0.1 < psi(x.fractions, bin_counts(values + 5.0, x.edges)) < 0.5  # half a standard deviation: moderate
    assert psi(x.fractions, bin_counts(values + 10.0, x.edges)) > 0.5  # one: large


def test_the_document_round_trips_through_json(fitted: Any) -> None:
    assert TrainingDistributions.from_json(fitted.to_json()) == fitted
    assert (fitted.bins, fitted.relative_error, fitted.split) == (10, ERROR, "train")


def test_missing_values_are_those_the_cleaning_steps_make(spark: Any) -> None:
    """Null spellings, blanks, non-finite numbers and non-numbers in a numeric column are all missing (what serving
    imputes); in a categorical column null spellings and blanks are."""
    raw_x = ["1", "2", " 3 ", "NA", "", "inf", "abc", None, "4", "5"]
    raw_c = ["a", " a", "NULL", "", "b", "True", "true", None, "3.0", "3"]
    rows = [(x, c, "y") for x, c in zip(raw_x, raw_c, strict=True)]
    raw = spark.createDataFrame(rows, "x string, c string, y string")
    parsed = steps.parse_values(raw, ["x"], ["c"], "y", "classification")
    cleaned = steps.clean_values(parsed, ["x"], ["c"], "classification")
    fitted = fit_distributions(
        cleaned, ["x"], [CategoricalFeature("c", ["a", "true", "3"])], dataset="d", snapshot_id="s", bins=5
    )
    x, c = fitted.feature("x"), fitted.feature("c")
    assert (x.count, x.missing, x.min, x.max, x.mean) == (5, 0.5, 1.0, 5.0, 3.0)
    assert x.edges == [1.0, 2.0, 3.0, 4.0] and x.fractions == pytest.approx([0.2] * 5)
    assert (c.count, c.missing) == (7, 0.3)
    assert c.fractions == pytest.approx([2 / 7, 2 / 7, 2 / 7, 1 / 7])  # a, true, 3, and b in __other__


def test_no_features_and_the_edges_alone(spark: Any, data: pd.DataFrame) -> None:
    frame = spark_frame(spark, data[["x"]])
    fitted = fit_distributions(frame, [], [], dataset="d", snapshot_id="s")
    assert (fitted.rows, fitted.numeric, fitted.categorical) == (ROWS, [], [])
    assert quantile_edges(frame, [], 10, ERROR) == []
    (quartiles,) = quantile_edges(frame, ["x"], 4, ERROR)
    assert len(quartiles) == 3 and all(
        rank_within_tolerance(data["x"].to_numpy(), e, p) for e, p in zip(quartiles, [0.25, 0.5, 0.75], strict=True)
    )


def test_a_large_split_takes_its_edges_from_a_sample_and_still_counts_every_row(
    spark: Any, data: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributions, "QUANTILE_SAMPLE_ROWS", 1_000)  # a quarter of the rows
    frame = spark_frame(spark, data[["x"]])
    fitted = fit_distributions(frame, ["x"], [], dataset="d", snapshot_id="s")
    x, values = fitted.feature("x"), data["x"].to_numpy()
    assert x.edges != quantile_edges(frame, ["x"], 10, ERROR)[0]  # from the sample, not from every row
    assert len(x.edges) == 9 and x.count == ROWS
    for decile, edge in enumerate(x.edges, start=1):  # a sample of ~1,000: ranks within a few percent
        assert abs(np.mean(values <= edge) - decile / 10) < 0.05
    assert x.fractions == pytest.approx(list(bin_counts(values, x.edges) / ROWS), abs=0)  # exact all the same


@pytest.mark.parametrize("fields", [1, 4, 9])
def test_bins_counted_over_several_aggregations_are_the_same_counts(
    spark: Any, data: pd.DataFrame, fitted: TrainingDistributions, monkeypatch: pytest.MonkeyPatch, fields: int
) -> None:
    """A wide dataset's conditional counts take several passes (CODEGEN_FIELDS each); a pass boundary inside a
    column's edges or categories must not move a count."""
    monkeypatch.setattr(distributions, "CODEGEN_FIELDS", fields)
    categories = [CategoricalFeature("c", ["a", "b"]), CategoricalFeature("all gone", [])]
    numeric = ["x", "ties", "sp.arse`", "flat", "none"]
    again = fit_distributions(spark_frame(spark, data), numeric, categories, dataset="d", snapshot_id="s")
    assert again == fitted
