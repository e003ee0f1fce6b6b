"""ml.json_values: the one conversion of values for JSON, and the finite-number check."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from ml.json_values import is_finite_number, json_safe


def test_plain_values_are_kept() -> None:
    for value in (None, True, False, 0, -3, 2.5, "text", ""):
        assert json_safe(value) == value and type(json_safe(value)) is type(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")])
def test_non_finite_numbers_become_null(value: float) -> None:
    assert json_safe(value) is None


def test_numpy_scalars_become_python_numbers() -> None:
    assert json_safe(np.int64(7)) == 7 and type(json_safe(np.int64(7))) is int
    assert json_safe(np.float32(0.5)) == 0.5 and type(json_safe(np.float32(0.5))) is float
    assert json_safe(np.bool_(True)) is True
    assert json_safe(np.array(3.0)) == 3.0  # a 0-d array has .item()


def test_containers_are_converted_deeply() -> None:
    value = {"a": (1, np.int32(2), [math.nan, {"b": np.float64(1.5)}]), 3: "three", None: {"x": math.inf}}
    assert json_safe(value) == {"a": [1, 2, [None, {"b": 1.5}]], "3": "three", "None": {"x": None}}
    json.dumps(json_safe(value), allow_nan=False)  # strict JSON


def test_other_objects_become_their_text() -> None:
    assert json_safe(Path("/tmp/x")) == "/tmp/x"
    assert json_safe(Decimal("1.5")) == "1.5"
    assert json_safe(np.array([1, 2])) == "[1 2]"  # .item() refuses an array of several values
    assert json_safe({1, 2}) in ("{1, 2}", "{2, 1}")


def test_is_finite_number() -> None:
    assert all(is_finite_number(v) for v in (0, -1, 2.5, 1e308, np.float64(1.0)))
    assert not any(is_finite_number(v) for v in (True, False, math.nan, math.inf, -math.inf, "1", None, [1]))
