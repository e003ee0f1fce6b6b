"""bench.b8_predict_path's pure parts: the spec and rows it times, the ABBA rounds and the ports it may take (no
servers started)."""

from __future__ import annotations

from bench import b8_predict_path as b8
from bench import http_load


def test_rows_carry_every_input_column_and_transform_alike() -> None:
    from tests.support.rowwise_transform import rowwise_transform

    spec = b8.bench_spec()
    rows = b8.client_rows(200, seed=1)
    assert all(set(row) == set(spec.input_columns) for row in rows)
    assert any(value is None for row in rows for value in row.values())  # some missing values
    assert {row["c0"] for row in rows} - set(spec.categorical[0].categories)  # some unseen categories
    assert spec.transform(rows).tobytes() == rowwise_transform(spec, rows).tobytes()
    assert len(spec.feature_columns) == b8.NUMERIC + b8.CATEGORICAL * (b8.LEVELS + 1)


def test_rounds_alternate_the_order_of_the_sides() -> None:
    order: list[str] = []
    sides = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    measured = b8.alternating(sides, rows=1, rounds=2, seconds=0.0)  # 3 calls per side and round at least
    assert order == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert [len(values) for values in measured.values()] == [2, 2]


def test_ports_avoid_the_stack_and_ray() -> None:
    assert {5000, 8000, 8080, 6379, 8265, 10001, 9092} <= http_load.AVOID
    assert http_load.free_port() not in http_load.AVOID


def test_shapes_parse_as_workers_by_threads_and_refuse_anything_else() -> None:
    import pytest

    assert b8.parse_shape(" 2x1 ") == (2, 1)
    for text in ("2", "x1", "0x4", "2x0", "2x-1", "twoxone"):
        with pytest.raises(ValueError, match="WORKERSxTHREADS"):
            b8.parse_shape(text)


def test_the_default_shape_is_the_services() -> None:
    import argparse

    from ml.serve.cli import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["serve"])
    assert http_load.SERVICE_SHAPE == (args.workers, args.threads)
