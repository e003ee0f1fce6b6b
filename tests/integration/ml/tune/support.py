"""What the tune integration tests share: the small search they run, running it against the stack's settings, and
reading what it published to the training-metrics topic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ml.settings import Settings
from ml.topics import Topic
from ml.tune.config import SearchConfig, SearchResult
from ml.tune.space import SEARCH_SPACES_DIR, load_search_space

SMALL_SPACE: Path = SEARCH_SPACES_DIR / "small.json"


def small_search(dataset: str, snapshot_id: str, run_name: str, **overrides: Any) -> SearchConfig:
    """4 trials of at most 3 epochs, 2 at a time, on the small space (sized for 2 cores)."""
    values: dict[str, Any] = {
        "dataset": dataset,
        "snapshot_id": snapshot_id,
        "run_name": run_name,
        "search_space": load_search_space(SMALL_SPACE),
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "max_epochs": 3,
        "patience": 3,
        "seed": 1,
        "dag_run_id": f"manual__{run_name}",
    }
    return SearchConfig(**{**values, **overrides})


def search(
    config: SearchConfig, settings: Settings, *, mlflow: bool = True, kafka: bool = True, callbacks: Any = ()
) -> SearchResult:
    """run_search against the stack, with MLflow tracking and the Kafka metrics stream unless switched off."""
    from ml.tune.search import run_search

    return run_search(
        config,
        s3=settings.s3,
        lake=settings.lake,
        ray=settings.ray,
        mlflow=settings.mlflow if mlflow else None,
        kafka=settings.kafka if kafka else None,
        callbacks=callbacks,
    )


class MetricsTopicReader:
    """Reads a training-metrics topic (v1 unless told) from the end it had when created (other runs share the topic),
    or from its beginning."""

    def __init__(self, settings: Settings, topic: Topic | None = None, *, from_beginning: bool = False) -> None:
        from ml.events.consumer import open_topic
        from ml.topics import TRAINING_METRICS

        name = (topic or TRAINING_METRICS).name
        self.consumer = open_topic(settings.kafka, name, from_beginning=from_beginning, consumer_timeout_ms=1000)

    def read(self, key_prefix: str, deadline_s: float = 60.0) -> list[tuple[str, dict[str, Any]]]:
        """Every message published since, up to the topic's end now (a search flushes its publisher before it
        returns), whose key starts with `key_prefix`; closes the reader."""
        found: list[tuple[str, dict[str, Any]]] = []
        try:
            partitions = list(self.consumer.assignment())
            end = self.consumer.end_offsets(partitions)
            deadline = time.monotonic() + deadline_s  # a bound on a broken broker, not a wait for time to pass
            while any(self.consumer.position(p) < end[p] for p in partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the metrics topic was not read up to {end} within {deadline_s} s")
                for records in self.consumer.poll(timeout_ms=1000).values():
                    for record in records:
                        key = record.key.decode() if record.key else ""
                        if key.startswith(key_prefix):
                            found.append((key, json.loads(record.value)))
        finally:
            self.consumer.close()
        return found
