"""The MLflow Model Registry side of the pipeline.

  conventions  model names, aliases, version tags and artifacts: what every other part relies on
  lock         AliasLock, the S3 lock that serialises alias moves of one model: lease renewed while held, and a
               fence (ensure_held) before every write under it (injectable clock)
  register     register_model: a new version with lineage, idempotent per DAG run
  gate         decide: the promotion rule as a pure function
  rescore      both versions scored on the challenger's test split
  promote      promote (the gate under the lock), rollback, register_and_promote
  cli          `python -m ml register` and `python -m ml promote`

Loading a version for prediction lives in ml.predictor (serving and evaluation share it).
"""

from __future__ import annotations

from ml.moved import moved_names

# Registered versions carry their pyfunc code (ml/serve/pyfunc_model.py as it was when they were registered). Code
# registered before ml.registry became a package imports these names from here; they still resolve, so that
# `mlflow.pyfunc.load_model` keeps loading those versions.
_REGISTERED_CODE_NAMES = {
    "CHECKPOINT_ARTIFACT": "ml.registry.conventions",
    "FEATURE_SPEC_ARTIFACT": "ml.registry.conventions",
    "TabularPredictor": "ml.predictor",
    "output_frame": "ml.predictor",
}


__getattr__ = moved_names(__name__, _REGISTERED_CODE_NAMES)
