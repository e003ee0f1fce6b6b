"""plugins/mlops_airflow/plugin.py: what the plugin registers with Airflow, and the pages it serves under /mlops: the
tuning report, rendered from MLflow metadata (an MlflowClient double answering as the tracking server would) that the
page reads through the mlflow_default connection, and the monitoring page, whose Kafka reading is replaced (the
reading itself: tests/unit/ml/test_monitoring.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from ml.settings import KafkaSettings, MlflowSettings
from tests.support.airflow_connections import KAFKA_SERVERS, MLFLOW_URI

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

Define = Callable[..., None]
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


def _run(run_id: str, name: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]) -> Any:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name=name, experiment_id="1"),
        data=SimpleNamespace(params=params, metrics=metrics, tags=tags),
    )


class FakeTracking:
    """The part of MlflowClient the report reads: one search (parent run) with two trials and their curves."""

    def __init__(self) -> None:
        self.parent = _run("parent-1", "search", {}, {}, {"metric": "val_loss", "mlops.dag_run_id": RUN_ID})
        self.trials = [
            _run("t1", "trial_a", {"lr": "0.01"}, {"val_loss": 0.4, "train_loss": 0.3}, {}),
            _run("t2", "trial_b", {"lr": "0.1"}, {"val_loss": 0.6, "train_loss": 0.5}, {}),
        ]
        self.queries: list[str] = []
        self.built_for: list[MlflowSettings] = []  # the settings of each client built (ml.clients.mlflow_client)

    def search_experiments(self) -> list[Any]:
        return [SimpleNamespace(experiment_id="1")]

    def search_runs(self, experiments: list[str], query: str, **options: Any) -> list[Any]:
        self.queries.append(query)
        if "mlops.dag_run_id" in query:
            return [self.parent] if RUN_ID in query else []
        return self.trials

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        final = next(t for t in self.trials if t.info.run_id == run_id).data.metrics[key]
        return [SimpleNamespace(step=step, value=final + 0.1 * (3 - step)) for step in (1, 2, 3)]


@pytest.fixture
def tracking(connections: Define, monkeypatch: pytest.MonkeyPatch) -> FakeTracking:
    import ml.clients

    connections("mlflow_default")
    fake = FakeTracking()
    monkeypatch.setattr(ml.clients, "mlflow_client", lambda settings: fake.built_for.append(settings) or fake)
    return fake


class FakeAuthManager:
    """Airflow's auth manager as the report's dependency sees it: tokens name users, a user may read some DAGs."""

    def __init__(self) -> None:
        self.users = {"reader-token": "reader", "stranger-token": "stranger"}
        self.readable = {"reader": {"mlops_training"}}
        self.asked: list[tuple[str, str, str | None]] = []

    async def get_user_from_token(self, token: str) -> Any:
        from jwt import InvalidTokenError

        if token not in self.users:
            raise InvalidTokenError("bad signature")
        return SimpleNamespace(name=self.users[token])

    def is_authorized_dag(self, *, method: str, access_entity: Any, details: Any, user: Any) -> bool:
        self.asked.append((user.name, method, details.id))
        return details.id in self.readable.get(user.name, set())


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> FakeAuthManager:
    import airflow.api_fastapi.core_api.security as security
    from airflow.models.dag import DagModel

    fake = FakeAuthManager()
    monkeypatch.setattr(security, "get_auth_manager", lambda: fake)
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **kw: None))  # no teams here
    return fake


@pytest.fixture
def report_client(auth: FakeAuthManager) -> Any:
    """The report app, called as the `reader` user (a Bearer token, as Airflow's REST API takes it)."""
    from fastapi.testclient import TestClient

    from mlops_airflow.plugin import _report_app

    return TestClient(_report_app(), headers={"Authorization": "Bearer reader-token"})


def test_the_plugin_registers_the_link_and_the_report_app() -> None:
    from mlops_airflow.operators import TuningReportLink
    from mlops_airflow.plugin import MlopsPlugin

    assert MlopsPlugin.name == "mlops_airflow"
    assert [type(link) for link in MlopsPlugin.operator_extra_links] == [TuningReportLink]
    [app] = MlopsPlugin.fastapi_apps
    assert app["url_prefix"] == "/mlops" and app["name"]
    assert {"/tuning-report", "/monitoring"} <= {route.path for route in app["app"].routes}


def test_the_monitoring_page_is_in_the_navigation_bar() -> None:
    from ml.monitoring import MAX_HOURS
    from mlops_airflow.plugin import MONITORING_MAX_HOURS, MlopsPlugin

    [view] = MlopsPlugin.external_views
    assert view["href"] == "/mlops/monitoring" and view["destination"] == "nav" and view["url_route"]
    assert MONITORING_MAX_HOURS == MAX_HOURS


@pytest.fixture
def topics(connections: Define, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """ml.monitoring.monitoring_page's reading replaced: what each page build asked for, and a page naming it."""
    import ml.monitoring

    connections("kafka_default")
    asked: list[dict[str, Any]] = []

    def fake_page(kafka: KafkaSettings, *, model: str | None, hours: int) -> str:
        asked.append({"kafka": kafka, "model": model, "hours": hours})
        return f"<html>monitoring {hours} h</html>"

    monkeypatch.setattr(ml.monitoring, "monitoring_page", fake_page)
    return asked


def test_the_monitoring_page_reads_the_topics_through_kafka_default(
    topics: list[dict[str, Any]], report_client: Any
) -> None:
    response = report_client.get("/monitoring", params={"model": "cars-regression", "hours": 12})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>monitoring 12 h</html>"
    assert topics == [{"kafka": KafkaSettings(KAFKA_SERVERS), "model": "cars-regression", "hours": 12}]
    report_client.get("/monitoring")
    assert topics[-1]["model"] is None and topics[-1]["hours"] == 6, "every model, the last 6 hours by default"


@pytest.mark.parametrize("hours", ["0", "49", "six"])
def test_the_monitoring_page_bounds_its_hours(hours: str, topics: list[dict[str, Any]], report_client: Any) -> None:
    assert report_client.get("/monitoring", params={"hours": hours}).status_code == 422
    assert topics == []


def test_the_monitoring_page_is_for_readers_of_the_training_dag(
    topics: list[dict[str, Any]], auth: FakeAuthManager
) -> None:
    from fastapi.testclient import TestClient

    from mlops_airflow.plugin import _report_app

    client = TestClient(_report_app())
    assert client.get("/monitoring").status_code == 401  # no token at all
    assert client.get("/monitoring", headers={"Authorization": "Bearer forged"}).status_code == 403
    auth.readable["stranger"] = {"other_dag"}
    stranger = {"Authorization": "Bearer stranger-token"}
    assert client.get("/monitoring", headers=stranger).status_code == 403
    # another DAG's reader cannot name that DAG to get in: the page is always about mlops_training
    assert client.get("/monitoring", params={"dag_id": "other_dag"}, headers=stranger).status_code == 403
    assert ("stranger", "GET", "other_dag") not in auth.asked
    client.cookies.set("_token", "reader-token")
    assert client.get("/monitoring").status_code == 200
    assert len(topics) == 1, "Kafka is read only for the authorized request"


def test_the_tuning_report_shows_the_trials_of_the_run(tracking: FakeTracking, report_client: Any) -> None:
    response = report_client.get("/tuning-report", params={"run_id": RUN_ID, "dag_id": "mlops_training"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert tracking.built_for == [MlflowSettings(MLFLOW_URI)], "read through the mlflow_default connection"
    assert f"Tuning report: mlops_training / {RUN_ID}" in page
    table = page[page.index('<table id="trials">') : page.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    assert cells == [["trial_a", "0.01", "0.3", "0.4"], ["trial_b", "0.1", "0.5", "0.6"]]
    assert re.findall(r"<th>(.*?)</th>", table) == ["trial", "lr", "train_loss", "val_loss"]
    curves = page[page.index("Learning curves") : page.index("Parallel coordinates")]
    assert curves.count("<svg") == 1 and curves.count("<polyline") >= 2, "one curve per trial"


def test_the_tuning_report_of_an_unknown_run_says_so(tracking: FakeTracking, report_client: Any) -> None:
    page = report_client.get("/tuning-report", params={"run_id": "manual__never"}).text
    assert "No tuning run found for this DAG run" in page and "<table" not in page


def test_the_tuning_report_is_behind_airflows_login_and_dag_access(
    tracking: FakeTracking, auth: FakeAuthManager
) -> None:
    from fastapi.testclient import TestClient

    from mlops_airflow.plugin import _report_app

    client = TestClient(_report_app())
    query = {"run_id": RUN_ID, "dag_id": "mlops_training"}
    assert client.get("/tuning-report", params=query).status_code == 401  # no token at all
    assert client.get("/tuning-report", params=query, headers={"Authorization": "Bearer forged"}).status_code == 403
    stranger = {"Authorization": "Bearer stranger-token"}
    assert client.get("/tuning-report", params=query, headers=stranger).status_code == 403
    # the UI's session cookie works as the Bearer header does
    client.cookies.set("_token", "reader-token")
    assert client.get("/tuning-report", params=query).status_code == 200
    assert ("stranger", "GET", "mlops_training") in auth.asked and ("reader", "GET", "mlops_training") in auth.asked
    assert tracking.queries and len(tracking.built_for) == 1, "MLflow is asked only for the authorized request"


def test_the_tuning_report_needs_a_run_id(report_client: Any) -> None:
    assert report_client.get("/tuning-report").status_code == 422
