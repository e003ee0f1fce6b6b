"""A Ray Tune experiment written by the single-module ml/tune.py (tests/fixtures/legacy_tune_state/, see
tests/fixtures/README.md) is what a task retried after an upgrade finds in S3: today's code must restore it, not
start over.

The fixture was interrupted with 2 trials finished (a5055a0a, 175adff9), a third running with its epoch-1 checkpoint
(3f442131) and the fourth not created yet. Restored under today's settings: the finished trials keep their results
and do not run again, the running one continues after its checkpoint, the searcher adds the fourth, the search
completes with 4 trials and stores its result; the callbacks are today's, for the current endpoints (the fixture's
record none): Kafka gets the epochs that ran after the restore, MLflow a parent run with those trials' child runs.

State written before Tune state was signed (ml.tune.signing) carries no signatures: the upgrade signs such a folder
once (`sign_tree`, as an operator migrating it would) before it is restored; unsigned, or changed after signing, it
is refused before anything of it is unpickled, naming the file, and nothing runs.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.settings import Settings
from ml.storage import S3Uri, delete_prefix, exists, read_json, tune_uri
from ml.tune.signing import TamperedTuneState
from tests.integration.ml.tune.support import MetricsTopicReader, search, small_search
from tests.support.synthetic_features import SyntheticFeatures, write_synthetic_features

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "legacy_tune_state"
DATASET, SNAPSHOT, RUN_NAME = "legacy-tune-state", "snap0001", "legacy-v0"
FINISHED = {"a5055a0a", "175adff9"}  # TERMINATED in the fixture's experiment state
RUNNING = "3f442131"  # RUNNING, its epoch-1 checkpoint registered


def _retire_parent_runs(client: Any, name: str) -> None:
    """Untag the parent runs earlier runs of this test left in the MLflow experiment `name` and delete it.

    The experiment is named after the dataset, fixed here; a search restores a deleted experiment (with its runs) and
    would continue an earlier run's parent run found by its tags. Retagged, it is found no more."""
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`mlops.run_name` = '{RUN_NAME}'", run_view_type=ViewType.ALL
    )
    for run in runs:
        if run.info.lifecycle_stage == "deleted":
            client.restore_run(run.info.run_id)
        client.set_tag(run.info.run_id, "mlops.run_name", f"{RUN_NAME}-retired")
    client.delete_experiment(experiment.experiment_id)


def _fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURE.rglob("*") if p.is_file() and not p.name.startswith("README"))


@pytest.fixture
def legacy_state(s3_service: None, settings: Settings, s3_client: Any, mlflow_client: Any) -> Iterator[S3Uri]:
    """The features the fixture was made from, and the fixture itself where the old code wrote it."""
    experiment = tune_uri(settings.lake, DATASET, SNAPSHOT, RUN_NAME)
    features: SyntheticFeatures | None = None

    def clean() -> None:
        delete_prefix(experiment, s3_client)
        _retire_parent_runs(mlflow_client, DATASET)
        if features is not None:
            features.cleanup()  # the features and lake/tune/<dataset>

    clean()
    features = write_synthetic_features(settings, "regression", 1, dataset=DATASET, snapshot_id=SNAPSHOT, seed=0)
    for path in _fixture_files():
        key = experiment.join(path.relative_to(FIXTURE).as_posix())
        s3_client.put_object(Bucket=key.bucket, Key=key.key, Body=path.read_bytes())
    try:
        yield experiment
    finally:
        clean()


def _sign(experiment: S3Uri, settings: Settings) -> list[str]:
    """What migrating a trusted folder written before signing takes: sign it as it is, once."""
    from ml.clients import keyless_arrow_filesystem
    from ml.tune.signing import sign_tree

    filesystem = keyless_arrow_filesystem(settings.s3)
    return sign_tree(filesystem, f"{experiment.bucket}/{experiment.key}", settings.ray.state_signing_key)


def test_a_search_state_written_before_the_package_split_is_restored(
    local_ray: None,
    legacy_state: S3Uri,
    settings: Settings,
    s3_client: Any,
    mlflow_client: Any,
    kafka_service: None,
) -> None:
    from ml.events.envelope import validate_envelope
    from ml.topics import TRAINING_METRICS

    assert len(_sign(legacy_state, settings)) == len(_fixture_files())
    config = small_search(DATASET, SNAPSHOT, RUN_NAME, dag_run_id="manual__legacy-v0")
    assert config.experiment_uri(settings.lake) == legacy_state
    # The fixture's manifest is this search's: a resume, not "other settings".
    # (Fields recorded since, for data-parallel trials, are absent from it: a missing one reads as its default,
    # ml.tune.config.INVARIANT_DEFAULTS, so the resume below is accepted.)
    since = {"workers_per_trial", "gpus_per_worker"}
    expected = {key: value for key, value in config.manifest("regression").items() if key not in since}
    assert read_json(legacy_state.join("search_config.json"), s3_client) == expected

    reader = MetricsTopicReader(settings)
    result = search(config, settings)
    messages = reader.read(f"{RUN_NAME}:")

    # The search completed with every trial and stored its result.
    assert result.num_trials == 4 and result.num_errored == 0
    assert exists(result.search_result_uri, s3_client)
    assert read_json(result.search_result_uri, s3_client) == result.to_dict()
    assert S3Uri.parse(result.best_checkpoint_uri).key.startswith(f"{legacy_state.key}/trial_")

    # Kafka, through today's callback for the current settings: only the epochs that ran after the restore.
    epochs: dict[str, list[int]] = {}
    for key, envelope in messages:
        validate_envelope(envelope, TRAINING_METRICS)
        assert envelope["dag_run_id"] == "manual__legacy-v0"
        payload = envelope["payload"]
        epochs.setdefault(payload["trial_id"], []).append(payload["epoch"])
    print(f"\nepochs published after the restore: {epochs}; best trial {result.best_trial_id}")
    assert not FINISHED & set(epochs), f"finished trials ran again: {epochs}"
    assert sorted(epochs.get(RUNNING, [])) == [2, 3], "the running trial did not continue after its checkpoint"
    (new_trial,) = set(epochs) - {RUNNING}  # the searcher's fourth trial
    assert sorted(epochs[new_trial]) == list(range(1, len(epochs[new_trial]) + 1))

    # The finished trials keep their results: their files in S3 are the fixture's, untouched.
    for trial in sorted(FINISHED):
        for name in ("result.json", "progress.csv"):
            stored = s3_client.get_object(Bucket=legacy_state.bucket, Key=legacy_state.join(f"trial_{trial}", name).key)
            assert stored["Body"].read() == (FIXTURE / f"trial_{trial}" / name).read_bytes(), (trial, name)
    # ... and stand in the restored experiment's state as finished trials with their scores.
    kept = {json.loads(line)["trial_id"]: json.loads(line) for line in _result_lines(s3_client, legacy_state)}
    assert set(kept) >= FINISHED | {RUNNING, new_trial}
    assert kept["a5055a0a"]["val_loss"] == pytest.approx(0.18405786156654358)

    # MLflow: a parent run of this search (not the fixture's, which lives on another server), finished, with one
    # child per trial that ran after the restore.
    parent = mlflow_client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlops.run_name"] == RUN_NAME and parent.data.tags["mlops.dataset"] == DATASET
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {c.data.tags["mlops.trial_id"] for c in children} == set(epochs)
    assert {c.info.status for c in children} == {"FINISHED"}


class PlantedCode:
    """Unpickling this creates `marker`: the proof that code from the folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-then-tuner-pkl-replaced"])
def test_legacy_state_not_signed_by_this_stack_is_refused_and_nothing_runs(
    legacy_state: S3Uri, settings: Settings, s3_client: Any, tmp_path: Path, signed: bool
) -> None:
    """No Ray is running here: the refusal comes before Ray, MLflow or any Tune code reads the folder."""
    marker = tmp_path / "planted-code-ran"
    if signed:
        _sign(legacy_state, settings)
        tuner_pkl = legacy_state.join("tuner.pkl")
        s3_client.put_object(Bucket=tuner_pkl.bucket, Key=tuner_pkl.key, Body=pickle.dumps(PlantedCode(marker)))
        refusal = rf"{tuner_pkl.key}: its content does not match its signature"
    else:
        refusal = rf"{legacy_state.key}/experiment_state-2026-12-02_01-05-25\.json: it has no valid signature"
    config = small_search(DATASET, SNAPSHOT, RUN_NAME, dag_run_id="manual__legacy-v0")
    with pytest.raises(TamperedTuneState, match=refusal):
        search(config, settings, kafka=False)
    assert not marker.exists(), "code from the folder ran"
    assert not exists(legacy_state.join("search_result.json"), s3_client)
    for path in _fixture_files():  # the folder as it was found: nothing ran that would have written to it
        if path.name != "tuner.pkl" or not signed:
            stored = s3_client.get_object(
                Bucket=legacy_state.bucket, Key=legacy_state.join(path.relative_to(FIXTURE).as_posix()).key
            )
            assert stored["Body"].read() == path.read_bytes(), path


def _result_lines(client: Any, experiment: S3Uri) -> list[str]:
    """The last line of every trial's result.json (one JSON result per reported epoch)."""
    from ml.storage import list_keys

    lines = []
    for obj in list_keys(experiment, client):
        if obj["Key"].endswith("/result.json"):
            body = client.get_object(Bucket=experiment.bucket, Key=obj["Key"])["Body"].read().decode()
            lines.append(body.strip().splitlines()[-1])
    return lines
