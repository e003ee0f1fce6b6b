"""/predict bodies as Arrow IPC streams (Content-Type `application/vnd.apache.arrow.stream`): a batch client's rows
as typed columns, read without parsing text (a 1000-row JSON body costs ~10 ms to parse and check; its Arrow stream
~0.5 ms to read and check).

The stream holds one column per input column of the model (any order; `GET /model` lists them). Numeric features
take integer or floating-point columns, categorical ones string, integer or floating-point columns; null means
missing, as in JSON. What a JSON body may not hold, an Arrow body may not either: non-finite numbers (400), numbers
beyond float32's range (400), values that overflow float32 once standardised (422). The answer is the same JSON as for
a JSON body of the same rows (tests/unit/ml/serve/test_arrow_body.py compares them).

Only what the body's own bytes hold is read: a compressed record batch is refused (its buffers would be inflated
beyond the service's max_bytes, which counts the bytes received), and the rows are counted from each batch's header
before its data is touched, so a body over max_rows is refused without reading it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ml.features import CodedColumn
from ml.serve.validation import (
    FLOAT32_MAX,
    MAX_ERRORS_REPORTED,
    RequestError,
    non_finite,
    out_of_range,
    overflows_once_standardised,
    standardised_overflow,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from ml.features import FeatureSpec

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_RECORD_BATCH = 3  # MessageHeader.RecordBatch in Arrow's Message.fbs


class ArrowRows(Sequence[dict[str, Any]]):
    """A validated Arrow request: the numeric features as a float64 matrix (NaN: missing) and the categorical features'
    values, both in spec order, ready for `TabularPredictor.predict_columns`. As a sequence it gives the rows as dicts,
    built only when asked (the sampled inputs of the serving metrics)."""

    def __init__(self, table: pa.Table, numeric: np.ndarray, categorical: list[Sequence[Any]]) -> None:
        self.table = table
        self.numeric = numeric
        self.categorical = categorical

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        row: dict[str, Any] = self.table.slice(index % len(self), 1).to_pylist()[0]
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.table.to_pylist())


def read_arrow_rows(raw: bytes, spec: FeatureSpec, max_rows: int) -> ArrowRows:
    """The body's rows, or RequestError naming what is wrong: 400 for a body that is no uncompressed Arrow stream or
    holds non-finite or out-of-range numbers, 413 beyond `max_rows`, 422 for columns or values the model cannot
    take."""
    import pyarrow as pa

    if not raw:
        raise RequestError(f"empty request body: send an Arrow IPC stream of the columns {spec.input_columns}")
    try:
        body = pa.py_buffer(raw)
        # The stream reader verifies the schema message's flatbuffer; read_schema(message) does not, and a corrupt
        # one crashed the process in a fuzzing run (tests/unit/ml/serve/test_arrow_body.py fuzzes this function).
        schema = pa.ipc.open_stream(body).schema
        _check_schema(schema, spec)
        messages = pa.ipc.MessageReader.open_stream(body)
        next(iter(messages))  # the schema, read above
        batches, rows = [], 0
        for message in messages:
            length, compressed = _batch_header(message)
            if compressed:
                raise RequestError(
                    "compressed Arrow record batches are not accepted: send the stream uncompressed (the body's "
                    "size limit counts the bytes received, not what they would inflate to)"
                )
            rows += length
            if rows > max_rows:
                raise RequestError(
                    f"too many rows: more than {max_rows} (the service's max_rows); split the request", 413
                )
            batches.append(pa.ipc.read_record_batch(message, schema))
        table = pa.Table.from_batches(batches, schema)
        table.validate(full=True)
    except (pa.ArrowException, OSError, StopIteration, struct.error, UnicodeDecodeError) as error:
        raise RequestError(f"request body is not an Arrow IPC stream: {error or 'no schema'}") from None
    if not table.num_rows:
        raise RequestError("the stream holds no rows: send at least one")
    return _validated(table, spec)


def _batch_header(message: Any) -> tuple[int, bool]:
    """A record batch message's row count and whether its buffers are compressed, from its flatbuffer header (Arrow
    has already verified it), before any of its data is read. Anything else than a record batch is refused."""
    buffer = message.metadata.to_pybytes()
    root = struct.unpack_from("<I", buffer, 0)[0]
    kind_at = _field(buffer, root, 1)  # Message.header_type
    if message.type != "record batch" or kind_at is None or buffer[kind_at] != _RECORD_BATCH:
        raise RequestError(
            f"the stream holds a {message.type} message: send plain record batches (no dictionary-encoded columns)"
        )
    header_at = _field(buffer, root, 2)  # Message.header
    if header_at is None:
        raise RequestError("request body is not an Arrow IPC stream: a record batch message without its header")
    header = header_at + struct.unpack_from("<I", buffer, header_at)[0]
    length_at = _field(buffer, header, 0)  # RecordBatch.length
    length = struct.unpack_from("<q", buffer, length_at)[0] if length_at is not None else 0
    return length, _field(buffer, header, 3) is not None  # RecordBatch.compression


def _field(buffer: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the flatbuffer table at `table` is, or None when absent (its default)."""
    vtable = table - struct.unpack_from("<i", buffer, table)[0]
    slot = 4 + 2 * index
    if slot + 2 > struct.unpack_from("<H", buffer, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buffer, vtable + slot)[0]
    return table + offset if offset else None


def _check_schema(schema: pa.Schema, spec: FeatureSpec) -> None:
    import pyarrow.types as types

    names = list(schema.names)
    expected = set(spec.input_columns)
    problems = []
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"columns {duplicated} appear more than once")
    if missing := [name for name in spec.input_columns if name not in names]:
        problems.append(f"missing columns {missing}")
    if unknown := sorted(set(names) - expected):
        problems.append(f"unknown columns {unknown} (expected {spec.input_columns})")
    numbers = (types.is_integer, types.is_floating, types.is_null)
    numeric = {feature.name for feature in spec.numeric}
    for field in schema:
        if field.name not in expected:
            continue
        if field.name in numeric and not any(check(field.type) for check in numbers):
            problems.append(
                f"column {field.name!r}: expected numbers (an integer or floating-point type), got {field.type}"
            )
        elif field.name not in numeric and not any(
            check(field.type) for check in (*numbers, types.is_string, types.is_large_string)
        ):
            problems.append(f"column {field.name!r}: expected strings or numbers, got {field.type}")
    if problems:
        raise RequestError("invalid columns: " + "; ".join(problems), 422)


def _validated(table: pa.Table, spec: FeatureSpec) -> ArrowRows:
    """The checks of a JSON body's values, on every number of the request at once (a loop of small pyarrow calls per
    column cost a 1000-row request ~7 ms of its ~15 through gunicorn, profiled); messages only for what fails."""
    numeric_names = [feature.name for feature in spec.numeric]
    categorical_names = [feature.name for feature in spec.categorical]
    numbers = numeric_names + [name for name in categorical_names if not _holds_strings(table.column(name).type)]
    values, sent_nan = _number_matrix(table, numbers)
    with np.errstate(invalid="ignore"):
        beyond = np.abs(values) > FLOAT32_MAX
        not_finite = sent_nan | np.isinf(values)
    if (bad := not_finite | beyond).any():  # 400, like the JSON parser's refusals
        raise _refusal(
            "invalid numbers",
            400,
            bad,
            lambda row, column: (
                f"row {row}, column {numbers[column]!r}: "
                + (
                    non_finite(str(values[row, column]))
                    if not_finite[row, column]
                    else out_of_range(float(values[row, column]))
                )
            ),
        )
    numeric = np.ascontiguousarray(values[:, : len(numeric_names)])
    overflowing = standardised_overflow(numeric, spec)
    if overflowing.any():  # 422, like validate_rows'
        features = spec.numeric
        raise _refusal(
            "invalid rows",
            422,
            overflowing,
            lambda row, column: (
                f"row {row}, column {features[column].name!r}: "
                + overflows_once_standardised(float(numeric[row, column]), features[column])
            ),
        )
    return ArrowRows(table, numeric, [_categorical(table.column(name)) for name in categorical_names])


def _categorical(column: pa.ChunkedArray) -> Sequence[Any]:
    """A categorical column's values for the transform: a string column dictionary-encoded (a null is the last
    distinct value, None), so that no Python object is made per row; a numeric one as Python numbers."""
    import pyarrow.compute as pc

    if not _holds_strings(column.type):
        return column.to_pylist()
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = [*encoded.dictionary.to_pylist(), None]
    codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
    return CodedColumn(distinct, codes)


def _holds_strings(kind: pa.DataType) -> bool:
    import pyarrow.types as types

    return bool(types.is_string(kind) or types.is_large_string(kind))


def _number_matrix(table: pa.Table, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The columns `names` (integer, floating-point or null) as one float64 matrix, nulls as NaN, and where a NaN was
    sent as a value rather than a null. A handful of pyarrow calls whatever the columns: each call lets go of the GIL
    and, with the service's 4 request threads, may wait up to a switch interval (5 ms) to take it back (one call per
    column cost a 1000-row request ~4 ms through gunicorn, profiled)."""
    import pyarrow as pa

    values = np.empty((table.num_rows, 0))
    if names:
        selected = table.select(names)
        if any(field.type != pa.float64() for field in selected.schema):
            # int64 -> float64 rounds as Python's float() rounds; float32 and float16 widen exactly; null is NaN.
            selected = selected.cast(pa.schema([pa.field(name, pa.float64()) for name in names]), safe=False)
        batch = selected.combine_chunks().to_batches()[0]
        values = np.asarray(batch.to_tensor(null_to_nan=True, row_major=True), dtype=np.float64)
    sent_nan = np.zeros(values.shape, dtype=bool)
    nulls = np.array([table.column(name).null_count for name in names], dtype=np.int64)
    for position in np.flatnonzero(np.count_nonzero(np.isnan(values), axis=0) > nulls):  # rare: NaN sent
        column = table.column(names[position])
        sent_nan[:, position] = np.isnan(values[:, position]) & ~column.is_null().to_numpy(zero_copy_only=False)
    return values, sent_nan


def _refusal(kind: str, status: int, bad: np.ndarray, describe: Callable[[int, int], str]) -> RequestError:
    """The RequestError naming the first bad cells, in row then column order."""
    cells = np.argwhere(bad)
    more = " (first errors only)" if len(cells) > MAX_ERRORS_REPORTED else ""
    found = [describe(int(row), int(column)) for row, column in cells[:MAX_ERRORS_REPORTED]]
    return RequestError(f"{kind}{more}: " + "; ".join(found), status)
