"""The MLflow pyfunc "model from code" of every registered version (logged by ml.registry, executed only by MLflow).

`mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"checkpoint": ..., "feature_spec": ...})` stores this
source file instead of a pickle; `mlflow.pyfunc.load_model` runs it, which builds the model from the artifacts:
tensors through `torch.load(weights_only=True)` and a JSON feature spec. Input: a table of raw rows (one column per
raw feature); output: `prediction` plus `probability_<class>` columns for classification. The project's `ml` package
must be importable where the model is loaded.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class TabularPyfuncModel(PythonModel):
    """FeatureSpec.transform + ml.models.predict behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        from ml.predictor import TabularPredictor
        from ml.registry.conventions import CHECKPOINT_ARTIFACT, FEATURE_SPEC_ARTIFACT

        self.predictor = TabularPredictor.from_files(
            context.artifacts[CHECKPOINT_ARTIFACT], context.artifacts[FEATURE_SPEC_ARTIFACT]
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from ml.predictor import output_frame

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        # pandas turns a missing value into NaN; the spec treats None as missing for numeric and categorical alike.
        rows = [
            {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
            for row in frame.to_dict(orient="records")
        ]
        outputs, probabilities = self.predictor.predict_rows(rows)
        result: pd.DataFrame = output_frame(outputs, probabilities, self.predictor.classes)
        return result


set_model(TabularPyfuncModel())
