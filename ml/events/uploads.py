"""From upload notifications to training runs: the logic of the raw_data_events DAG, without Airflow.

The asset watcher (plugins/mlops_airflow/triggers.py) stores one asset event per notification, its created objects in
the payload. Each event is handled once: the dispatcher keeps, between runs, the last event id it handled and the
fingerprints of the objects it acted on lately (Kafka delivers at least once: after a triggerer restart the same
notification may come back as a second asset event). It waits until no new upload has arrived for a quiet period, so
that the objects of one upload coalesce into one run per dataset, checks each object against S3 (a notification for an
object since deleted or overwritten starts nothing: the newer one has its own), and plans one run per routed dataset.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ml.events.routes import Routes
from ml.events.s3_notifications import CreatedObject
from ml.topics import S3_EVENTS

log = logging.getLogger(__name__)

# The notifications topic's retention: no older notification can be delivered again.
REMEMBER_FOR = timedelta(milliseconds=S3_EVENTS.retention_ms)
MAX_LISTED_OBJECTS = 100  # in a run's conf; the count is always there


@dataclass(frozen=True)
class Upload:
    """One created object, as one asset event of the watcher recorded it."""

    event_id: int
    received: datetime  # the asset event's timestamp: when the watcher stored it
    obj: CreatedObject


def uploads_from_events(events: Iterable[Any]) -> list[Upload]:
    """The objects asset events carry (their `extra["payload"]["objects"]`). An event without them (one posted by
    hand through the REST API, say) carries nothing to run on: logged and skipped."""
    uploads = []
    for event in events:
        objects = (event.extra or {}).get("payload", {})
        objects = objects.get("objects") if isinstance(objects, dict) else None
        if not isinstance(objects, list):
            log.warning("asset event %s carries no created objects (extra=%r): skipped", event.id, event.extra)
            continue
        for data in objects:
            try:
                uploads.append(Upload(int(event.id), event.timestamp, CreatedObject.from_dict(data)))
            except (KeyError, TypeError):
                log.warning("asset event %s: not a created object: %r: skipped", event.id, data)
    return uploads


@dataclass(frozen=True)
class DispatchState:
    """What the dispatcher has handled: every asset event up to `last_event_id`, and the objects it acted on within
    REMEMBER_FOR (fingerprint -> when it was received)."""

    last_event_id: int = 0
    last_received: str | None = None  # ISO time of that event: where the next read of the asset's events starts
    recent: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> DispatchState:
        if not data:
            return cls()
        return cls(int(data["last_event_id"]), data.get("last_received"), dict(data.get("recent", {})))

    def to_json(self) -> dict[str, Any]:
        return {"last_event_id": self.last_event_id, "last_received": self.last_received, "recent": dict(self.recent)}

    def pending(self, uploads: Iterable[Upload]) -> list[Upload]:
        """Uploads of events not handled yet, each object once (the first delivery of a notification wins)."""
        seen = set(self.recent)
        fresh = []
        for upload in sorted(uploads, key=lambda upload: upload.event_id):
            if upload.event_id <= self.last_event_id or upload.obj.fingerprint in seen:
                continue
            seen.add(upload.obj.fingerprint)
            fresh.append(upload)
        return fresh

    def handled(
        self, acted_on: Sequence[Upload], through_event_id: int, through_received: datetime, now: datetime
    ) -> DispatchState:
        """The state after acting on `acted_on`, every event up to `through_event_id` (received at
        `through_received`) handled."""
        if through_event_id <= self.last_event_id:
            return self
        horizon = now - REMEMBER_FOR
        recent = {key: at for key, at in self.recent.items() if datetime.fromisoformat(at) >= horizon}
        recent.update({upload.obj.fingerprint: upload.received.isoformat() for upload in acted_on})
        return DispatchState(through_event_id, through_received.isoformat(), recent)


def quiet_since(uploads: Sequence[Upload], now: datetime, quiet: timedelta) -> bool:
    """True when the newest upload was received at least `quiet` ago (no upload still arriving)."""
    return bool(uploads) and now - max(upload.received for upload in uploads) >= quiet


@dataclass(frozen=True)
class PlannedRun:
    """One mlops_training run to start: its id (the same on a retry of the dispatcher: no second run) and params."""

    run_id: str
    conf: dict[str, Any]


def plan_runs(
    uploads: Sequence[Upload], routes: Routes, current_etag: Callable[[CreatedObject], str | None]
) -> tuple[list[PlannedRun], dict[str, str]]:
    """One run per routed dataset among `uploads`, and the objects that start nothing, each with why.

    `current_etag(obj)`: the object's ETag in S3 now (None: gone), compared with the notification's."""
    by_dataset: dict[str, list[Upload]] = {}
    routes_by_dataset = {}
    ignored: dict[str, str] = {}
    for upload in uploads:
        obj = upload.obj
        route = routes.route_for(obj)
        if route is None:
            ignored[obj.uri] = "no route covers this prefix (dags/event_routes.yaml)"
            continue
        etag = current_etag(obj)
        if etag is None:
            ignored[obj.uri] = "no longer in S3"
            continue
        if obj.etag and etag.strip('"') != obj.etag:
            ignored[obj.uri] = f"overwritten since (ETag {etag.strip(chr(34))}, notified {obj.etag})"
            continue
        by_dataset.setdefault(route.dataset, []).append(upload)
        routes_by_dataset[route.dataset] = route
    for uri, reason in ignored.items():
        log.warning("upload %s starts no run: %s", uri, reason)
    planned = []
    for dataset, routed in sorted(by_dataset.items()):
        event_ids = [upload.event_id for upload in routed]
        objects = sorted({upload.obj.uri for upload in routed})
        conf = {
            **routes_by_dataset[dataset].run_conf(),
            "event": {
                "source": "s3_notification",
                "asset_event_ids": [min(event_ids), max(event_ids)],
                "object_count": len(objects),
                "objects": objects[:MAX_LISTED_OBJECTS],
            },
        }
        digest = hashlib.sha256("\n".join(sorted(upload.obj.fingerprint for upload in routed)).encode()).hexdigest()
        planned.append(PlannedRun(f"event__{dataset}__{max(event_ids)}_{digest[:8]}", conf))
    return planned, ignored
