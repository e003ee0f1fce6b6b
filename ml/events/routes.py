"""Which training an upload starts: the per-dataset routes of event-driven runs (dags/event_routes.yaml).

A route names a raw prefix and the mlops_training params of the runs its new objects start (dataset, target, task and,
optionally, the search settings), and what a drift event of the dataset's models does (`on_drift`: `retrain`, a run
with the same params, or `alert`, a logged warning only; the default). The file is small and validated as a whole
(ml/schemas/event_routes.json, then the names with ml.ingest.config's rules, unique prefixes and datasets): a bad
file is a RoutesError naming the entry and what is wrong, never a run with defaults. An object under no route's
prefix starts nothing (the caller logs it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ml.events.s3_notifications import CreatedObject

ROUTES_SCHEMA = "event_routes"
ON_DRIFT_RETRAIN, ON_DRIFT_ALERT = "retrain", "alert"


class RoutesError(ValueError):
    """A routes file that cannot be used: what is wrong and where."""


@dataclass(frozen=True)
class DatasetRoute:
    """New objects under `prefix` start an mlops_training run on `dataset` with these params."""

    prefix: str  # s3://bucket/prefix/ (ends with /)
    dataset: str
    target: str
    task: str
    params: Mapping[str, Any] = field(default_factory=dict)
    on_drift: str = ON_DRIFT_ALERT

    def covers(self, obj: CreatedObject) -> bool:
        return obj.uri.startswith(self.prefix)

    def run_conf(self) -> dict[str, Any]:
        """The params of a run this route starts (the DAG's own defaults for every param not named here)."""
        return {
            **self.params,
            "raw_uri": self.prefix,
            "dataset": self.dataset,
            "target": self.target,
            "task": self.task,
        }


@dataclass(frozen=True)
class Routes:
    routes: tuple[DatasetRoute, ...]

    def route_for(self, obj: CreatedObject) -> DatasetRoute | None:
        """The route with the longest prefix covering the object; None when no route does."""
        covering = [route for route in self.routes if route.covers(obj)]
        return max(covering, key=lambda route: len(route.prefix)) if covering else None

    def for_dataset(self, dataset: str) -> DatasetRoute | None:
        """The route of a dataset (datasets are unique across routes); None when no route names it."""
        return next((route for route in self.routes if route.dataset == dataset), None)


@cache
def _validator() -> Any:
    import fastjsonschema

    from ml.events.envelope import load_schema

    return fastjsonschema.compile(load_schema(ROUTES_SCHEMA))


def parse_routes(document: object, source: str) -> Routes:
    """Routes from a parsed YAML/JSON document; RoutesError naming `source` and the entry on anything wrong."""
    import fastjsonschema

    from ml.ingest.config import check_ingest_names

    try:
        _validator()(document)
    except fastjsonschema.JsonSchemaValueException as error:
        raise RoutesError(f"{source}: {error.message}") from None
    assert isinstance(document, dict)  # the schema says so
    routes = []
    for index, entry in enumerate(document["datasets"]):
        where = f"{source}: datasets[{index}] ({entry['prefix']})"
        try:
            check_ingest_names(entry["prefix"], entry["dataset"], entry["target"], forbidden_buckets=())
        except ValueError as error:
            raise RoutesError(f"{where}: {error}") from None
        routes.append(
            DatasetRoute(
                entry["prefix"],
                entry["dataset"],
                entry["target"],
                entry["task"],
                entry.get("params", {}),
                entry.get("on_drift", ON_DRIFT_ALERT),
            )
        )
    _check_unique(routes, source)
    return Routes(tuple(routes))


def _check_unique(routes: Sequence[DatasetRoute], source: str) -> None:
    for attribute in ("prefix", "dataset"):
        values = [getattr(route, attribute) for route in routes]
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise RoutesError(f"{source}: each {attribute} may have one route only; repeated: {', '.join(repeated)}")


def load_routes(path: Path) -> Routes:
    """The routes file at `path` (YAML, or JSON, which is YAML too)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise RoutesError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise RoutesError(f"{path}: not YAML: {error}") from None
    return parse_routes(document, str(path))
