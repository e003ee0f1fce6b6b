"""Request validation of the prediction service: pure functions, unit-tested without a server.

Every refusal is a RequestError with the HTTP status to answer and a message naming the rows, columns and reasons.
The body's JSON is refused (400) when it holds what the model's float32 inputs cannot take: NaN/Infinity literals
(Python's json accepts them), numbers beyond float32's range (they would become inf, and the answer NaN), or nesting
deeper than MAX_JSON_DEPTH (Python's parser recurses).
"""

from __future__ import annotations

import json
import math
from functools import cache
from itertools import chain, repeat
from operator import eq, itemgetter
from typing import Any

import numpy as np

from ml.features import FeatureSpec, NumericFeature

MAX_ERRORS_REPORTED = 10
MAX_JSON_DEPTH = 32  # a good body nests 4 levels ({"rows": [{column: value}]}); the parser recurses per level
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NONE = type(None)
# Exact types (json.loads makes no subclasses) that validate_rows' column-by-column check passes; anything else is
# looked at row by row. A bool is no number here, whatever numpy says.
_SCALARS = frozenset({float, int, str, _NONE})
_NUMBERS = frozenset({float, int, _NONE})


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


class _NonFinite:
    """What a NaN/Infinity/-Infinity literal parses to: a marker, so that the refusal can say where it was."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def parse_body(raw: bytes) -> Any:
    """The body's JSON value, or RequestError (400) naming what is wrong and where."""
    if not raw.strip():
        raise RequestError('empty request body: send JSON {"rows": [{feature: value, ...}, ...]}')
    try:
        body = _parse(raw)
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8 JSON") from None
    except RecursionError:  # the C parser recurses per level: only a body far deeper than the limit gets here
        raise RequestError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:
        if "integer string conversion" in str(error):  # Python's limit on digits (its message advises the server)
            raise RequestError("request body has a number with too many digits (beyond float32's range)") from None
        raise RequestError(f"request body is not valid JSON: {error}") from None
    _check_values(body)
    return body


@cache
def _fast_decoder() -> Any:
    import msgspec

    return msgspec.json.Decoder()


def _parse(raw: bytes) -> Any:
    """The body's JSON value: msgspec's parser (~4x Python's on a 1000-row body, ~10 us less on one row), and where it
    refuses the body, Python's, which decides with its own messages and its own extensions (NaN/Infinity literals,
    numbers beyond a double's range, UTF-16/32 and a BOM, lone surrogates, very deep nesting): every answer is
    Python's json's (tests/unit/ml/serve/test_validation_parse.py compares them)."""
    import msgspec

    try:
        return _fast_decoder().decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return json.loads(raw, parse_constant=_NonFinite)


def _check_values(body: Any) -> None:
    """Refuse non-finite numbers, numbers beyond float32's range and deep nesting, anywhere in the body.

    An explicit stack, not recursion: this walk must not fail on the nesting it is there to refuse. Paths are built
    for containers only, so that the walk costs little more than the parsing."""
    if problem := _scalar_problem(body):
        raise RequestError(f"invalid numbers: {_where(())}: {problem}")
    problems: list[str] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())] if isinstance(body, dict | list) else []
    while stack and len(problems) < MAX_ERRORS_REPORTED:
        container, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:  # the body is level 1: a container at path length n is at level n + 1
            raise RequestError(f"{_where(path)}: request body is nested deeper than {MAX_JSON_DEPTH} levels")
        children: list[tuple[Any, tuple[str | int, ...]]] = []
        for key, item in container.items() if isinstance(container, dict) else enumerate(container):
            kind = type(item)  # exact types: json.loads makes no subclasses; the common cases first, for speed
            if (kind is float and -FLOAT32_MAX <= item <= FLOAT32_MAX) or kind is str or item is None:
                continue
            if kind is dict or kind is list:
                children.append((item, (*path, key)))
            elif problem := _scalar_problem(item):
                problems.append(f"{_where((*path, key))}: {problem}")
        stack.extend(reversed(children))  # popped in document order
    if problems:
        more = " (first errors only)" if len(problems) >= MAX_ERRORS_REPORTED else ""
        raise RequestError("invalid numbers" + more + ": " + "; ".join(problems[:MAX_ERRORS_REPORTED]))


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, _NonFinite):
        return non_finite(value.literal)
    if isinstance(value, int | float) and not isinstance(value, bool) and not _within_float32(value):
        return out_of_range(value)
    return None


def non_finite(literal: str) -> str:
    """Why a NaN or an infinity sent as a value is refused."""
    return f"{literal} is not a finite number (send null for a missing value)"


def out_of_range(value: float) -> str:
    """Why a number beyond float32's range is refused."""
    return (
        f"number out of range ({number_text(value)}; the model's float32 inputs take magnitudes up to "
        f"{FLOAT32_MAX:.8g})"
    )


def overflows_once_standardised(value: float, feature: NumericFeature) -> str:
    """Why a number float32 holds, but not once standardised with the training mean and std, is refused."""
    return (
        f"{number_text(value)} is beyond the model's range (standardised with mean {feature.mean:.6g} and std "
        f"{feature.std:.6g}, it overflows float32)"
    )


def standardised_overflow(numeric: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Where a finite number (`numeric`: one column per numeric feature, in spec order) overflows float32 once
    standardised as `FeatureSpec.transform` does it; a non-finite one is imputed, never standardised."""
    return np.isfinite(numeric) & ~(np.abs(spec.standardised(numeric)) <= FLOAT32_MAX)


def _within_float32(value: float) -> bool:
    if isinstance(value, int):  # int against float compares exactly, without float(huge int)'s OverflowError
        return abs(value) <= FLOAT32_MAX
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX  # 1e400 parses as inf


def number_text(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):  # what the parser made of e.g. 1e400
        return "beyond even float64"
    if isinstance(value, int) and abs(value) > 10**20:  # a huge integer would flood the message
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _where(path: tuple[str | int, ...]) -> str:
    """Where a value is: `row 3, column 'x1'` (then any index below it), or the path from the body's root."""
    if len(path) >= 2 and path[0] == "rows" and isinstance(path[1], int):
        where = f"row {path[1]}"
        if len(path) >= 3:
            where += f", column {path[2]!r}"
        return where + (" at " + "".join(f"[{key!r}]" for key in path[3:]) if len(path) > 3 else "")
    return "the body" + "".join(f"[{key!r}]" for key in path)


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

    numeric = {f.name: f for f in spec.numeric}
    categorical = [f.name for f in spec.categorical]
    expected = set(numeric) | set(categorical)
    if len(rows) >= _COLUMNWISE_FROM and _valid_columnwise(rows, spec, expected):
        return rows
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
        for name, feature in numeric.items():
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(
                    f"row {index}, column {name!r}: expected a number or null, got {_type_name(value)} {_short(value)}"
                )
            elif value is not None and not _standardises_within_float32(value, feature.mean, feature.std):
                problems.append(f"row {index}, column {name!r}: {overflows_once_standardised(value, feature)}")
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


_COLUMNWISE_FROM = 8  # rows: below, the loop costs less than setting up numpy


def _valid_columnwise(rows: list[Any], spec: FeatureSpec, expected: set[str]) -> bool:
    """True when every row passes `validate_rows`' loop, checked column by column: every row a dict with exactly the
    input columns, numeric values numbers or null that standardise within float32 (numpy, the same float64
    arithmetic as `_standardises_within_float32`), categorical values strings, numbers or null. False is no
    verdict: the loop then says what is wrong (or finds nothing)."""
    if set(map(type, rows)) != {dict} or not all(map(eq, map(dict.keys, rows), repeat(expected))):
        return False
    numeric = [f.name for f in spec.numeric]
    categorical = [f.name for f in spec.categorical]
    if categorical and not set(map(type, _values(rows, categorical))) <= _SCALARS:
        return False
    if not numeric:
        return True
    values = _values(rows, numeric)
    if not set(map(type, values)) <= _NUMBERS:
        return False
    try:
        raw = np.array(values, dtype=np.float64).reshape(len(rows), len(numeric))  # null: NaN
    except OverflowError:  # an integer beyond float64: the loop refuses it
        return False
    return not standardised_overflow(raw, spec).any()  # NaN (null) is imputed: it passes, as in the loop


def _values(rows: list[dict[str, Any]], names: list[str]) -> list[Any]:
    """The values of the columns `names`, row after row, in one list."""
    if len(names) == 1:
        return list(map(itemgetter(names[0]), rows))
    return list(chain.from_iterable(map(itemgetter(*names), rows)))


def _standardises_within_float32(value: float, mean: float, std: float) -> bool:
    """Whether the model's input for this value, (value - mean) / std as FeatureSpec.transform computes it, is a
    finite float32 (a small std can push a value that float32 holds beyond it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return True  # transform imputes it (parse_body refuses it before, for a request)
    try:
        return _within_float32((float(value) - mean) / (std or 1.0))
    except OverflowError:  # an int beyond float64: only when called without parse_body's checks
        return False


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def row_refusal(row: dict[str, Any], spec: FeatureSpec) -> str | None:
    """The service's error message for this one row sent alone (`{"rows": [row]}`), or None when it would predict:
    what batch scoring records for a row instead of failing the whole table."""
    body = {"rows": [row]}
    try:
        _check_values(body)
        validate_rows(body, spec, 1)
    except RequestError as error:
        return error.message
    return None
