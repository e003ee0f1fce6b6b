"""ml.ingest.config.check_ingest_names: the names a run is given, checked on the ml side as the DAG's params are
(tests/unit/dags/test_mlops_training.py checks that the DAG's patterns are these)."""

from __future__ import annotations

import pytest

from ml.ingest.config import check_ingest_names

GOOD = {"raw_uri": "s3://raw/penguins/", "dataset": "penguins", "target": "species"}
FORBIDDEN = ("lake", "mlflow")


@pytest.mark.parametrize(
    "names",
    [
        GOOD,
        {**GOOD, "raw_uri": "s3a://raw/cars.csv"},
        {**GOOD, "raw_uri": "s3://lake-raw/x/"},  # only the exact bucket is the lake's
        {**GOOD, "raw_uri": "s3://raw/lake/x/"},
        {**GOOD, "raw_uri": "s3://raw"},
        {**GOOD, "dataset": "My-Data_2"},
        {**GOOD, "target": "0x10"},
        {**GOOD, "target": "Größe (cm)"},
    ],
)
def test_good_names_pass(names: dict[str, str]) -> None:
    check_ingest_names(**names, forbidden_buckets=FORBIDDEN)


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ({**GOOD, "raw_uri": "s3://lake/datasets/penguins/"}, ["bucket 'lake'", "another bucket"]),
        ({**GOOD, "raw_uri": "s3a://mlflow/artifacts/1/"}, ["bucket 'mlflow'"]),
        ({**GOOD, "raw_uri": "s3://lake"}, ["bucket 'lake'"]),
        ({**GOOD, "raw_uri": "s3://raw/penguins/\n"}, ["raw_uri", "s3://bucket/key"]),
        ({**GOOD, "raw_uri": "http://raw/penguins/"}, ["raw_uri"]),
        ({**GOOD, "dataset": "penguins\n"}, ["dataset", "a letter"]),
        ({**GOOD, "dataset": "9lives"}, ["dataset"]),
        ({**GOOD, "target": "species\n"}, ["target", "line breaks"]),
        ({**GOOD, "target": "a\x1bb"}, ["target"]),
        ({**GOOD, "target": ""}, ["target"]),
        ({**GOOD, "target": "t" * 129}, ["target", "128"]),
    ],
)
def test_bad_names_are_refused_naming_the_param(names: dict[str, str], says: list[str]) -> None:
    with pytest.raises(ValueError) as refused:
        check_ingest_names(**names, forbidden_buckets=FORBIDDEN)
    for text in says:
        assert text in str(refused.value)


def test_the_forbidden_buckets_are_the_callers() -> None:
    uri = {**GOOD, "raw_uri": "s3://prod-lake/x/"}
    check_ingest_names(**uri, forbidden_buckets=FORBIDDEN)  # nothing comes from the environment
    with pytest.raises(ValueError, match="prod-lake"):
        check_ingest_names(**uri, forbidden_buckets=("prod-lake", "mlflow"))


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValueError) as refused:
        check_ingest_names("s3://lake/x", "bad name", "a\nb", forbidden_buckets=FORBIDDEN)
    message = str(refused.value)
    assert "raw_uri" in message and "dataset" in message and "target" in message
