"""ml.events.uploads: asset events of the watcher -> one run per dataset, each notification acted on once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from ml.events.routes import parse_routes
from ml.events.s3_notifications import CreatedObject
from ml.events.uploads import REMEMBER_FOR, DispatchState, Upload, plan_runs, quiet_since, uploads_from_events

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
ROUTES = parse_routes(
    {
        "version": 1,
        "datasets": [
            {"prefix": "s3://raw/cars/", "dataset": "cars", "target": "Miles_per_Gallon", "task": "regression"},
            {"prefix": "s3://raw/penguins/", "dataset": "penguins", "target": "species", "task": "classification"},
        ],
    },
    "routes.yaml",
)


def obj(key: str, etag: str = "e1", at: str = "2026-12-03T08:00:00Z") -> CreatedObject:
    return CreatedObject("raw", key, 10, etag, "s3:ObjectCreated:Put", at)


def event(event_id: int, *objects: CreatedObject, seconds: float = 0, extra: Any = None) -> Any:
    payload = {"payload": {"objects": [o.as_dict() for o in objects]}} if extra is None else extra
    return SimpleNamespace(id=event_id, timestamp=T0 + timedelta(seconds=seconds), extra=payload)


def in_s3(*objects: CreatedObject) -> Any:
    etags = {o.uri: f'"{o.etag}"' for o in objects}
    return lambda o: etags.get(o.uri)


def test_asset_events_give_their_objects_and_events_without_objects_give_none() -> None:
    a, b = obj("cars/a.csv"), obj("cars/b.csv")
    uploads = uploads_from_events(
        [event(1, a, b), event(2, extra={"from_rest_api": True}), event(3, extra={"payload": {"objects": [{"x": 1}]}})]
    )
    assert [(u.event_id, u.obj) for u in uploads] == [(1, a), (1, b)]


def test_three_objects_of_one_upload_start_one_run_with_the_routes_params() -> None:
    objects = [obj(f"cars/part-{i}.csv") for i in range(3)]
    uploads = uploads_from_events([event(10 + i, o, seconds=i) for i, o in enumerate(objects)])
    [run], ignored = plan_runs(uploads, ROUTES, in_s3(*objects))
    assert ignored == {}
    assert run.conf["dataset"] == "cars" and run.conf["task"] == "regression"
    assert run.conf["raw_uri"] == "s3://raw/cars/" and run.conf["target"] == "Miles_per_Gallon"
    assert run.conf["event"] == {
        "source": "s3_notification",
        "asset_event_ids": [10, 12],
        "object_count": 3,
        "objects": [o.uri for o in objects],
    }
    assert run.run_id.startswith("event__cars__12_")
    again, _ = plan_runs(uploads, ROUTES, in_s3(*objects))
    assert again[0].run_id == run.run_id, "a retried batch names the same run: it cannot start twice"


def test_two_datasets_start_two_runs_and_unrouted_or_stale_objects_none() -> None:
    cars, penguins = obj("cars/a.csv"), obj("penguins/p.csv")
    unknown, deleted, overwritten = obj("unknown/x.csv"), obj("cars/gone.csv"), obj("cars/old.csv", etag="v1")
    uploads = uploads_from_events([event(1, cars, penguins, unknown, deleted, overwritten)])
    runs, ignored = plan_runs(uploads, ROUTES, in_s3(cars, penguins, unknown, obj("cars/old.csv", etag="v2")))
    assert [run.conf["dataset"] for run in runs] == ["cars", "penguins"]
    assert [run.conf["event"]["objects"] for run in runs] == [[cars.uri], [penguins.uri]]
    assert ignored == {
        unknown.uri: "no route covers this prefix (dags/event_routes.yaml)",
        deleted.uri: "no longer in S3",
        overwritten.uri: "overwritten since (ETag v2, notified v1)",
    }


def test_nothing_routed_plans_nothing() -> None:
    unknown = obj("unknown/x.csv")
    assert plan_runs(uploads_from_events([event(1, unknown)]), ROUTES, in_s3(unknown))[0] == []


def test_quiet_only_once_the_newest_upload_is_old_enough() -> None:
    uploads = uploads_from_events([event(1, obj("cars/a.csv")), event(2, obj("cars/b.csv"), seconds=20)])
    assert not quiet_since(uploads, T0 + timedelta(seconds=49), timedelta(seconds=30))
    assert quiet_since(uploads, T0 + timedelta(seconds=50), timedelta(seconds=30))
    assert not quiet_since([], T0, timedelta(0))


def test_handled_events_and_redelivered_notifications_are_not_pending_again() -> None:
    a, b = obj("cars/a.csv"), obj("cars/b.csv")
    first = uploads_from_events([event(1, a), event(2, b)])
    state = DispatchState().handled(first, 2, T0, now=T0)
    assert state.last_event_id == 2 and set(state.recent) == {a.fingerprint, b.fingerprint}
    # The triggerer died after storing event 2 and before committing its offset: the same notification comes back as
    # event 3, next to a new upload (event 4) and a second delivery of that one within the batch (event 5).
    c = obj("cars/c.csv")
    later = uploads_from_events([event(1, a), event(2, b), event(3, b), event(4, c), event(5, c)])
    assert [(u.event_id, u.obj) for u in state.pending(later)] == [(4, c)]
    same = DispatchState.from_json(state.to_json())
    assert same == state and DispatchState.from_json(None) == DispatchState()


def test_the_state_forgets_fingerprints_older_than_the_topics_retention_and_never_goes_back() -> None:
    a, b = obj("cars/a.csv"), obj("cars/b.csv")
    state = DispatchState().handled(uploads_from_events([event(1, a)]), 1, T0, now=T0)
    later = T0 + REMEMBER_FOR + timedelta(seconds=1)
    newer = state.handled([Upload(2, later, b)], 2, later, now=later)
    assert set(newer.recent) == {b.fingerprint} and newer.last_received == later.isoformat()
    assert newer.handled([], 1, T0, now=later) is newer, "an older batch changes nothing"


@pytest.mark.parametrize("count", [1, 150])
def test_a_runs_conf_lists_at_most_100_objects_and_always_their_count(count: int) -> None:
    objects = [obj(f"cars/p{i:03}.csv") for i in range(count)]
    [run], _ = plan_runs(uploads_from_events([event(1, *objects)]), ROUTES, in_s3(*objects))
    assert run.conf["event"]["object_count"] == count and len(run.conf["event"]["objects"]) == min(count, 100)
