"""Drift -> retraining: which mlops_training runs the drift monitor's events start (the drift_retraining DAG).

The asset watcher of `mlops.drift.v1` (plugins/mlops_airflow/triggers.py) turns each event whose window drifted into
an asset event carrying a `DriftSignal`; the DAG run those events schedule plans here. Each signal names the dataset
its model version was trained on; its route in dags/event_routes.yaml (ml.events.routes) says what drift does there:
`retrain` starts one run with the route's params and the reason in its `event` param (so the new version's tags
record it: ml.registry.register), `alert` only logs a warning. A dataset no route names is logged and left alone.

A dataset retrains at most once per hour of drifted windows: the run id is the dataset and the hour of its latest
drifted window in the batch, and the DAG starts it with `skip_when_already_exists`, so a second event for that hour
(another feature, another window, or the same event delivered again after a triggerer restart) finds the run
started. A drift that persists past the hour starts the next retraining. A batch spanning several hours (a backlog
after a pause) starts one run, for the latest: retraining once on today's data answers the older drift too, and an
hour that had its run already must not hide a newer one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ml.events.envelope import validate_envelope
from ml.events.routes import ON_DRIFT_RETRAIN, Routes
from ml.events.uploads import PlannedRun
from ml.topics import DRIFT

log = logging.getLogger(__name__)

MAX_LISTED = 20  # windows and event ids listed in a run's `event` param (the counts are always there)


@dataclass(frozen=True)
class DriftSignal:
    """A drifted window of one model version (what the watcher keeps of a drift.v1 event)."""

    event_id: str
    model_name: str
    model_version: str
    dataset: str
    window_start: str
    window_end: str
    drifted_features: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "drifted_features": list(self.drifted_features)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftSignal:
        """KeyError or TypeError on anything that is not a signal's dict."""
        return cls(
            event_id=str(data["event_id"]),
            model_name=str(data["model_name"]),
            model_version=str(data["model_version"]),
            dataset=str(data["dataset"]),
            window_start=str(data["window_start"]),
            window_end=str(data["window_end"]),
            drifted_features=tuple(str(name) for name in data["drifted_features"]),
        )


def drift_signal(envelope: object) -> DriftSignal | None:
    """The signal of a drift.v1 envelope whose window drifted; None for a window that did not. EventValidationError
    for anything that is not a valid drift.v1 envelope."""
    validate_envelope(envelope, DRIFT)  # type: ignore[arg-type]
    assert isinstance(envelope, Mapping)
    payload = envelope["payload"]
    if not payload["drifted"]:
        return None
    return DriftSignal(
        event_id=envelope["event_id"],
        model_name=payload["model_name"],
        model_version=payload["model_version"],
        dataset=payload["dataset"],
        window_start=payload["window_start"],
        window_end=payload["window_end"],
        drifted_features=tuple(payload["drifted_features"]),
    )


def signals_from_events(events: Iterable[Any]) -> list[DriftSignal]:
    """The signals asset events carry (their `extra["payload"]`); an event without one (posted by hand through the
    REST API, say) is logged and skipped."""
    signals = []
    for event in events:
        payload = (event.extra or {}).get("payload")
        try:
            signals.append(DriftSignal.from_dict(payload or {}))
        except (KeyError, TypeError):
            log.warning("asset event %s carries no drift signal (extra=%r): skipped", event.id, event.extra)
    return signals


def _hour(window_start: str) -> str:
    return datetime.fromisoformat(window_start.replace("Z", "+00:00")).strftime("%Y%m%dT%H")


def plan_drift_runs(signals: Iterable[DriftSignal], routes: Routes) -> tuple[list[PlannedRun], dict[str, str]]:
    """The retraining runs the signals start (one per dataset whose route says `retrain`) and, per other dataset,
    why it starts none (alert only, or no route)."""
    by_dataset: dict[str, list[DriftSignal]] = {}
    for signal in signals:
        by_dataset.setdefault(signal.dataset, []).append(signal)
    planned, not_run = [], {}
    for dataset, found in sorted(by_dataset.items()):
        found.sort(key=lambda signal: (signal.window_start, signal.event_id))
        features = sorted({name for signal in found for name in signal.drifted_features})
        latest = found[-1]
        what = f"drift in {latest.model_name} v{latest.model_version} ({', '.join(features)})"
        route = routes.for_dataset(dataset)
        if route is None:
            not_run[dataset] = f"{what}: no route names dataset {dataset!r} (dags/event_routes.yaml)"
            continue
        if route.on_drift != ON_DRIFT_RETRAIN:
            not_run[dataset] = f"{what}: alert only (on_drift: {route.on_drift})"
            continue
        event = {
            "source": "drift",
            "model_name": latest.model_name,
            "model_version": latest.model_version,
            "drifted_features": features,
            "window_count": len(found),
            "windows": [signal.window_start for signal in found][:MAX_LISTED],
            "drift_event_ids": [signal.event_id for signal in found][:MAX_LISTED],
        }
        planned.append(
            PlannedRun(f"drift__{dataset}__{_hour(latest.window_start)}", {**route.run_conf(), "event": event})
        )
    for dataset, reason in not_run.items():
        log.warning("dataset %s: %s", dataset, reason)
    return planned, not_run
