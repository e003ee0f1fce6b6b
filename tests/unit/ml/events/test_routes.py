"""ml.events.routes: the per-dataset routes of event-driven runs, and the repository's own file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml.events.routes import Routes, RoutesError, load_routes, parse_routes
from ml.events.s3_notifications import CreatedObject

REPOSITORY_ROUTES = Path(__file__).parents[4] / "dags" / "event_routes.yaml"


def created(uri: str) -> CreatedObject:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return CreatedObject(bucket, key, 10, "e1", "s3:ObjectCreated:Put", "2026-12-03T08:00:00Z")


def _document(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "datasets": list(entries)}


CARS = {"prefix": "s3://raw/cars/", "dataset": "cars", "target": "Miles_per_Gallon", "task": "regression"}


def test_the_repository_routes_penguins_and_cars_with_their_targets_and_tasks() -> None:
    routes = load_routes(REPOSITORY_ROUTES)
    cars = routes.route_for(created("s3://raw/cars/new.csv"))
    penguins = routes.route_for(created("s3://raw/penguins/2026/12/part.parquet"))
    assert cars is not None and penguins is not None
    assert cars.run_conf() == {
        "raw_uri": "s3://raw/cars/",
        "dataset": "cars",
        "target": "Miles_per_Gallon",
        "task": "regression",
        "num_samples": 4,
        "max_epochs": 10,
    }
    assert (penguins.dataset, penguins.target, penguins.task) == ("penguins", "species", "classification")
    assert routes.route_for(created("s3://raw/unknown/x.csv")) is None
    assert routes.route_for(created("s3://other/cars/x.csv")) is None, "another bucket"
    assert routes.route_for(created("s3://raw/carsales/x.csv")) is None, "a prefix ends at its /"
    # drift retrains penguins; for cars it only alerts
    assert (penguins.on_drift, cars.on_drift) == ("retrain", "alert")
    assert routes.for_dataset("cars") is cars and routes.for_dataset("boats") is None


def test_drift_only_alerts_unless_a_route_says_retrain() -> None:
    (route,) = parse_routes(_document(CARS), "routes.yaml").routes
    assert route.on_drift == "alert"


def test_the_longest_prefix_wins() -> None:
    routes = parse_routes(_document(CARS, {**CARS, "prefix": "s3://raw/cars/eu/", "dataset": "cars_eu"}), "routes.yaml")
    assert isinstance(routes, Routes)
    assert routes.route_for(created("s3://raw/cars/eu/a.csv")).dataset == "cars_eu"  # type: ignore[union-attr]
    assert routes.route_for(created("s3://raw/cars/us/a.csv")).dataset == "cars"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"datasets": []}, "version"),
        (_document({**CARS, "prefix": "s3://raw/cars"}), "prefix"),  # not ending with /
        (_document({**CARS, "task": "ranking"}), "task"),
        (_document({**CARS, "params": {"num_sample": 3}}), "num_sample"),  # a typo is no silent default
        (_document({**CARS, "params": {"num_samples": 0}}), "num_samples"),
        (_document({**CARS, "on_drift": "panic"}), "on_drift"),
        (_document({**CARS, "dataset": "1cars"}), r"datasets\[0\] \(s3://raw/cars/\).*dataset '1cars'"),
        (
            _document(CARS, {**CARS, "dataset": "other"}),
            "each prefix may have one route only; repeated: s3://raw/cars/",
        ),
        (_document(CARS, {**CARS, "prefix": "s3://raw/more/"}), "each dataset may have one route only; repeated: cars"),
        ("just text", "must be object"),
    ],
)
def test_a_bad_routes_file_is_refused_naming_what_and_where(document: object, message: str) -> None:
    with pytest.raises(RoutesError, match=message) as refused:
        parse_routes(document, "dags/event_routes.yaml")
    assert str(refused.value).startswith("dags/event_routes.yaml: ")


def test_a_missing_or_unparsable_file_is_a_routes_error(tmp_path: Path) -> None:
    with pytest.raises(RoutesError, match="cannot be read"):
        load_routes(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("datasets: [\n")
    with pytest.raises(RoutesError, match="not YAML"):
        load_routes(broken)
