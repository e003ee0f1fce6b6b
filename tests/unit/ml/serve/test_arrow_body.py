"""ml.serve.arrow_body and /predict with an Arrow IPC body: the same rows give the same feature matrix byte for byte and
the same answer as their JSON body; every class of bad stream is refused with its status and a message naming the
rows and columns; a compressed stream and one over max_rows are refused before their data is read."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ml.features import CategoricalFeature, CodedColumn, FeatureSpec, NumericFeature
from ml.serve.app import ServeSettings
from ml.serve.arrow_body import ARROW_STREAM, ArrowRows, read_arrow_rows
from ml.serve.telemetry import logged_inputs
from ml.serve.validation import RequestError, parse_body, validate_rows
from tests.support.arrow_stream import arrow_stream
from tests.support.stand_in_model import make_spec, raw_rows
from tests.unit.ml.serve.test_app import app_for, loaded_model

SPEC = make_spec()


def refusal(raw: bytes, spec: FeatureSpec = SPEC, max_rows: int = 1000) -> RequestError:
    with pytest.raises(RequestError) as caught:
        read_arrow_rows(raw, spec, max_rows)
    return caught.value


def small_spec(
    numeric: list[NumericFeature] | None = None, categorical: list[CategoricalFeature] | None = None
) -> FeatureSpec:
    return FeatureSpec("d", "s", "classification", "y", numeric or [], categorical or [], classes=["a", "b"])


def mixed_rows() -> list[dict[str, Any]]:
    rows = raw_rows(40, seed=5)  # missing values, an unseen category, None as a colour
    rows[3]["x1"] = 7  # an int in a float column: Arrow keeps the column float64, as JSON parsing keeps 7
    rows[4]["color"] = None
    return rows


# --- the same rows, the same values ----------------------------------------------------------------------------------


def test_an_arrow_body_gives_the_json_bodys_feature_matrix_byte_for_byte() -> None:
    rows = mixed_rows()
    columns = read_arrow_rows(arrow_stream(rows, chunk=7), SPEC, 1000)
    from_json = SPEC.transform(validate_rows(parse_body(json.dumps({"rows": rows}).encode()), SPEC, 1000))
    assert SPEC.transform_columns(columns.numeric, columns.categorical).tobytes() == from_json.tobytes()
    [colour] = columns.categorical  # a string column: its distinct values, not a Python string per row
    assert isinstance(colour, CodedColumn) and list(colour) == [row["color"] for row in rows]
    assert len(columns) == 40 and list(columns) == rows and columns[3] == rows[3] and columns[-1] == rows[-1]
    assert columns[1:3] == rows[1:3]


def test_column_order_and_integer_float32_and_all_null_columns_are_taken() -> None:
    table = pa.table(
        {
            "color": pa.array(["red", "blue", None]),
            "x2": pa.array([None, None, None], pa.null()),
            "x1": pa.array([1, -2, 2**53 + 1], pa.int64()),
        }
    )
    columns = read_arrow_rows(arrow_stream(table), SPEC, 10)
    rows = [{"x1": 1, "x2": None, "color": "red"}, {"x1": -2, "x2": None, "color": "blue"}]
    rows.append({"x1": 2**53 + 1, "x2": None, "color": None})  # rounds to a double as Python's float() rounds it
    assert SPEC.transform_columns(columns.numeric, columns.categorical).tobytes() == SPEC.transform(rows).tobytes()
    narrow = pa.table({"x1": pa.array([0.1], pa.float32()), "x2": pa.array([3], pa.uint8()), "color": [2.0]})
    columns = read_arrow_rows(arrow_stream(narrow), SPEC, 10)
    exact = [{"x1": float(np.float32(0.1)), "x2": 3, "color": 2.0}]
    assert SPEC.transform_columns(columns.numeric, columns.categorical).tobytes() == SPEC.transform(exact).tobytes()


def test_categories_sent_as_numbers_key_as_in_json() -> None:
    spec = small_spec(categorical=[CategoricalFeature("grade", ["3", "4"])])
    rows = [{"grade": 3.0}, {"grade": 4.0}, {"grade": 5.5}, {"grade": None}]
    columns = read_arrow_rows(arrow_stream(rows), spec, 10)
    assert columns.numeric.shape == (4, 0)
    assert spec.transform_columns(columns.numeric, columns.categorical).tobytes() == spec.transform(rows).tobytes()


def test_the_served_answer_of_an_arrow_body_is_the_json_bodys(tmp_path: Path) -> None:
    client = app_for(loaded_model(tmp_path), ServeSettings(max_rows=100, max_bytes=100_000)).test_client()
    rows = mixed_rows()
    as_json = client.post("/predict", data=json.dumps({"rows": rows}), content_type="application/json")
    as_arrow = client.post("/predict", data=arrow_stream(rows), content_type=ARROW_STREAM)
    assert as_json.status_code == as_arrow.status_code == 200, as_arrow.json
    assert as_arrow.json == as_json.json and len(as_arrow.json["predictions"]) == 40


def test_a_bad_arrow_body_is_a_json_error_through_the_service(tmp_path: Path) -> None:
    client = app_for(loaded_model(tmp_path)).test_client()
    response = client.post("/predict", data=b"{}", content_type=ARROW_STREAM)
    assert response.status_code == 400 and "not an Arrow IPC stream" in response.json["error"]


def test_the_sampled_inputs_of_an_arrow_request_are_its_rows() -> None:
    rows = mixed_rows()
    columns = read_arrow_rows(arrow_stream(rows), SPEC, 1000)
    assert isinstance(columns, ArrowRows)

    class First:
        def sample(self, population: Any, k: int) -> list[int]:
            return list(population)[:k]

        def random(self) -> float:
            return 0.0

    logged = logged_inputs(columns, SPEC.input_columns, 5, First())  # type: ignore[arg-type]
    assert logged == logged_inputs(rows, SPEC.input_columns, 5, First())  # type: ignore[arg-type]


# --- refusals ---------------------------------------------------------------------------------------------------------


def test_a_body_that_is_no_arrow_stream_is_a_400() -> None:
    assert refusal(b"").status == 400 and "empty request body" in refusal(b"").message
    for raw in (b'{"rows": []}', b"\xff\xff\xff\xff\x10\x00\x00\x00garbage", b"\x00" * 8):
        error = refusal(raw)
        assert error.status == 400 and "not an Arrow IPC stream" in error.message, (raw, error.message)
    truncated = arrow_stream(raw_rows(5))[:-40]
    assert refusal(truncated).status == 400


def test_a_stream_without_rows_is_a_400() -> None:
    empty = pa.Table.from_pylist(raw_rows(1)).slice(0, 0)
    assert refusal(arrow_stream(empty)).message == "the stream holds no rows: send at least one"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (pa.table({"x1": [1.0], "color": ["red"]}), "missing columns ['x2']"),
        (pa.table({"x1": [1.0], "x2": [1.0], "color": ["red"], "colour": ["red"]}), "unknown columns ['colour']"),
        (pa.table([[1.0], [1.0], [2.0], ["red"]], names=["x1", "x2", "x1", "color"]), "columns ['x1'] appear more"),
        (pa.table({"x1": ["1.0"], "x2": [1.0], "color": ["red"]}), "column 'x1': expected numbers"),
        (pa.table({"x1": [True], "x2": [1.0], "color": ["red"]}), "column 'x1': expected numbers"),
        (
            pa.table({"x1": [1.0], "x2": [1.0], "color": [False]}),
            "column 'color': expected strings or numbers, got bool",
        ),
        (
            pa.table({"x1": [1.0], "x2": [1.0], "color": pa.array(["red"]).dictionary_encode()}),
            "column 'color': expected strings or numbers, got dictionary",
        ),
    ],
)
def test_columns_the_model_cannot_take_are_a_422_naming_them(table: pa.Table, expected: str) -> None:
    error = refusal(arrow_stream(table))
    assert error.status == 422 and error.message.startswith("invalid columns: ") and expected in error.message


def test_non_finite_and_out_of_range_numbers_are_a_400_naming_row_and_column() -> None:
    table = pa.table(
        {
            "x1": [0.0, float("nan"), None, 1e39],
            "x2": [float("-inf"), 1.0, None, 2.0],
            "color": pa.array([1.0, 2.0, float("inf"), None]),
        }
    )
    error = refusal(arrow_stream(table))
    assert error.status == 400 and error.message == (
        "invalid numbers: row 0, column 'x2': -inf is not a finite number (send null for a missing value); "
        "row 1, column 'x1': nan is not a finite number (send null for a missing value); "
        "row 2, column 'color': inf is not a finite number (send null for a missing value); "
        "row 3, column 'x1': number out of range (1e+39; the model's float32 inputs take magnitudes up to "
        "3.4028235e+38)"
    )


def test_a_value_that_overflows_once_standardised_is_a_422() -> None:
    spec = small_spec(numeric=[NumericFeature("tiny", fill=0.0, mean=0.0, std=1e-30)])
    error = refusal(arrow_stream(pa.table({"tiny": [0.5, 1e10]})), spec)
    assert error.status == 422 and error.message.startswith(
        "invalid rows: row 1, column 'tiny': 10000000000.0 is beyond"
    )


def test_too_many_rows_are_a_413_counted_from_the_batch_headers() -> None:
    raw = arrow_stream(raw_rows(12), chunk=5)
    error = refusal(raw, max_rows=10)
    assert error.status == 413 and "more than 10 (the service's max_rows)" in error.message
    assert len(read_arrow_rows(raw, SPEC, 12)) == 12


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_stream_is_refused_before_it_is_inflated(codec: str) -> None:
    error = refusal(arrow_stream(raw_rows(3), compression=codec))
    assert error.status == 400 and error.message.startswith("compressed Arrow record batches are not accepted")


def test_corrupt_streams_are_refused_or_read_never_anything_else() -> None:
    """Seeded byte flips in a good stream: each is read or refused with a RequestError (a corrupt schema message once
    crashed the process through pyarrow's read_schema(message); the stream reader verifies it)."""
    good = arrow_stream(raw_rows(30), chunk=10)
    rng = random.Random(17)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(3000):
        corrupt = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        try:
            columns = read_arrow_rows(bytes(corrupt), SPEC, 1000)
        except RequestError:
            outcomes["refused"] += 1
            continue
        SPEC.transform_columns(columns.numeric, columns.categorical)
        outcomes["read"] += 1
    assert outcomes["read"] > 100 and outcomes["refused"] > 1000, outcomes
