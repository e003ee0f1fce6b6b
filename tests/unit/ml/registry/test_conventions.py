"""ml.registry.conventions: registered model names and the recorded test metrics of a version."""

from __future__ import annotations

import pytest

from ml.registry.conventions import (
    CHALLENGER,
    CHAMPION,
    LINEAGE_TAGS,
    PYFUNC_CODE_FILE,
    registered_model_name,
)
from ml.registry.conventions import (
    test_metric as recorded_test_metric,
)


def test_one_registered_model_per_dataset_and_task() -> None:
    assert registered_model_name("penguins", "classification") == "penguins-classification"
    assert registered_model_name("cars", "regression") != registered_model_name("cars", "classification")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"test.accuracy": "0.97"}, 0.97),
        ({"test.accuracy": "1"}, 1.0),
        ({"test.rmse": "0.5"}, None),  # another metric
        ({}, None),
        ({"test.accuracy": "high"}, None),
        ({"test.accuracy": "nan"}, None),
        ({"test.accuracy": "inf"}, None),
        ({"accuracy": "0.9"}, None),  # only the test. prefix counts
    ],
)
def test_recorded_test_metric(tags: dict[str, str], expected: float | None) -> None:
    assert recorded_test_metric(tags, "accuracy") == expected


def test_names_every_part_relies_on() -> None:
    assert (CHAMPION, CHALLENGER) == ("champion", "challenger")
    assert PYFUNC_CODE_FILE.is_file() and PYFUNC_CODE_FILE.name == "pyfunc_model.py"
    assert {"dataset", "snapshot_id", "dag_run_id", "code_version", "checkpoint_uri"} <= set(LINEAGE_TAGS)
