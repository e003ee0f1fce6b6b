"""An interrupted search (SIGINT, as Ctrl+C or an orchestrator's stop) resumes under the same run name without
running any finished trial again, nor any epoch but the one in flight at the interruption; its MLflow parent run is
continued; the model it finds is evaluated. Everything Tune wrote (the driver's state and the workers' checkpoints) is
signed with the stack's key; a retry that finds `tuner.pkl` replaced by pickled code refuses it, naming it, and runs
nothing (the code included), and once the genuine file is back the resume proceeds.

Tune saves its callbacks with the experiment and uses the saved copies on restore, so the test's callback keeps its
records in module state, which survives pickling.
"""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml.settings import Settings
from ml.storage import exists, list_keys
from ml.tune.config import SearchIncomplete
from ml.tune.signing import SIGNATURE_SUFFIX, TamperedTuneState
from tests.integration.ml.tune.support import search, small_search
from tests.support import tune_interrupt
from tests.support.synthetic_features import SyntheticFeatures, delete_mlflow_experiment, write_synthetic_features

RECORDS: list[tuple[int, str, int]] = []  # (phase, trial id, epoch) of every result the driver processed
COMPLETED: list[tuple[int, str]] = []  # (phase, trial id)
PHASE = {"now": 1}


class RecordResults(tune.Callback):
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        RECORDS.append((PHASE["now"], trial.trial_id, int(result["epoch"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        COMPLETED.append((PHASE["now"], trial.trial_id))


class PlantedCode:
    """What something that can write to lake/tune/ could plant as tuner.pkl: unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def regression_features(s3_service: None, settings: Settings) -> Iterator[SyntheticFeatures]:
    features = write_synthetic_features(settings, "regression", 1)
    try:
        yield features
    finally:
        features.cleanup()
        delete_mlflow_experiment(settings, features.dataset)


def test_interrupted_search_resumes_without_rerunning_trials(
    local_ray: None,
    regression_features: SyntheticFeatures,
    settings: Settings,
    s3_client: Any,
    mlflow_client: Any,
    kafka_service: None,
    tmp_path: Path,
) -> None:
    from ml.clients import keyless_arrow_filesystem
    from ml.evaluate import evaluate_best
    from ml.tune.signing import signed_filesystem

    config = small_search(
        regression_features.dataset, regression_features.snapshot_id, f"resume-{uuid.uuid4().hex[:8]}"
    )
    RECORDS.clear()
    COMPLETED.clear()
    PHASE["now"] = 1
    tune_interrupt.ARMED["after"] = 2  # SIGINT once 2 trials have finished: Tune saves its state and returns
    tune_interrupt.COMPLETED.clear()
    try:
        with pytest.raises(SearchIncomplete, match="run it again"):
            search(config, settings, callbacks=[RecordResults(), tune_interrupt.InterruptAfterTrials()])
    finally:
        tune_interrupt.ARMED["after"] = None
    first_done = {trial for phase, trial in COMPLETED if phase == 1}
    assert len(first_done) >= 2
    experiment = config.experiment_uri(settings.lake)
    signed = signed_filesystem(keyless_arrow_filesystem(settings.s3), settings.ray.state_signing_key)
    assert tune.Tuner.can_restore(f"{experiment.bucket}/{experiment.key}", storage_filesystem=signed)
    assert not exists(experiment.join("search_result.json"), s3_client)
    # Every file of the folder is signed: the driver's (tuner.pkl, experiment state, manifest) and the checkpoints
    # that Ray's workers wrote (with the key they found in the cluster's key-value store).
    keys = {obj["Key"] for obj in list_keys(experiment, s3_client) if not obj["Key"].endswith("/")}
    files = {key for key in keys if not key.endswith(SIGNATURE_SUFFIX)}
    assert {key for key in files if key + SIGNATURE_SUFFIX not in keys} == set()
    assert any("/checkpoint_" in key for key in files) and experiment.join("tuner.pkl").key in files

    # A retry that finds pickled code in place of tuner.pkl: refused before anything of it is unpickled, nothing runs.
    tuner_pkl = experiment.join("tuner.pkl")
    genuine = s3_client.get_object(Bucket=tuner_pkl.bucket, Key=tuner_pkl.key)["Body"].read()
    marker = tmp_path / "planted-code-ran"
    s3_client.put_object(Bucket=tuner_pkl.bucket, Key=tuner_pkl.key, Body=pickle.dumps(PlantedCode(marker)))
    PHASE["now"] = 2
    with pytest.raises(TamperedTuneState, match=rf"{tuner_pkl.key}: its content does not match its signature"):
        search(config, settings)
    assert not marker.exists(), "the planted tuner.pkl was unpickled"
    assert not [record for record in RECORDS if record[0] == 2], "a trial ran from the refused state"

    s3_client.put_object(Bucket=tuner_pkl.bucket, Key=tuner_pkl.key, Body=genuine)  # the genuine state is back
    result = search(config, settings)  # the same run name: restores the saved experiment
    assert result.num_trials == 4 and result.num_errored == 0

    trials = {trial for _, trial, _ in RECORDS}
    assert len(trials) == 4
    rerun = {trial for phase, trial, _ in RECORDS if phase == 2} & first_done
    assert not rerun, f"finished trials ran again after the resume: {rerun}"
    assert any(phase == 2 for phase, _, _ in RECORDS), "nothing was left to run after the interruption"
    # An epoch runs once, except the one a running trial had just reported when the interruption came: Tune may stop
    # before that epoch's checkpoint is in its saved state, and the resumed trial then runs it again (at least once,
    # like a killed worker's epoch; its metrics are published again under the same key). Nothing else runs twice.
    pairs = Counter((trial, epoch) for _, trial, epoch in RECORDS)
    reported_before = {t: [e for phase, tt, e in RECORDS if tt == t and phase == 1] for t in trials - first_done}
    last_before = {t: max(epochs) for t, epochs in reported_before.items() if epochs}
    twice = {pair: count for pair, count in pairs.items() if count > 1}
    assert set(twice) <= set(last_before.items()) and set(twice.values()) <= {2}, f"an epoch ran again: {pairs}"
    for trial in trials:  # each trial's epochs are contiguous from 1, across the interruption
        epochs = sorted({epoch for _, t, epoch in RECORDS if t == trial})
        assert epochs == list(range(1, len(epochs) + 1)), (trial, epochs)

    # One parent run, continued; one child per trial.
    parent = mlflow_client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["mlops.trial_id"] for c in children) == sorted(trials)

    # Regression on the same learnable rule: far better than predicting the training mean.
    evaluation = evaluate_best(result, s3=settings.s3, mlflow=settings.mlflow)
    assert evaluation["metric"] == "rmse"
    assert evaluation["test_metrics"]["rmse"] < 0.5 * evaluation["baseline_test_metrics"]["rmse"]
    assert evaluation["test_metrics"]["r2"] > 0.7
