"""ml.experiments: one MLflow experiment per dataset (found, restored or created, a concurrent creation tolerated) and
string literals for MLflow's search filters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ml.experiments import get_or_create_experiment, quoted


class FakeExperiments:
    def __init__(self, existing: dict[str, Any] | None = None, *, created_meanwhile: bool = False) -> None:
        self.existing = dict(existing or {})
        self.created_meanwhile = created_meanwhile
        self.calls: list[tuple[str, Any]] = []

    def get_experiment_by_name(self, name: str) -> Any:
        self.calls.append(("get", name))
        return self.existing.get(name)

    def create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        self.calls.append(("create", name))
        if self.created_meanwhile:
            self.existing[name] = SimpleNamespace(experiment_id="41", lifecycle_stage="active")
            raise MlflowException(f"Experiment '{name}' already exists.")
        return "42"

    def restore_experiment(self, experiment_id: str) -> None:
        self.calls.append(("restore", experiment_id))


def test_an_existing_experiment_is_used() -> None:
    client = FakeExperiments({"iris": SimpleNamespace(experiment_id=7, lifecycle_stage="active")})
    assert get_or_create_experiment(client, "iris") == "7"
    assert client.calls == [("get", "iris")]


def test_a_deleted_experiment_is_restored() -> None:
    client = FakeExperiments({"iris": SimpleNamespace(experiment_id="7", lifecycle_stage="deleted")})
    assert get_or_create_experiment(client, "iris") == "7"
    assert client.calls == [("get", "iris"), ("restore", "7")]


def test_a_missing_experiment_is_created() -> None:
    client = FakeExperiments()
    assert get_or_create_experiment(client, "iris") == "42"
    assert client.calls == [("get", "iris"), ("create", "iris")]


def test_an_experiment_created_concurrently_is_used() -> None:
    client = FakeExperiments(created_meanwhile=True)
    assert get_or_create_experiment(client, "iris") == "41"
    assert client.calls == [("get", "iris"), ("create", "iris"), ("get", "iris")]


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("run-1", "'run-1'"),
        ("it's", '"it\'s"'),
        ('say "hi"', "'say \"hi\"'"),
        ("back\\slash", "'back\\slash'"),
        ("", "''"),
    ],
)
def test_quoted_picks_a_quote_the_value_does_not_contain(value: str, literal: str) -> None:
    assert quoted(value) == literal


@pytest.mark.parametrize(
    "value", ["run-1", "it's", 'say "hi"', "a\\b", "ends\\", "it's\\", "%_", "manual__2026-01-01T00:00:00+00:00"]
)
def test_quoted_literals_parse_back_to_the_value_in_mlflow_filters(value: str) -> None:
    """MLflow takes a literal's text verbatim: what it compares with must be the value itself."""
    from mlflow.utils.search_utils import SearchModelVersionUtils, SearchUtils

    [comparison] = SearchUtils.parse_search_filter(f"tags.`mlops.dag_run_id` = {quoted(value)}")
    assert comparison["value"] == value
    parsed = SearchModelVersionUtils.parse_search_filter(f"name = 'm' and tags.dag_run_id = {quoted(value)}")
    assert parsed[1]["value"] == value


def test_a_value_with_both_quotes_cannot_be_searched() -> None:
    with pytest.raises(ValueError, match="both kinds of quotes"):
        quoted('it\'s "quoted"')
