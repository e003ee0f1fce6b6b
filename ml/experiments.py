"""MLflow experiments and runs as the pipeline names them: one experiment per dataset, runs found by their tags."""

from __future__ import annotations

from typing import Any

# Values of the `mlops.kind` run tag.
PARENT_RUN_KIND = "tune_search"  # a search's parent run (ml.tune.tracking)
TRIAL_RUN_KIND = "tune_trial"  # one trial's nested run (ml.tune.callbacks)


def get_or_create_experiment(client: Any, name: str) -> str:
    """The id of the experiment `name`: restored if it was deleted, created if missing (a concurrent creation wins)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created concurrently by another task
        return str(client.get_experiment_by_name(name).experiment_id)


def quoted(value: str) -> str:
    """A string literal for an MLflow search filter.

    MLflow takes the text between the quotes verbatim (it has no escapes: `'it\\'s'` would search for `it\\'s`), so
    the literal is quoted with a quote character that the value does not contain."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"an MLflow search filter cannot match a value with both kinds of quotes: {value!r}")
