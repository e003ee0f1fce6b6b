"""The DAG tests use the glue tests' connections (AIRFLOW_CONN_* variables made up per test) and one DagBag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.airflow_connections import define_connections

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Define exactly these connections (tests.support.airflow_connections)."""
    return define_connections(monkeypatch, tmp_path / "hive")


@pytest.fixture(scope="session")
def dagbag() -> Any:
    """The project's DAG folder, parsed as the DAG processor parses it."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))
