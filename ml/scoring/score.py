"""The executor side of batch scoring: pandas batches in, the service's answers out, row by row.

Each Python worker loads a model version once (`cached_predictor`, keyed by model and version) and then scores every
Arrow batch Spark hands it. A row is turned into the JSON row a client would send for it (`request_row`), checked by
the service's own validation and predicted by the service's own code path (TabularPredictor.predict_rows, then
ml.predictor.answer_fields), so a written prediction is the service's answer for that row.

One bad row does not fail the table: the service refuses a whole request (400/422) for one bad row, but a batch has
no client to fix and resend it. The row is written with null predictions and the service's message for that row
(sent alone) in `error`, so nothing is lost and the refusal is queryable.
"""

from __future__ import annotations

import math
import numbers
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ml.features import NULL_TOKENS, NUMBER_PATTERN, FeatureSpec
from ml.predictor import TabularPredictor, answer_fields
from ml.settings import S3Settings

PREDICTION, PROBABILITIES, ERROR = "prediction", "probabilities", "error"
SCORE_COLUMNS = (PREDICTION, PROBABILITIES, ERROR)

_NUMBER = re.compile(NUMBER_PATTERN)
_NULLS = frozenset(token.strip().lower() for token in NULL_TOKENS)

# One model per (name, version) per Python worker: Spark reuses its workers across tasks
# (spark.python.worker.reuse), so a version is downloaded and loaded once per worker, not once per batch.
_PREDICTORS: dict[tuple[str, str], TabularPredictor] = {}
_LOCK = threading.Lock()

Loader = Callable[[], TabularPredictor]


def cached_predictor(key: tuple[str, str], load: Loader) -> TabularPredictor:
    """The worker's predictor for `key`, loaded by `load` the first time only."""
    with _LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = load()
        return _PREDICTORS[key]


def load_from_s3(checkpoint_uri: str, spec_json: str, s3: S3Settings) -> TabularPredictor:
    """A version's checkpoint from S3 (a few small files, tensors and JSON only) with the feature spec the driver
    read; the temporary copy is removed once the weights are in memory."""
    from ml.clients import s3_client
    from ml.models import load_model
    from ml.predictor import download_checkpoint

    with tempfile.TemporaryDirectory(prefix="mlops-score-") as folder:
        model = load_model(download_checkpoint(checkpoint_uri, folder, s3_client(s3)))
    return TabularPredictor(model, FeatureSpec.from_json(spec_json))


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as Python ones; NaN, NaT and None as None."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def request_row(record: Mapping[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """The JSON row a client would send for a stored row: the spec's input columns only (ids, the target and other
    columns stay out, as the service refuses unknown fields). A numeric column's text (CSV) becomes a number as
    preprocessing parses it, a null spelling or a non-finite number (which JSON cannot carry) null, and any other
    text stays text, which the service refuses with its message."""
    numeric = {f.name for f in spec.numeric}
    row: dict[str, Any] = {}
    for name in spec.input_columns:
        value = _plain(record.get(name))
        if name in numeric:
            if isinstance(value, str):
                text = value.strip()
                if not text or text.lower() in _NULLS or text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
                    value = None
                elif _NUMBER.match(value):
                    value = float(text)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
        row[name] = value
    return row


def score_rows(predictor: TabularPredictor, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per row: {"prediction", "probabilities" (class -> probability, classification only), "error"},
    each the service's answer (or refusal) for that row."""
    from ml.serve.validation import row_refusal

    results: list[dict[str, Any]] = [
        {PREDICTION: None, PROBABILITIES: None, ERROR: row_refusal(row, predictor.spec)} for row in rows
    ]
    accepted = [index for index, result in enumerate(results) if result[ERROR] is None]
    try:
        _predict_into(predictor, rows, accepted, results)
    except ValueError:
        # A value validation passes but the transform refuses (the service's 422): find it row by row.
        for index in accepted:
            try:
                _predict_into(predictor, rows, [index], results)
            except ValueError as error:
                results[index][ERROR] = str(error)
    return results


def _predict_into(
    predictor: TabularPredictor, rows: Sequence[dict[str, Any]], indices: list[int], results: list[dict[str, Any]]
) -> None:
    if not indices:
        return
    outputs, probabilities = predictor.predict_rows([rows[i] for i in indices])
    fields = answer_fields(outputs, probabilities, predictor.classes)  # the service's answer, field by field
    for position, index in enumerate(indices):
        results[index][PREDICTION] = fields["predictions"][position]
        if "probabilities" in fields:
            results[index][PROBABILITIES] = dict(zip(fields["classes"], fields["probabilities"][position], strict=True))


def score_frame(frame: Any, predictor: TabularPredictor) -> Any:
    """A pandas batch plus `prediction`, `probabilities` and `error` (the input columns unchanged)."""
    import pandas as pd

    rows = [request_row(record, predictor.spec) for record in frame.to_dict("records")]
    results = score_rows(predictor, rows)
    scored = frame.copy()
    prediction = [r[PREDICTION] for r in results]
    scored[PREDICTION] = pd.Series(prediction, index=frame.index, dtype=object if predictor.classes else "float64")
    scored[PROBABILITIES] = pd.Series([r[PROBABILITIES] for r in results], index=frame.index, dtype=object)
    scored[ERROR] = pd.Series([r[ERROR] for r in results], index=frame.index, dtype=object)
    return scored


def batch_scorer(key: tuple[str, str], load: Loader) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInPandas function: the model from the worker's cache (loaded on the first batch), then each batch
    scored. `load` travels to the executors with the function, so it must be picklable (a module-level function or
    a functools.partial of one)."""

    def score_batches(batches: Iterator[Any]) -> Iterator[Any]:
        predictor: TabularPredictor | None = None
        for batch in batches:
            predictor = predictor or cached_predictor(key, load)
            yield score_frame(batch, predictor)

    return score_batches
