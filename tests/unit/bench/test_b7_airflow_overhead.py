"""bench.b7_airflow_overhead's report of other mlops_training runs during a side (no Airflow: a stand-in API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bench.b7_airflow_overhead import overlapping


class RunsApi:
    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs

    def request(self, method: str, path: str) -> dict[str, Any]:
        assert method == "GET" and path.startswith("/api/v2/dags/mlops_training/dagRuns")
        return {"dag_runs": self.runs}


def _run(run_id: str, state: str, start: str | None, end: str | None, queued: str | None = None) -> dict[str, Any]:
    return {"dag_run_id": run_id, "state": state, "start_date": start, "end_date": end, "queued_at": queued}


def test_runs_active_during_the_window_are_reported_and_dead_ones_without_an_end_are_not() -> None:
    api = RunsApi(
        [
            _run("ours", "running", "2026-12-05T07:00:05Z", None),
            _run("running-since-before", "running", "2026-12-05T06:59:00Z", None),
            _run("queued", "queued", None, None, queued="2026-12-05T07:00:30Z"),
            _run("ended-inside", "success", "2026-12-05T06:58:00Z", "2026-12-05T07:00:10Z"),
            _run("ended-before", "success", "2026-12-05T06:50:00Z", "2026-12-05T06:55:00Z"),
            _run("starts-after", "running", "2026-12-05T07:02:00Z", None),
            # failed before it started (a drift-triggered run on 2026-12-04): no end date, never active again
            _run("failed-without-end", "failed", "2026-12-04T17:06:03Z", None),
        ]
    )
    start, end = (
        datetime.fromisoformat("2026-12-05T07:00:00+00:00"),
        datetime.fromisoformat("2026-12-05T07:01:00+00:00"),
    )
    assert overlapping(api, start, end, exclude="ours") == ["running-since-before", "queued", "ended-inside"]
