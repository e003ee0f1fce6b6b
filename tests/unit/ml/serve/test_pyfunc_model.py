"""ml.serve.pyfunc_model: the "model from code" of every registered version loads from its artifacts and predicts like
TabularPredictor, with pandas' NaN read as a missing value (MLflow loads it for real: tests/integration/ml/registry)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ml.predictor import TabularPredictor
from ml.serve.pyfunc_model import TabularPyfuncModel
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows


def pyfunc(tmp_path: Path, task: str = "classification") -> tuple[TabularPyfuncModel, TabularPredictor]:
    spec = make_spec(task)
    checkpoint = make_checkpoint(tmp_path / "checkpoint", spec, "medium")
    spec_path = tmp_path / "feature_spec.json"
    spec_path.write_text(spec.to_json())
    model = TabularPyfuncModel()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint), "feature_spec": str(spec_path)}))
    return model, TabularPredictor.from_files(checkpoint, spec_path)


def test_predicts_a_table_like_the_predictor(tmp_path: Path) -> None:
    model, predictor = pyfunc(tmp_path)
    rows = raw_rows(12, seed=2)
    frame = model.predict(None, pd.DataFrame(rows, columns=["x1", "x2", "color"]))
    labels, probabilities = predictor.predict_rows(rows)
    assert list(frame.columns) == ["prediction", "probability_no", "probability_yes"]
    assert list(frame["prediction"]) == labels
    assert np.allclose(frame[["probability_no", "probability_yes"]].to_numpy(), probabilities)


def test_nan_is_a_missing_value_for_numeric_and_categorical_columns(tmp_path: Path) -> None:
    model, predictor = pyfunc(tmp_path, "regression")
    frame = pd.DataFrame({"x1": [1.0, np.nan], "x2": [np.nan, 2.0], "color": [np.nan, "red"]})
    values = model.predict(None, frame)["prediction"].tolist()
    expected, _ = predictor.predict_rows(
        [{"x1": 1.0, "x2": None, "color": None}, {"x1": None, "x2": 2.0, "color": "red"}]
    )
    assert values == expected


def test_accepts_records_as_well_as_a_frame(tmp_path: Path) -> None:
    model, predictor = pyfunc(tmp_path)
    rows = raw_rows(3, seed=4)
    assert list(model.predict(None, rows)["prediction"]) == predictor.predict_rows(rows)[0]  # type: ignore[arg-type]
