"""Re-scoring for the gate: the champion and the challenger on the challenger's test split, when the champion was
trained (and tested) on another snapshot."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ml.features import OTHER, FeatureSpec
from ml.predictor import load_version
from ml.registry.context import RegistryContext, RegistryError

log = logging.getLogger(__name__)


def rescore_on_test_split(
    context: RegistryContext, name: str, challenger_version: str, champion_version: str, metric: str
) -> tuple[float, float]:
    """Score both versions on the challenger's test split; returns (challenger value, champion value).

    The split holds the challenger's transformed features. The champion needs raw rows for its own spec, so they are
    recovered by inverting the challenger's transform (numeric: x * std + mean; categorical: the hot category). Values
    the challenger's preprocessing had imputed or lumped into `__other__` reach the champion as the imputed value / an
    unseen category: the comparison stays on identical rows and labels."""
    from ml.clients import arrow_filesystem
    from ml.data import ParquetSplit
    from ml.metrics import compute_metrics
    from ml.models import base_metric_name

    challenger = load_version(context.mlflow, name, challenger_version)
    champion = load_version(context.mlflow, name, champion_version)
    features_uri = challenger.tags.get("features_uri")
    if not features_uri:
        raise RegistryError(f"{name} v{challenger_version} has no features_uri tag: cannot re-score the champion")
    spec = challenger.spec
    filesystem = arrow_filesystem(context.s3)
    split = ParquetSplit.open(features_uri, "test", spec, filesystem)
    base = base_metric_name(metric)

    # Block by block: the features of one block at a time, the outputs and labels of the whole split.
    labels, outputs, probabilities, champion_outputs, champion_probabilities = [], [], [], [], []
    for block in split.blocks(filesystem):
        labels.append(block.y)
        predicted, probability = challenger.predictor.predict_matrix(block.X)
        outputs.append(predicted)
        probabilities.append(probability)
        raw_rows = features_to_raw_rows(spec, block.X)
        predicted, probability = champion.predictor.predict_matrix(champion.spec.transform(raw_rows))
        champion_outputs.append(predicted)
        champion_probabilities.append(probability)
    y = _joined(labels)
    challenger_metrics = compute_metrics(
        spec.task, y, _joined(outputs), _joined(probabilities), num_classes=spec.num_outputs
    )
    champion_output = _joined(champion_outputs)
    champion_probability = _joined(champion_probabilities)
    if spec.task == "classification" and spec.classes:
        # Express the champion's classes in the challenger's label indices (a class it lacks is never predicted).
        position = {label: index for index, label in enumerate(spec.classes)}
        champion_classes = champion.spec.classes or []
        mapped = np.array([position.get(champion_classes[int(i)], -1) for i in champion_output], dtype=np.int64)
        reordered = None
        if champion_probability is not None:
            reordered = np.zeros((len(mapped), len(spec.classes)))
            for source_index, label in enumerate(champion_classes):
                if label in position:
                    reordered[:, position[label]] = champion_probability[:, source_index]
        champion_metrics = compute_metrics(spec.task, y, mapped, reordered, num_classes=spec.num_outputs)
    else:
        champion_metrics = compute_metrics(spec.task, y, champion_output, None)
    if base not in challenger_metrics:
        raise RegistryError(f"metric {metric!r} is not computed for {spec.task} (have {sorted(challenger_metrics)})")
    log.info(
        "%s: re-scored on %s test split (%d rows): challenger v%s %s=%.6g, champion v%s %s=%.6g",
        name,
        spec.snapshot_id,
        split.rows,
        challenger_version,
        base,
        challenger_metrics[base],
        champion_version,
        base,
        champion_metrics[base],
    )
    return float(challenger_metrics[base]), float(champion_metrics[base])


def _joined(parts: list[Any]) -> Any:
    """The blocks' arrays end to end (None when the predictor gives none, e.g. no probabilities for regression)."""
    if not parts or parts[0] is None:
        return None if parts else np.empty(0)
    return np.concatenate(parts)


def features_to_raw_rows(spec: FeatureSpec, features: np.ndarray) -> list[dict[str, Any]]:
    """Invert `spec.transform` as far as it can be: standardised numerics back to their units, one-hot back to the
    category (None for `__other__`)."""
    rows: list[dict[str, Any]] = [{} for _ in range(features.shape[0])]
    column = 0
    for feature in spec.numeric:
        values = features[:, column].astype(np.float64) * (feature.std or 1.0) + feature.mean
        for row, value in zip(rows, values, strict=True):
            row[feature.name] = float(value)
        column += 1
    for cat in spec.categorical:
        options = [*cat.categories, OTHER]
        hot = features[:, column : column + len(options)].argmax(axis=1)
        for row, index in zip(rows, hot, strict=True):
            row[cat.name] = None if options[int(index)] == OTHER else options[int(index)]
        column += len(options)
    return rows
