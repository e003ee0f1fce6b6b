"""ml.serve.validation: the request checks as pure functions. Every refusal is a RequestError with the status to answer
and a message naming the rows, columns and reasons (the same cases over HTTP: test_app.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml.serve.validation import MAX_ERRORS_REPORTED, RequestError, parse_body, validate_rows
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
