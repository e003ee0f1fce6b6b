"""`FeatureSpec.transform`, column by column: numpy for numbers, pyarrow for strings in numeric columns, and
`normalise_category` once per distinct categorical value, giving byte for byte what the row-wise rule gives
(`to_float` and standardisation per numeric value, `normalise_category` and one-hot per categorical value;
tests/support/rowwise_transform.py keeps that rule as the tests' oracle and the benchmark's baseline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ml.features.rules import NON_FINITE_WORDS, NUMBER_PATTERN, OTHER, normalise_category, to_float

if TYPE_CHECKING:
    from ml.features.spec import CategoricalFeature, FeatureSpec

Error = tuple[
    int, int, BaseException
]  # (row, position of the column in `input_columns`, what the row-wise rule raised)

_NONE = type(None)
_FLOATS = frozenset({float, int})  # exact types whose numpy conversion is float()'s (a subclass may redefine it)
_NUMBER_KINDS = _FLOATS | {_NONE}  # numpy reads None as NaN: missing
# Types whose equal values key the same category; int, float and bool values equal across types (1, 1.0, True;
# 1e16, 10**16) are keyed apart, so their type joins the key when a column mixes them.
_CATEGORY_KINDS = frozenset({str, float, int, bool, _NONE})
_MIXABLE = frozenset({float, int, bool})
_MEMO_LIMIT = 10_000  # raw strings remembered per categorical feature, across requests
# What Python's str.strip() removes (str.isspace), for pyarrow's trim: a test checks it against every code point.
PYTHON_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
PYTHON_WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"


class Plan:
    """A spec's columns, standardisation constants and one-hot encoders, built once per spec."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.names = spec.input_columns
        self.numeric = spec.numeric
        self.width = len(spec.feature_columns)
        # Each operand as the row-wise rule had it: a Python number becomes the same float64 in numpy as in Python's
        # arithmetic, and the fill's standardised value is that rule's own expression.
        self.mean = np.array([float(f.mean) for f in spec.numeric])
        self.scale = np.array([float(f.std or 1.0) for f in spec.numeric])
        self.filled = np.array([(f.fill - f.mean) / (f.std or 1.0) for f in spec.numeric])
        self.encoders = [_Encoder(feature) for feature in spec.categorical]


class CodedColumn(Sequence[Any]):
    """A categorical column as its distinct values and, per row, the index of its value among them (what pyarrow's
    `dictionary_encode` gives): `normalise_category` then runs once per distinct value and the rows are one take,
    without a Python object per row. As a sequence it is the column's values."""

    def __init__(self, distinct: Sequence[str | None], codes: np.ndarray) -> None:
        self.distinct = distinct  # pairwise different, in the order of their first row
        self.codes = codes  # intp, one per row, indexing `distinct`

    def __len__(self) -> int:
        return len(self.codes)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.distinct[code] for code in self.codes[index]]
        return self.distinct[self.codes[index]]


class _Encoder:
    """One categorical feature's one-hot rows (one per distinct option) and the raw strings already keyed."""

    def __init__(self, feature: CategoricalFeature) -> None:
        self.categories = feature.categories
        options = [*feature.categories, OTHER]
        self.width = len(options)
        # The row-wise rule's one-hot, per value it can pick (a category named like OTHER, or twice, sets two columns).
        self.row_of = {hot: index for index, hot in enumerate(dict.fromkeys(options))}
        self.rows = np.array([[1.0 if hot == option else 0.0 for option in options] for hot in self.row_of], np.float32)
        self.known: dict[str, int] = {}  # raw string -> row (bounded; threads may race to add the same entry)

    def row(self, raw: Any) -> int:
        value = None if raw is None else normalise_category(raw)
        return self.row_of[value if value in self.categories else OTHER]

    def encode(self, values: Sequence[Any]) -> tuple[np.ndarray, tuple[int, BaseException] | None]:
        """Each value's one-hot row (an index into `rows`), `normalise_category` applied once per distinct value
        not yet remembered, and the first value it raises for (str() of an int with too many digits) with its row."""
        if type(values) is CodedColumn:  # not isinstance: an ABC (Sequence) check costs a 1-row transform ~0.5 us
            return self._encode_distinct(values.distinct, values.codes, remembered=True)
        kinds = set(map(type, values))
        if not kinds <= _CATEGORY_KINDS:  # equal values of other types may key differently (Decimal 1E+1 and 10)
            return self._encode_distinct(list(values), None, remembered=False)  # or not hash: one by one
        codes: np.ndarray | None = None  # value -> its distinct value; None: every value is its own
        typed = len(kinds & _MIXABLE) > 1
        keys = list(zip(map(type, values), values, strict=True)) if typed else values
        first_seen = dict.fromkeys(keys)
        if len(first_seen) < len(values):
            index = dict(zip(first_seen, range(len(first_seen)), strict=False))
            codes = np.fromiter(map(index.__getitem__, keys), dtype=np.intp, count=len(values))
        return self._encode_distinct([key[1] for key in first_seen] if typed else list(first_seen), codes, True)

    def _encode_distinct(
        self, distinct: Sequence[Any], codes: np.ndarray | None, remembered: bool
    ) -> tuple[np.ndarray, tuple[int, BaseException] | None]:
        """`encode` of values given as their distinct values (in the order of their first row) and each row's index
        among them (None: each value is its own row); `remembered`: look the distinct values up in `known` first
        (only strings are remembered, and no value of the category kinds equals a string: no false hit)."""
        found = list(map(self.known.get, distinct, repeat(-1))) if remembered else [-1] * len(distinct)
        for position, row in enumerate(found):
            if row >= 0:
                continue
            raw = distinct[position]
            try:
                found[position] = self.row(raw)
            except Exception as error:  # the first distinct value to fail is the first failing row's (first seen)
                first = position if codes is None else int(np.argmax(codes == position))
                return np.zeros(len(distinct) if codes is None else len(codes), dtype=np.intp), (first, error)
            if type(raw) is str and len(self.known) < _MEMO_LIMIT:
                self.known[raw] = found[position]
        rows = np.array(found, dtype=np.intp)
        return (rows if codes is None else rows[codes]), None


def transform(plan: Plan, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    columns, failed = _columns(records, plan.names)
    count = len(plan.numeric)
    raw, errors = _numbers(plan, columns[:count]) if count else (None, [])
    rows = len(columns[0]) if plan.names else len(records)
    return _matrix(plan, rows, raw, columns[count:], ([failed] if failed else []) + errors)


def transform_columns(plan: Plan, numeric: np.ndarray, categorical: Sequence[Sequence[Any]]) -> np.ndarray:
    """`transform` of rows already split into columns: `numeric` the numeric features' values as float64, one column
    per feature in spec order (NaN: missing), `categorical` each categorical feature's values in spec order."""
    if numeric.shape != (numeric.shape[0], len(plan.numeric)) or len(categorical) != len(plan.encoders):
        raise ValueError(
            f"expected {len(plan.numeric)} numeric and {len(plan.encoders)} categorical columns, got "
            f"{numeric.shape[1] if numeric.ndim == 2 else numeric.shape} and {len(categorical)}"
        )
    return _matrix(plan, numeric.shape[0], numeric if plan.numeric else None, categorical, [])


def standardise(plan: Plan, raw: np.ndarray) -> np.ndarray:
    """(value - mean) / std of each numeric column in spec order, in float64 as the row-wise rule computes it (beyond
    float64: inf; missing values stay NaN: the fill is `_matrix`'s). numpy warns of the overflow: callers silence it
    (np.errstate costs a 1-row transform more than this arithmetic)."""
    return (raw - plan.mean) / plan.scale


def _matrix(
    plan: Plan, rows: int, raw: np.ndarray | None, categorical: Sequence[Sequence[Any]], errors: list[Error]
) -> np.ndarray:
    """The float32 feature matrix: numeric values standardised (missing ones filled), categorical ones one-hot; the
    first error in row, then column order raised (a row-wise transform meets it first)."""
    matrix = np.zeros((rows, plan.width), dtype=np.float32)
    count = len(plan.numeric)
    if raw is not None:
        with np.errstate(all="ignore"):  # beyond float32 is inf, as it was row by row
            matrix[:, :count] = np.where(np.isfinite(raw), standardise(plan, raw), plan.filled)
    offset = count
    for position, (encoder, values) in enumerate(zip(plan.encoders, categorical, strict=True)):
        codes, error = encoder.encode(values)
        matrix[:, offset : offset + encoder.width] = encoder.rows[codes]
        offset += encoder.width
        if error:
            errors.append((error[0], count + position, error[1]))
    if errors:
        raise min(errors, key=lambda error: error[:2])[2]
    return matrix


def _columns(records: Sequence[Mapping[str, Any]], names: list[str]) -> tuple[list[Sequence[Any]], Error | None]:
    """Each column's raw values. A record whose `get` fails (not a mapping) ends the columns at its row, values
    from the failing column on read as missing: the row-wise rule met every earlier value first."""
    if names and records and set(map(type, records)) == {dict}:
        try:  # plain dicts holding every column (as the service checks): a dict's [] is its get
            got = list(map(itemgetter(*names), records))
            return (list(zip(*got, strict=True)) if len(names) > 1 else [got]), None
        except KeyError:
            pass
    try:
        return [[record.get(name) for record in records] for name in names], None
    except Exception:  # noqa: S110 - found again below, row by row, to say where
        pass
    rows: list[list[Any]] = []
    for row, record in enumerate(records):
        values: list[Any] = []
        for position, name in enumerate(names):
            try:
                values.append(record.get(name))
            except Exception as error:
                rows.append(values + [None] * (len(names) - position))
                return [list(column) for column in zip(*rows, strict=True)], (row, position, error)
        rows.append(values)
    return [list(column) for column in zip(*rows, strict=True)], None  # a get that failed only once


def _numbers(plan: Plan, columns: list[Sequence[Any]]) -> tuple[np.ndarray, list[Error]]:
    """The numeric columns' values as float64, one column per feature (NaN: missing), and the conversion errors."""
    flat = list(chain.from_iterable(columns))  # numpy reads a flat list faster than nested sequences
    if set(map(type, flat)) <= _NUMBER_KINDS:
        try:
            return np.array(flat, dtype=np.float64).reshape(len(columns), -1).T, []
        except OverflowError:  # an int beyond float64: found below, with its row
            pass
    raw = np.empty((len(columns[0]), len(columns)))
    errors: list[Error] = []
    for position, (feature, column) in enumerate(zip(plan.numeric, columns, strict=True)):
        raw[:, position], error = _number_column(column, feature.name)
        if error:
            errors.append((error[0], position, error[1]))
    return raw, errors


def _number_column(values: Sequence[Any], column: str) -> tuple[np.ndarray, tuple[int, BaseException] | None]:
    """One numeric column as float64 (NaN: missing or non-finite) and its first bad value with what `to_float`
    raises for it. Values are grouped by type: numbers through numpy, strings through pyarrow, rarer types (and
    values numpy or pyarrow refuse) one by one through `to_float` itself."""
    out = np.full(len(values), np.nan)
    objects = np.fromiter(values, dtype=object, count=len(values))
    kinds = {kind: index for index, kind in enumerate(dict.fromkeys(map(type, values)))}
    codes = np.fromiter(map(kinds.__getitem__, map(type, values)), dtype=np.intp, count=len(values))
    first: tuple[int, BaseException] | None = None
    for kind, index in kinds.items():
        rows = np.flatnonzero(codes == index)
        parsed, bad = _by_type(kind, objects[rows]) or _one_by_one(objects[rows], column, rows)
        out[rows] = parsed
        if bad.any():
            row = int(rows[np.argmax(bad)])
            if first is None or row < first[0]:
                first = (row, _failure(values[row], column, row))
    return out, first


def _by_type(kind: type, objects: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Values of one type as float64 (NaN: missing) and the mask of bad ones; None: read them one by one."""
    count = len(objects)
    if kind is _NONE or kind is bool:  # missing; refused (a boolean is no number, whatever numpy says)
        return np.full(count, np.nan), np.full(count, kind is bool)
    try:
        if kind in _FLOATS:
            return objects.astype(np.float64), np.zeros(count, dtype=bool)  # float() of each: OverflowError if huge
        if kind is str:
            return _parse_strings(objects)
    except Exception:  # an int beyond float64, a string pyarrow cannot encode (a lone surrogate): one by one
        return None
    return None


def _parse_strings(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`parse_number` over strings, vectorised: blank (Python's strip()) and inf/nan spellings are missing, plain
    decimals are numbers, anything else is bad. Imported here: only requests with strings for numbers need pyarrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(texts, type=pa.string())
    trimmed = pc.utf8_trim(array, characters=PYTHON_WHITESPACE)
    # ascii_lower, not Python's lower(): no other code point lowers to the letters of an inf/nan spelling (tested).
    words = pc.is_in(pc.ascii_lower(trimmed), value_set=pa.array(sorted(NON_FINITE_WORDS)))
    missing = pc.or_(pc.equal(trimmed, ""), words).to_numpy(zero_copy_only=False)
    # RE2 here, Python's re in parse_number: the same matches, as `$` before a final newline changes nothing when
    # the pattern's trailing spaces take newlines.
    number = pc.match_substring_regex(array, NUMBER_PATTERN).to_numpy(zero_copy_only=False)
    parsed = np.full(len(texts), np.nan)
    parsed[number] = texts[number].astype(np.float64)  # float() of each matched string, in C
    return parsed, ~(number | missing)


def _one_by_one(objects: np.ndarray, column: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`to_float` value by value, up to the first bad one."""
    parsed = np.full(len(objects), np.nan)
    bad = np.zeros(len(objects), dtype=bool)
    for index, value in enumerate(objects):
        try:
            number = to_float(value, column, int(rows[index]))
        except Exception:
            bad[index] = True
            break
        parsed[index] = np.nan if number is None else number
    return parsed, bad


def _failure(value: Any, column: str, row: int) -> BaseException:
    """What `to_float` raises for a value found bad: the row-wise rule's error, word for word."""
    try:
        to_float(value, column, row)
    except Exception as error:
        return error
    raise AssertionError(f"row {row}, column {column!r}: {value!r} was found bad but converts")
