"""ml.serve.validation: the request checks as pure functions. Every refusal is a RequestError with the status to answer
and a message naming the rows, columns and reasons (the same cases over HTTP: test_app.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ml.features import FeatureSpec, NumericFeature
from ml.serve.validation import MAX_ERRORS_REPORTED, MAX_JSON_DEPTH, RequestError, parse_body, validate_rows
from tests.support.stand_in_model import make_spec

SPEC = make_spec()  # numeric x1, x2; categorical color
GOOD = {"x1": 1.0, "x2": 1.0, "color": "red"}


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b'{"rows": [', ["not valid JSON"]),
        (b"", ["empty request body", '{"rows"']),
        (b"  \n", ["empty request body"]),
        (b"\xff\xfe", ["JSON"]),
        (b"NaN-ish", ["not valid JSON"]),
    ],
)
def test_parse_body_refuses_what_is_not_json(raw: bytes, names: list[str]) -> None:
    with pytest.raises(RequestError) as refused:
        parse_body(raw)
    assert refused.value.status == 400 and all(name in refused.value.message for name in names)


def test_parse_body_reads_json() -> None:
    assert parse_body(b'{"rows": [{"x1": 1}]}') == {"rows": [{"x1": 1}]}
    assert parse_body(b"[1]") == [1]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ([1, 2], 400, ["JSON object", "array"]),
        ("rows", 400, ["JSON object", "string"]),
        (None, 400, ["JSON object", "null"]),
        ({"data": []}, 400, ["missing 'rows'", "data"]),
        ({"rows": [], "extra": 1}, 400, ["unknown top-level fields", "extra"]),
        ({"rows": {"x1": 1}}, 400, ["'rows' must be an array", "object"]),
        ({"rows": []}, 400, ["'rows' is empty"]),
        ({"rows": [GOOD] * 6}, 413, ["too many rows", "6 > 5", "split the request"]),
        ({"rows": [5]}, 422, ["row 0", "object", "number"]),
        ({"rows": [{"x1": 1.0, "color": "red"}]}, 422, ["row 0", "missing fields", "x2"]),
        ({"rows": [{**GOOD, "colour": "red"}]}, 422, ["row 0", "unknown fields", "colour", "expected"]),
        ({"rows": [GOOD, {**GOOD, "x1": "high"}]}, 422, ["row 1, column 'x1'", "expected a number", 'string "high"']),
        ({"rows": [{**GOOD, "x1": True}]}, 422, ["row 0, column 'x1'", "boolean"]),
        ({"rows": [{**GOOD, "x2": [1]}]}, 422, ["row 0, column 'x2'", "array"]),
        ({"rows": [{**GOOD, "color": {"a": 1}}]}, 422, ["row 0, column 'color'", "object"]),
        ({"rows": [{**GOOD, "color": False}]}, 422, ["row 0, column 'color'", "boolean"]),
    ],
)
def test_validate_rows_refuses_naming_the_problem(body: Any, status: int, names: list[str]) -> None:
    with pytest.raises(RequestError) as refused:
        validate_rows(body, SPEC, max_rows=5)
    assert refused.value.status == status, refused.value.message
    for name in names:
        assert name in refused.value.message


def test_valid_rows_are_returned_as_they_are() -> None:
    rows = [GOOD, {"x1": None, "x2": None, "color": None}, {"x1": 1, "x2": 2.5, "color": 3}]
    assert validate_rows({"rows": rows}, SPEC, max_rows=3) is rows  # null is missing (imputed); numbers are categories


def test_errors_are_reported_for_several_rows_at_once() -> None:
    rows = [{"x1": "a", "x2": 1.0, "color": "red"}, {"x2": 1.0, "color": "red"}, {"x1": 1, "x2": "b", "color": "x"}]
    with pytest.raises(RequestError) as refused:
        validate_rows({"rows": rows}, SPEC, max_rows=10)
    message = refused.value.message
    assert "row 0, column 'x1'" in message and "row 1: missing fields ['x1']" in message
    assert "row 2, column 'x2'" in message and "first errors only" not in message


def test_only_the_first_errors_are_reported() -> None:
    rows = [{"x1": "bad", "x2": "bad", "color": "red"}] * 50
    with pytest.raises(RequestError) as refused:
        validate_rows({"rows": rows}, SPEC, max_rows=100)
    message = refused.value.message
    assert message.startswith("invalid rows (first errors only): ")
    assert message.count("column") == MAX_ERRORS_REPORTED and "row 49" not in message


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(RequestError) as refused:
        validate_rows({"rows": [{**GOOD, "x1": "y" * 500}]}, SPEC, max_rows=1)
    assert '"yyyyyyyyyy' in refused.value.message and "..." in refused.value.message
    assert len(refused.value.message) < 300


def test_request_error_defaults_to_400() -> None:
    error = RequestError("bad")
    assert (error.status, error.message, str(error)) == (400, "bad", "bad")
    assert json.dumps({"error": error.message})


# --- numbers and nesting that JSON parsing alone lets through (issue 14) ---------------------------------------------

ROW_TAIL = b', "x2": 1, "color": "red"}]}'


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b'{"rows": [{"x1": NaN' + ROW_TAIL, ["row 0, column 'x1'", "NaN", "not a finite number", "null"]),
        (b'{"rows": [{"x1": Infinity' + ROW_TAIL, ["row 0, column 'x1'", "Infinity"]),
        (b'{"rows": [{"x1": 1, "x2": 2, "color": "r"}, {"x1": -Infinity' + ROW_TAIL, ["row 1, column 'x1'"]),
        (b'{"rows": [{"x1": 1e39' + ROW_TAIL, ["row 0, column 'x1'", "1e+39", "float32"]),
        (b'{"rows": [{"x1": -3.5e38' + ROW_TAIL, ["row 0, column 'x1'", "float32"]),
        (b'{"rows": [{"x1": 1e400' + ROW_TAIL, ["row 0, column 'x1'", "beyond even float64"]),
        (b'{"rows": [{"x1": 1' + b"0" * 400 + ROW_TAIL, ["row 0, column 'x1'", "float32", "401 digits"]),
        (b'{"rows": [{"x1": 1' + b"0" * 5000 + ROW_TAIL, ["too many digits"]),
        (b'{"rows": [{"x1": 1, "x2": 1, "color": [1, [NaN]]}]}', ["row 0, column 'color'", "[1][0]", "NaN"]),
        (b'{"rows": [1e39]}', ["row 0:", "float32"]),
        (b'{"rows": [], "n": NaN}', ["'n'", "NaN"]),
        (b"NaN", ["the body", "NaN"]),
    ],
)
def test_parse_body_refuses_non_finite_and_out_of_range_numbers(raw: bytes, names: list[str]) -> None:
    with pytest.raises(RequestError) as refused:
        parse_body(raw)
    assert refused.value.status == 400, refused.value.message
    for name in names:
        assert name in refused.value.message, refused.value.message
    assert "set_int_max_str_digits" not in refused.value.message  # no server-side advice in a client's error


def test_parse_body_accepts_numbers_up_to_float32s_range() -> None:
    biggest = float(np.finfo(np.float32).max)
    body = parse_body(json.dumps({"rows": [{"x1": biggest, "x2": -biggest, "color": 10**38}]}).encode())
    assert body == {"rows": [{"x1": biggest, "x2": -biggest, "color": 10**38}]}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
def test_parse_body_refuses_deep_nesting(depth: int) -> None:
    raw = b'{"rows": [{"x1": ' + b"[" * depth + b"]" * depth + ROW_TAIL
    with pytest.raises(RequestError) as refused:
        parse_body(raw)
    assert refused.value.status == 400 and "nested deeper than" in refused.value.message, refused.value.message
    if depth < 1000:  # parsed, then refused by the walk: the message says where
        assert "row 0, column 'x1'" in refused.value.message


def test_parse_body_accepts_nesting_up_to_the_limit() -> None:
    value: Any = 1.0
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    assert parse_body(json.dumps(value).encode()) == value
    with pytest.raises(RequestError, match="nested deeper than"):
        parse_body(json.dumps([value]).encode())


def test_a_value_beyond_the_models_range_once_standardised_is_refused() -> None:
    """A number within float32's range can still overflow float32 once standardised by a small std."""
    spec = FeatureSpec(
        dataset="d",
        snapshot_id="s",
        task="regression",
        target="t",
        numeric=[NumericFeature("x", fill=0.0, mean=0.0, std=1e-3)],
        categorical=[],
    )
    assert validate_rows({"rows": [{"x": 3e35}]}, spec, max_rows=1)  # 3e38 once standardised: still finite
    with pytest.raises(RequestError) as refused:
        validate_rows({"rows": [{"x": 1}, {"x": 3e36}]}, spec, max_rows=2)
    assert refused.value.status == 422
    assert "row 1, column 'x'" in refused.value.message and "standardised" in refused.value.message


def test_number_problems_are_reported_together_in_document_order() -> None:
    raw = (
        b'{"rows": [{"x1": NaN, "x2": 1, "color": "r"}, {"x1": 1, "x2": 2, "color": "r"}, {"x1": 1, "x2": 1e39'
        + ROW_TAIL
    )
    with pytest.raises(RequestError) as refused:
        parse_body(raw.replace(ROW_TAIL, b', "color": "r"}]}'))
    message = refused.value.message
    assert message.index("row 0, column 'x1'") < message.index("row 2, column 'x2'"), message
