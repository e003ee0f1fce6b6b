"""stack/demo.py: the REST calls `make demo` (and the e2e tests) make, against a small fake of Airflow's API served
on 127.0.0.1 for the test: the token login, unpause and trigger, following runs until they end, XCom reads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from stack.demo import DAG_ID, AirflowApi, follow, trigger, wait_for_dag

TOKEN = "token-1"


class FakeAirflow:
    """The API's answers: run states and task instances per run, and every request received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any, str | None]] = []
        self.runs: dict[str, str] = {}
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.xcoms: dict[tuple[str, str], Any] = {}
        self.dag_known = True
        self.locked_answers = 0  # the next N answers are SQLite's "database is locked" (HTTP 500, nothing written)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/auth/token":
            ok = body == {"username": "admin", "password": "pw"}
            return (201, {"access_token": TOKEN}) if ok else (401, {"detail": "bad login"})
        if self.locked_answers:
            self.locked_answers -= 1
            return 500, {"detail": "Database error: (sqlite3.OperationalError) database is locked"}
        prefix = f"/api/v2/dags/{DAG_ID}"
        if path == prefix:
            return (200, {"dag_id": DAG_ID}) if self.dag_known else (404, {"detail": "no such DAG"})
        if path == f"{prefix}/dagRuns" and method == "POST":
            run_id = f"manual__{len(self.runs)}"
            self.runs[run_id] = "queued"
            return 200, {"dag_run_id": run_id}
        for run_id, state in self.runs.items():
            run = f"{prefix}/dagRuns/{run_id}"
            if path == run:
                return 200, {"state": state}
            if path == f"{run}/taskInstances":
                return 200, {"task_instances": self.tasks.get(run_id, [])}
            if path.startswith(f"{run}/taskInstances/") and path.endswith("/xcomEntries/return_value"):
                task_id = path.split("/")[-3]
                if (run_id, task_id) in self.xcoms:
                    return 200, {"value": self.xcoms[(run_id, task_id)]}
                return 404, {"detail": "no XCom"}
        return 404, {"detail": f"unknown {method} {path}"}


@pytest.fixture
def airflow() -> Iterator[tuple[FakeAirflow, str]]:
    fake = FakeAirflow()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            fake.requests.append((self.command, self.path, body, self.headers.get("Authorization")))
            status, answer = fake.answer(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_login_with_a_token_then_bearer_calls(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    api = AirflowApi(url, "admin", "pw")
    wait_for_dag(api)
    assert fake.requests[0][:2] == ("POST", "/auth/token")
    assert fake.requests[-1] == ("GET", f"/api/v2/dags/{DAG_ID}", None, f"Bearer {TOKEN}")


def test_a_wrong_password_is_a_clear_error(airflow: tuple[FakeAirflow, str]) -> None:
    _, url = airflow
    with pytest.raises(RuntimeError, match="POST /auth/token: HTTP 401"):
        AirflowApi(url, "admin", "wrong")


def test_trigger_unpauses_then_starts_a_run_with_the_conf(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    run_id = trigger(AirflowApi(url, "admin", "pw"), {"dataset": "cars"})
    assert run_id == "manual__0"
    assert [(m, p, b) for m, p, b, _ in fake.requests[1:]] == [
        ("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}),
        ("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"dataset": "cars"}}),
    ]


def test_follow_reports_each_task_state_change_until_every_run_ends(
    airflow: tuple[FakeAirflow, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = airflow
    api = AirflowApi(url, "admin", "pw")
    first, second = trigger(api, {}), trigger(api, {})
    fake.tasks[first] = [{"task_id": "ingest_raw_data", "state": "running", "start_date": "2026-01-01T00:00:01"}]
    # Between two polls (the wait replaced): the task ends, then both runs do.
    progress = iter(
        [
            lambda: fake.tasks[first][0].update(state="success"),
            lambda: fake.runs.update({first: "success", second: "failed"}),
        ]
    )
    # The wait is the clock's: the progress happens in it (patching time.sleep would also hand it to any other
    # thread of the process that sleeps meanwhile).
    clock = SimpleNamespace(monotonic=lambda: 0.0, sleep=lambda seconds: next(progress)())
    assert follow(api, [first, second], timeout_s=600, clock=clock) == {first: "success", second: "failed"}
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if "ingest_raw_data" in line] == ["running", "success"]


def test_follow_gives_up_after_its_timeout(airflow: tuple[FakeAirflow, str]) -> None:
    _, url = airflow
    api = AirflowApi(url, "admin", "pw")
    run_id = trigger(api, {})
    with pytest.raises(RuntimeError, match=f"runs \\['{run_id}'\\] did not finish within 0 s"):
        follow(api, [run_id], timeout_s=0)


def test_xcom_reads_a_value_or_none(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    api = AirflowApi(url, "admin", "pw")
    run_id = trigger(api, {})
    fake.xcoms[(run_id, "publish_run_summary")] = {"outcome": "trained"}
    assert api.xcom(run_id, "publish_run_summary") == {"outcome": "trained"}
    assert api.xcom(run_id, "tune_models") is None


def test_wait_for_dag_names_the_log_when_the_dag_never_appears(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    fake.dag_known = False
    with pytest.raises(RuntimeError, match=r"did not appear in Airflow within 0 s \(see .stack/logs/airflow.log\)"):
        wait_for_dag(AirflowApi(url, "admin", "pw"), timeout_s=0)


def test_a_locked_sqlite_database_is_tried_again_and_nothing_is_doubled(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    api = AirflowApi(url, "admin", "pw")
    api.transient_pause_s = 0.0
    fake.locked_answers = 2
    run_id = trigger(api, {"dataset": "d"})
    assert list(fake.runs) == [run_id]


def test_other_server_errors_and_endless_locks_are_reported(airflow: tuple[FakeAirflow, str]) -> None:
    fake, url = airflow
    api = AirflowApi(url, "admin", "pw")
    api.transient_pause_s = 0.0
    fake.locked_answers = api.transient_attempts
    with pytest.raises(RuntimeError, match=r"HTTP 500: .*database is locked"):
        api.request("GET", f"/api/v2/dags/{DAG_ID}")
    assert fake.locked_answers == 0
