"""Request validation of the prediction service: pure functions, unit-tested without a server.

Every refusal is a RequestError with the HTTP status to answer and a message naming the rows, columns and reasons.
"""

from __future__ import annotations

import json
from typing import Any

from ml.features import FeatureSpec

MAX_ERRORS_REPORTED = 10


class RequestError(Exception):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_body(raw: bytes) -> Any:
    if not raw.strip():
        raise RequestError('empty request body: send JSON {"rows": [{feature: value, ...}, ...]}')
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8 JSON") from None
    except ValueError as error:
        raise RequestError(f"request body is not valid JSON: {error}") from None


def validate_rows(body: Any, spec: FeatureSpec, max_rows: int) -> list[dict[str, Any]]:
    """The request's rows, or RequestError naming the rows, columns and reasons of what is wrong.

    Every raw input column must be present in every row (null means missing and is imputed like in training);
    numeric columns take numbers or null; categorical columns take strings, numbers or null; other fields are refused
    so that a misspelt column cannot silently become a missing value."""
    if not isinstance(body, dict):
        raise RequestError(f'the body must be a JSON object {{"rows": [...]}}, got {_type_name(body)}')
    if "rows" not in body:
        raise RequestError(f"missing 'rows' (the body has {sorted(body)})")
    unexpected = sorted(set(body) - {"rows"})
    if unexpected:
        raise RequestError(f'unknown top-level fields {unexpected}: the body is {{"rows": [...]}}')
    rows = body["rows"]
    if not isinstance(rows, list):
        raise RequestError(f"'rows' must be an array of objects, got {_type_name(rows)}")
    if not rows:
        raise RequestError("'rows' is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(f"too many rows: {len(rows)} > {max_rows} (the service's max_rows); split the request", 413)

    numeric = [f.name for f in spec.numeric]
    categorical = [f.name for f in spec.categorical]
    expected = set(numeric) | set(categorical)
    problems: list[str] = []
    for index, row in enumerate(rows):
        if len(problems) >= MAX_ERRORS_REPORTED:
            break
        if not isinstance(row, dict):
            problems.append(f"row {index}: must be an object of feature values, got {_type_name(row)}")
            continue
        missing = [name for name in spec.input_columns if name not in row]
        unknown = sorted(set(row) - expected)
        if missing:
            problems.append(f"row {index}: missing fields {missing}")
        if unknown:
            problems.append(f"row {index}: unknown fields {unknown} (expected {spec.input_columns})")
        for name in numeric:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(
                    f"row {index}, column {name!r}: expected a number or null, got {_type_name(value)} {_short(value)}"
                )
        for name in categorical:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
                problems.append(
                    f"row {index}, column {name!r}: expected a string, number or null, got "
                    f"{_type_name(value)} {_short(value)}"
                )
    if problems:
        more = " (first errors only)" if len(problems) >= MAX_ERRORS_REPORTED else ""
        raise RequestError("invalid rows" + more + ": " + "; ".join(problems[:MAX_ERRORS_REPORTED]), 422)
    return rows


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
