"""ml.features: the FeatureSpec transform serving applies to raw rows (exactly as the Spark job did in training), the
category keys and the rule of what counts as a number."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest

from ml.features import (
    NUMBER_PATTERN,
    OTHER,
    SPEC_VERSION,
    SPLITS,
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    normalise_category,
    parse_number,
)


def make_spec(**overrides: object) -> FeatureSpec:
    values: dict[str, object] = {
        "dataset": "toy",
        "snapshot_id": "abc123",
        "task": "classification",
        "target": "species",
        "numeric": [
            NumericFeature("x", fill=2.0, mean=1.0, std=2.0),
            NumericFeature("flat", fill=3.0, mean=3.0, std=0.0),
        ],
        "categorical": [CategoricalFeature("colour", ["red", "blue"]), CategoricalFeature("size", ["3", "10"])],
        "classes": ["a", "b", "c"],
        "rows": {"train": 8, "validation": 1, "test": 1},
        "dropped": {"without_target": 1, "duplicates": 2},
    }
    values.update(overrides)
    return FeatureSpec(**values)  # type: ignore[arg-type]


def row(spec: FeatureSpec, record: dict[str, object]) -> dict[str, float]:
    """One transformed row, by column name."""
    matrix = spec.transform([record])
    return dict(zip(spec.feature_columns, matrix[0].tolist(), strict=True))


def test_columns_in_order() -> None:
    spec = make_spec()
    assert spec.feature_columns == [
        "x",
        "flat",
        "colour=red",
        "colour=blue",
        f"colour={OTHER}",
        "size=3",
        "size=10",
        f"size={OTHER}",
    ]
    assert spec.input_columns == ["x", "flat", "colour", "size"]
    assert spec.num_outputs == 3
    assert make_spec(task="regression", classes=None).num_outputs == 1


def test_standardises_numerics_with_the_fitted_mean_and_std() -> None:
    out = row(make_spec(), {"x": 5, "flat": 7.5, "colour": "red", "size": "3"})
    assert out["x"] == pytest.approx((5 - 1.0) / 2.0)
    # std 0 divides by 1, never by zero
    assert out["flat"] == pytest.approx(7.5 - 3.0)
    assert out["colour=red"] == 1.0 and out["colour=blue"] == 0.0 and out[f"colour={OTHER}"] == 0.0


def test_numbers_as_strings_are_numbers() -> None:
    out = row(make_spec(), {"x": " 5 ", "flat": "1e1"})
    assert out["x"] == pytest.approx(2.0)
    assert out["flat"] == pytest.approx(7.0)


@pytest.mark.parametrize("missing", [None, "", "   ", "absent"])
def test_missing_numeric_takes_the_fill(missing: object) -> None:
    record: dict[str, object] = {} if missing == "absent" else {"x": missing}
    out = row(make_spec(), record)
    assert out["x"] == pytest.approx((2.0 - 1.0) / 2.0)
    assert out["flat"] == pytest.approx(0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity", np.float64("nan")])
def test_non_finite_numeric_takes_the_fill(value: object) -> None:
    assert row(make_spec(), {"x": value})["x"] == pytest.approx(0.5)


@pytest.mark.parametrize("value", ["green", "RED", None, "", 42])
def test_unseen_or_missing_category_is_other(value: object) -> None:
    out = row(make_spec(), {"colour": value})
    assert out[f"colour={OTHER}"] == 1.0
    assert out["colour=red"] == 0.0 and out["colour=blue"] == 0.0


@pytest.mark.parametrize("value", [3, 3.0, "3", "3.0", " 3 ", "3."])
def test_integral_values_are_one_category(value: object) -> None:
    out = row(make_spec(), {"size": value})
    assert out["size=3"] == 1.0 and out[f"size={OTHER}"] == 0.0


def test_category_keys_mirror_spark() -> None:
    # Spark's trim removes spaces only; booleans cast to string are lower case; numbers stay as written otherwise.
    assert normalise_category("  red ") == "red"
    assert normalise_category("\tred") == "\tred"
    assert normalise_category(True) == "true" and normalise_category(False) == "false"
    assert normalise_category("True") == "true" and normalise_category("FALSE") == "false"
    assert normalise_category("tRUE") == "tRUE"
    assert normalise_category("007") == "007"
    assert normalise_category("3D") == "3D"
    assert normalise_category("-4.00") == "-4"
    assert normalise_category(2.5) == "2.5"
    assert normalise_category(10.0) == "10"


def test_wrong_type_names_row_and_column() -> None:
    spec = make_spec()
    with pytest.raises(ValueError, match=r"row 1, column 'x'.*'abc'"):
        spec.transform([{"x": 1}, {"x": "abc"}])
    with pytest.raises(ValueError, match=r"row 0, column 'flat'.*boolean"):
        spec.transform([{"flat": True}])
    with pytest.raises(ValueError, match=r"row 0, column 'x'"):
        spec.transform([{"x": [1, 2]}])
    # what the Spark job would not read as a number either
    for odd in ("1_000", "3D", "0x10", "١٢"):
        with pytest.raises(ValueError, match=r"row 0, column 'x'"):
            spec.transform([{"x": odd}])


def test_matrix_shape_and_dtype() -> None:
    spec = make_spec()
    matrix = spec.transform([{"x": 1, "colour": "blue"}, {"x": 3, "colour": "red", "size": 10}])
    assert matrix.shape == (2, len(spec.feature_columns))
    assert matrix.dtype == np.float32
    assert spec.transform([]).shape == (0, len(spec.feature_columns))
    # every categorical contributes exactly one hot column per row
    assert matrix[:, 2:5].sum(axis=1).tolist() == [1.0, 1.0]
    assert matrix[:, 5:8].sum(axis=1).tolist() == [1.0, 1.0]


def test_json_round_trip() -> None:
    spec = make_spec()
    text = spec.to_json()
    data = json.loads(text)
    assert data["feature_columns"] == spec.feature_columns
    assert data["version"] == SPEC_VERSION
    again = FeatureSpec.from_json(text)
    assert again == spec
    assert again.feature_columns == spec.feature_columns
    records: list[dict[str, Any]] = [
        {"x": 4, "flat": None, "colour": "blue", "size": "7"},
        {"x": "nan", "colour": "red"},
    ]
    np.testing.assert_array_equal(again.transform(records), spec.transform(records))
    regression = make_spec(task="regression", classes=None, categorical=[])
    assert FeatureSpec.from_json(regression.to_json()) == regression


def test_unknown_version_is_refused() -> None:
    data = json.loads(make_spec().to_json())
    data["version"] = SPEC_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        FeatureSpec.from_dict(data)


def test_decode_labels() -> None:
    assert make_spec().decode_labels([2, 0]) == ["c", "a"]
    with pytest.raises(ValueError):
        make_spec(task="regression", classes=None).decode_labels([0])


# parse_number: the reference rule of what counts as a number (the ingest check and the Spark job apply it too)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", 5.0),
        (" 5 ", 5.0),
        ("\t-2.5\n", -2.5),
        ("\x0b5\f", 5.0),
        ("+.5e-3", 0.0005),
        ("1.", 1.0),
        ("1E+5", 100000.0),
        ("007", 7.0),
    ],
)
def test_plain_decimal_numbers(text: str, expected: float) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", ["nan", " NaN ", "inf", "-Infinity", "+inf", "1e400"])
def test_spellings_of_non_finite_numbers_are_numbers_that_mean_missing(text: str) -> None:
    value = parse_number(text)
    assert value is not None and not math.isfinite(value)


@pytest.mark.parametrize(
    "text",
    # Python's float() takes the first five; Spark's cast takes "3D", "1f" and hex; "\xa05" has a no-break space,
    # which Spark does not trim (so Python must not either).
    ["1_000", "١٢", "\u20035", "\xa05", "5\xa0", "3D", "1f", "0x10", "", " ", "--1", "1e", "e1", "1,5", "5 5", "nanx"],
)
def test_anything_else_is_not_a_number(text: str) -> None:
    assert parse_number(text) is None


def test_the_pattern_spells_whitespace_the_same_for_every_regex_engine() -> None:
    # Python, pyarrow's RE2 and Java read `\s` differently; the pattern names ASCII whitespace instead.
    assert "\\s" not in NUMBER_PATTERN
    assert re.fullmatch(NUMBER_PATTERN, "\u00a05") is None


def test_splits() -> None:
    assert SPLITS == ("train", "validation", "test")
