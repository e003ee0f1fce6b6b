"""Aggregations of the monitoring page (pure): drift per model version, feature and window from mlops.drift.v1, and
serving latency per minute and model version from mlops.serving.metrics.v1."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ml.monitoring.read import Event, parse_time

ModelVersion = tuple[str, str]  # (model_name, model_version)
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class DriftPoint:
    """One feature in one window."""

    window_start: float
    window_end: float
    psi: float | None  # None: no row of the window carried the feature
    drifted: bool
    rows: int


@dataclass
class DriftSeries:
    """The windows of one model version, in window order, and each feature's points over them."""

    windows: list[tuple[float, float, int, bool]] = field(default_factory=list)  # (start, end, rows, drifted)
    features: dict[str, list[DriftPoint]] = field(default_factory=dict)
    psi_threshold: float | None = None  # the newest window's (the monitor's setting, normally constant)


def drift_series(events: Iterable[Event], model: str | None = None) -> dict[ModelVersion, DriftSeries]:
    """Drift per model version (of `model` only, when given), sorted by name and version. A window published again
    (the monitor recomputed it after a restart) counts once: the last message of a window wins."""
    windows: dict[ModelVersion, dict[str, Event]] = defaultdict(dict)
    for event in events:
        payload = event.payload
        if model is None or payload["model_name"] == model:
            windows[(payload["model_name"], payload["model_version"])][payload["window_start"]] = event
    result = {}
    for key in sorted(windows, key=version_order):
        series = DriftSeries()
        ordered = sorted((e.payload for e in windows[key].values()), key=lambda p: parse_time(p["window_start"]))
        for payload in ordered:
            start, end = parse_time(payload["window_start"]), parse_time(payload["window_end"])
            series.windows.append((start, end, payload["rows"], payload["drifted"]))
            series.psi_threshold = payload["thresholds"]["psi"]
            for feature in payload["features"]:
                point = DriftPoint(start, end, feature["psi"], feature["drifted"], feature["rows"])
                series.features.setdefault(feature["name"], []).append(point)
        series.features = dict(sorted(series.features.items()))
        result[key] = series
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q% of the values at or below it (a value that
    was measured, never an interpolation). `sorted_values` is sorted and not empty."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencyMinute:
    """The requests of one minute (by event time) to one model version."""

    minute: float  # epoch seconds of the minute's start
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    by_status_class: dict[str, int]  # "2xx", "4xx", "5xx" -> requests

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.by_status_class.items() if status[0] in "45")


def latency_by_minute(events: Iterable[Event], model: str | None = None) -> dict[ModelVersion, list[LatencyMinute]]:
    """Per model version (of `model` only, when given), its minutes in order: request count, latency percentiles
    over every request answered or refused (what callers waited), and the requests by status class."""
    latencies: dict[ModelVersion, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    statuses: dict[ModelVersion, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for event in events:
        payload = event.payload
        if model is not None and payload["model_name"] != model:
            continue
        key, minute = (payload["model_name"], payload["model_version"]), int(event.time // 60) * 60
        latencies[key][minute].append(float(payload["latency_ms"]))
        status_class = f"{int(payload['status']) // 100}xx"
        counts = statuses[key][minute]
        counts[status_class] = counts.get(status_class, 0) + 1
    result = {}
    for key in sorted(latencies, key=version_order):
        minutes = []
        for minute in sorted(latencies[key]):
            values = sorted(latencies[key][minute])
            p50, p95, p99 = (percentile(values, q) for q in PERCENTILES)
            minutes.append(
                LatencyMinute(minute, len(values), p50, p95, p99, dict(sorted(statuses[key][minute].items())))
            )
        result[key] = minutes
    return result


def models_seen(*names: Iterable[str]) -> list[str]:
    """The model names of both topics, sorted, each once."""
    return sorted({name for group in names for name in group})


def version_order(key: ModelVersion) -> tuple[str, int, str]:
    """Sort key: model name, then versions in number order (MLflow's versions are numbers: "10" after "9")."""
    name, version = key
    return (name, int(version) if version.isdigit() else -1, version)
