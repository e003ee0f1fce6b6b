"""FeatureSpec.transform (column by column) against the row-wise rule it replaced (tests/support/rowwise_transform.py):
seeded random rows of mixed types, edge spellings, missing values and unknown categories give the same float32
matrix byte for byte, and rows with bad values the same error (type and message: the first bad value in row order,
then column order)."""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from ml.features import (
    NON_FINITE_WORDS,
    OTHER,
    PYTHON_WHITESPACE,
    CategoricalFeature,
    CodedColumn,
    FeatureSpec,
    NumericFeature,
)
from tests.support.rowwise_transform import rowwise_transform

# The row-wise oracle casts values beyond float32 to inf with a warning (the columnar transform, silently).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

SPEC = FeatureSpec(
    dataset="mixed",
    snapshot_id="s",
    task="classification",
    target="y",
    numeric=[
        NumericFeature("a", fill=0.25, mean=0.25, std=1.5),
        NumericFeature("b", fill=3, mean=1, std=2),  # ints, as a hand-written spec may hold
        NumericFeature("flat", fill=-7.0, mean=-7.0, std=0.0),  # std 0 divides by 1
        NumericFeature("tiny", fill=1e-3, mean=1e-3, std=1e-30),  # pushes values beyond float32
        NumericFeature("zero", fill=0.0, mean=0.0, std=1.0),  # keeps the sign of -0.0
    ],
    categorical=[
        CategoricalFeature("colour", ["red", "blue", "Green"]),
        CategoricalFeature("code", ["3", "-4", "007", "2.5", "true", "false", "1e+16", "10000000000000000", "0"]),
        CategoricalFeature("odd", [OTHER, "x", "x", "nan", "[1, 2]", "10"]),  # OTHER and a duplicate as categories
    ],
    classes=["p", "q"],
)
NUMERIC = [feature.name for feature in SPEC.numeric]
CATEGORICAL = [feature.name for feature in SPEC.categorical]

SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c"]  # the pattern's whitespace
UNICODE_SPACES = ["\xa0", "\u3000", "\x1c", "\x85", "\u2028"]  # Python's strip() only: blank, never a number's


def decimal_text(rng: random.Random) -> str:
    """A plain decimal as a client may spell it: sign, digits, point, exponent, surrounding whitespace."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
    fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 25)))
    body = rng.choice([digits, f"{digits}.{fraction}", f".{fraction or '5'}", f"{digits}."])
    if rng.random() < 0.4:
        body += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 400))
    pad = "".join(rng.choice(SPACES) for _ in range(rng.randint(0, 2)))
    return pad + rng.choice(["", "+", "-"]) + body + pad[::-1]


def good_number(rng: random.Random) -> Any:
    """A value a numeric column takes: a number, a number's spelling, or missing / non-finite (the fill)."""
    kind = rng.random()
    if kind < 0.35:
        return rng.choice([rng.gauss(0, 1), rng.uniform(-1e6, 1e6), rng.gauss(0, 1) * 10 ** rng.randint(-320, 308)])
    if kind < 0.5:
        return rng.choice([rng.randint(-100, 100), rng.randint(-(2**70), 2**70), 2**63, -(2**63) - 1, 10**300])
    if kind < 0.7:
        return rng.choice([decimal_text(rng), repr(rng.uniform(-1e3, 1e3)), "007", "-0", "1e400", "4.9e-324"])
    if kind < 0.85:
        return rng.choice([None, "", "   ", "\t\n", *UNICODE_SPACES, "\u3000 \xa0", "absent"])
    if kind < 0.95:
        return rng.choice(
            [float("nan"), float("inf"), -float("inf"), np.float64("nan")]
            + [
                f"{pad}{word.upper() if rng.random() < 0.5 else word}{pad}"
                for pad in ("", " ", "\xa0")
                for word in rng.sample(sorted(NON_FINITE_WORDS), 2)
            ]
        )
    # rarer types the rule still reads: numpy scalars (np.bool_ is a number to float()), Decimal, Fraction, -0.0
    return rng.choice(
        [
            np.float64(2.5),
            np.float32(0.1),
            np.int64(-3),
            np.bool_(True),
            Decimal("1.25"),
            Fraction(1, 3),
            -0.0,
            1e39,
            np.str_(" 4 "),
            float(2**53 + 1),
        ]
    )


def bad_number(rng: random.Random) -> Any:
    """A value a numeric column refuses: a boolean, a spelling that is no plain decimal, a container, a huge int."""
    return rng.choice(
        [
            True,
            False,
            "abc",
            "1_000",
            "3D",
            "1f",
            "0x10",
            "١٢",
            "\xa05",
            "5\xa0",
            "\u20035",
            "5 5",
            "nanx",
            "--1",
            "1e",
            "e1",
            "1,5",
            "+",
            ".",
            "infinit",
            "\ud800",
            [1, 2],
            {"a": 1},
            (1,),
            b"5",
            10**400,
            np.str_("x"),
            object(),
        ]
    )


def category(rng: random.Random) -> Any:
    """A value a categorical column takes: known, unknown, spelt differently, typed, missing."""
    return rng.choice(
        [
            "red",
            " red ",
            "red\t",
            "RED",
            "blue",
            "Green",
            "green",
            "",
            "  ",
            None,
            "absent",
            "purple",
            "\u00e9t\u00e9",
            "3",
            3,
            3.0,
            "3.0",
            "3.",
            " 3 ",
            -4,
            "-4.00",
            -4.0,
            "007",
            2.5,
            "2.5",
            True,
            False,
            "TRUE",
            "True",
            "false",
            "tRUE",
            1,
            1.0,
            0,
            0.0,
            -0.0,
            "0",
            1e16,
            10**16,
            "1e+16",
            float("nan"),
            "nan",
            10,
            10.0,
            Decimal("1E+1"),
            Decimal("10"),
            [1, 2],
            (1, 2),
            np.float64(3.0),
            np.int64(7),
            np.str_("red"),
            OTHER,
            "x",
            1e15,
            10**15,
        ]
    )


def random_rows(rng: random.Random, count: int, bad_rate: float = 0.0) -> list[dict[str, Any]]:
    """Rows over every column. A numeric column may hold only Python numbers and None in a batch (when all of them
    do, the transform takes its quick path), or anything."""
    everywhere = rng.random() < 0.3
    plain = {name: everywhere or rng.random() < 0.3 for name in NUMERIC}
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for name in NUMERIC:
            if rng.random() < bad_rate:
                value: Any = rng.choice([True, False, 10**400]) if plain[name] else bad_number(rng)
            elif plain[name]:
                value = rng.choice([rng.gauss(5, 3), None, rng.randint(-9, 9), float("nan"), -0.0, 2**64 + 1, 1e300])
            else:
                value = good_number(rng)
            if value != "absent":
                row[name] = value
        for name in CATEGORICAL:
            if (value := category(rng)) != "absent":
                row[name] = value
        rows.append(row)
    return rows


def outcome(transform: Callable[[], np.ndarray]) -> tuple[str, Any]:
    """The matrix's bytes and shape, or the error's type and message."""
    try:
        matrix = transform()
    except Exception as error:
        return "error", (type(error).__name__, str(error))
    assert matrix.dtype == np.float32
    return "matrix", (matrix.shape, matrix.tobytes())


def assert_same(spec: FeatureSpec, rows: Sequence[Mapping[str, Any]]) -> str:
    expected = outcome(lambda: rowwise_transform(spec, rows))
    actual = outcome(lambda: spec.transform(rows))
    if actual != expected:  # say which row differs, not only that the bytes do
        if expected[0] == actual[0] == "matrix":
            old, new = rowwise_transform(spec, rows), spec.transform(rows)
            different = np.flatnonzero((old.view(np.uint32) != new.view(np.uint32)).any(axis=1))
            raise AssertionError(f"rows {different[:5].tolist()} differ: {[rows[i] for i in different[:5]]}")
        raise AssertionError(f"{str(actual)[:300]} != {str(expected)[:300]}")
    return expected[0]


@pytest.mark.parametrize("seed", range(4))
def test_thousands_of_good_rows_give_the_same_bytes(seed: int) -> None:
    rows = random_rows(random.Random(seed), 2500)
    assert assert_same(SPEC, rows) == "matrix"


def test_single_rows_give_the_same_bytes() -> None:
    rng = random.Random(11)
    for row in random_rows(rng, 400):
        assert assert_same(SPEC, [row]) == "matrix"


def test_rows_with_bad_values_give_the_same_first_error() -> None:
    rng = random.Random(5)
    kinds = {"matrix": 0, "error": 0}
    for _ in range(400):
        rows = random_rows(rng, rng.choice([1, 2, 5, 30]), bad_rate=rng.choice([0.01, 0.05, 0.3]))
        kinds[assert_same(SPEC, rows)] += 1
    assert min(kinds.values()) > 50, kinds  # both outcomes well exercised


def test_a_large_batch_with_a_few_bad_values_reports_the_first() -> None:
    rows = random_rows(random.Random(9), 3000, bad_rate=0.0005)
    assert assert_same(SPEC, rows) == "error"


@pytest.mark.parametrize(
    "rows",
    [
        [{"a": "1"}, None, {"a": "x"}],  # not a mapping: AttributeError at its row
        [{"a": "x"}, None],  # an earlier bad value first
        [{"colour": 10**5000}, {"a": "x"}],  # str() refuses the int: the categorical's error, in its row
        [{"a": 10**400, "colour": 10**5000}],  # the numeric column comes first within a row
        [{"b": "x", "a": True}],  # column order within a row
        [{"a": 1.0}, {"b": "5"}, {"b": "5 5"}, {"a": "\ud800"}],  # a lone surrogate: pyarrow cannot take it
        [{"zero": -0.0, "a": -0.0, "b": "-0"}],
    ],
)
def test_edge_cases(rows: list[Any]) -> None:
    assert_same(SPEC, rows)


class Faulty(Mapping[str, Any]):
    """A mapping whose get fails on one key: the error comes at that row and column, after earlier bad values."""

    def __init__(self, values: dict[str, Any], failing: str) -> None:
        self.values, self.failing = values, failing

    def __getitem__(self, key: str) -> Any:
        if key == self.failing:
            raise KeyError(f"cannot read {key}")
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key == self.failing else self.values.get(key, default)


@pytest.mark.parametrize("failing", ["a", "flat", "colour", "odd"])
def test_a_mapping_that_fails_to_read(failing: str) -> None:
    assert_same(SPEC, [{"a": 1}, Faulty({"a": 2, "b": "x"}, failing), {"a": "y"}])
    assert_same(SPEC, [{"a": 1}, Faulty({"a": 2, "b": 3}, failing), {"a": "y"}])


def test_specs_without_columns_of_a_kind() -> None:
    rows = random_rows(random.Random(3), 50)
    for spec in (
        FeatureSpec("d", "s", "regression", "y", SPEC.numeric, []),
        FeatureSpec("d", "s", "regression", "y", [], SPEC.categorical),
        FeatureSpec("d", "s", "regression", "y", [], []),
    ):
        assert assert_same(spec, rows) == "matrix"
        assert assert_same(spec, []) == "matrix"


def test_python_whitespace_is_what_str_strip_removes() -> None:
    every = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert sorted(PYTHON_WHITESPACE) == sorted(every)


def test_no_other_code_point_lowers_into_an_inf_or_nan_spelling() -> None:
    # Why the transform may lower-case with pyarrow's ascii_lower where parse_number uses str.lower().
    letters = set("".join(NON_FINITE_WORDS))
    lowering = [c for c in map(chr, range(128, sys.maxunicode + 1)) if any(ch in letters for ch in c.lower())]
    assert lowering == ["\u0130"]  # İ lowers to i + a combining dot: never a whole spelling


def test_rows_given_as_columns_give_the_same_bytes() -> None:
    """transform_columns (an Arrow request's path): numeric columns as float64, categorical values as Arrow's
    to_pylist gives them (str, int, float, bool, None)."""
    rng = random.Random(23)
    plain = [None, -0.0, 2**64 + 1, 1e300, float("nan"), 7]
    typed = (str, int, float, bool, type(None))
    rows = []
    for _ in range(2000):
        row: dict[str, Any] = {name: rng.choice([rng.gauss(5, 3), *plain]) for name in NUMERIC}
        for name in CATEGORICAL:
            while type(value := category(rng)) not in typed or value == "absent":
                pass
            row[name] = value
        rows.append(row)
    numeric = np.array([[row[name] for name in NUMERIC] for row in rows], dtype=np.float64)
    categorical = [[row[name] for row in rows] for name in CATEGORICAL]
    assert SPEC.transform_columns(numeric, categorical).tobytes() == rowwise_transform(SPEC, rows).tobytes()
    with pytest.raises(ValueError, match="expected 5 numeric and 3 categorical columns, got 4 and 3"):
        SPEC.transform_columns(numeric[:, :4], categorical)


def test_a_dictionary_encoded_column_gives_the_same_bytes() -> None:
    """A categorical column as its distinct values and each row's index (an Arrow request's string columns, through
    pyarrow's dictionary_encode) is encoded as the same values given one per row; as a sequence it is those values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = random.Random(29)
    rows = []
    for _ in range(500):
        row: dict[str, Any] = dict.fromkeys(NUMERIC, 1.0)
        for name in CATEGORICAL:
            while not isinstance(value := category(rng), str | None) or value == "absent":
                pass
            row[name] = value
        rows.append(row)
    numeric = np.ones((len(rows), len(NUMERIC)))
    coded = []
    for name in CATEGORICAL:
        encoded = pc.dictionary_encode(pa.array([row[name] for row in rows], pa.string()))
        distinct = [*encoded.dictionary.to_pylist(), None]
        coded.append(CodedColumn(distinct, encoded.indices.fill_null(len(distinct) - 1).to_numpy().astype(np.intp)))
        assert list(coded[-1]) == [row[name] for row in rows] and coded[-1][3:6] == [row[name] for row in rows[3:6]]
    fresh = dataclasses.replace(SPEC)  # a plan of its own: nothing remembered yet
    assert fresh.transform_columns(numeric, coded).tobytes() == rowwise_transform(SPEC, rows).tobytes()
    assert fresh.transform_columns(numeric, coded).tobytes() == rowwise_transform(SPEC, rows).tobytes()  # remembered
