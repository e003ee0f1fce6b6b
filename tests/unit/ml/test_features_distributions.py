"""ml.features.distributions: the training distributions' document (a file beside the spec), its JSON round trip
and version check; and the spec itself, which does not carry them, loading as it did."""

from __future__ import annotations

import json

import pytest

from ml.features import (
    OTHER,
    SPEC_VERSION,
    CategoricalDistribution,
    FeatureSpec,
    NumericDistribution,
    TrainingDistributions,
)
from ml.features.distributions import DISTRIBUTIONS_VERSION
from ml.storage import S3Uri, feature_spec_uri, training_distributions_uri


def make_distributions() -> TrainingDistributions:
    return TrainingDistributions(
        dataset="toy",
        snapshot_id="snap",
        rows=10,
        numeric=[
            NumericDistribution("x", [1.5, 3.25], [0.25, 0.5, 0.25], 8, 0.2, 2.0, 1.0, 0.1, 4.0),
            NumericDistribution("gone", [], [0.0], 0, 1.0),
        ],
        categorical=[CategoricalDistribution("colour", ["red", "blue"], [0.5, 0.3, 0.2], 10, 0.0)],
    )


def test_json_round_trip_and_layout() -> None:
    distributions = make_distributions()
    text = distributions.to_json()
    assert TrainingDistributions.from_json(text) == distributions
    data = json.loads(text)
    assert data["version"] == DISTRIBUTIONS_VERSION and (data["bins"], data["split"]) == (10, "train")
    assert data["numeric"][1] == {
        "name": "gone",
        "edges": [],
        "fractions": [0.0],
        "count": 0,
        "missing": 1.0,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
    }
    assert data["categorical"][0]["fractions"] == [0.5, 0.3, 0.2]


def test_features_by_name_and_category_bins() -> None:
    distributions = make_distributions()
    assert distributions.feature("x").count == 8
    colour = distributions.feature("colour")
    assert isinstance(colour, CategoricalDistribution) and colour.bins == ["red", "blue", OTHER]
    with pytest.raises(KeyError):
        distributions.feature("size")


def test_unknown_version_is_refused() -> None:
    data = json.loads(make_distributions().to_json())
    data["version"] = DISTRIBUTIONS_VERSION + 1
    with pytest.raises(ValueError, match="training distributions version"):
        TrainingDistributions.from_dict(data)


def test_the_spec_is_unchanged_and_a_spec_written_before_distributions_loads() -> None:
    """The distributions live beside the spec: a spec written before them (no such field) loads, and the spec that
    serving loads does not grow."""
    old = {
        "dataset": "toy",
        "snapshot_id": "snap",
        "task": "classification",
        "target": "y",
        "numeric": [{"name": "x", "fill": 1.0, "mean": 1.0, "std": 2.0}],
        "categorical": [{"name": "colour", "categories": ["red"]}],
        "classes": ["a", "b"],
        "rows": {"train": 8, "validation": 1, "test": 1},
        "dropped": {"duplicates": 0, "without_target": 0},
        "version": 1,
        "feature_columns": ["x", "colour=red", f"colour={OTHER}"],
    }
    assert SPEC_VERSION == 1
    spec = FeatureSpec.from_dict(old)
    assert json.loads(spec.to_json()) == old


def test_the_file_lies_beside_the_spec() -> None:
    features = "s3://lake/datasets/toy/features/snap"
    assert str(training_distributions_uri(features)) == f"{features}/training_distributions.json"
    spec_uri = feature_spec_uri(features)
    folder = S3Uri(spec_uri.bucket, spec_uri.key.rsplit("/", 1)[0])
    assert training_distributions_uri(folder) == training_distributions_uri(S3Uri.parse(features))
