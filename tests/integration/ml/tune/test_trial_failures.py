"""Ray trials whose worker process is killed (SIGKILL) in the middle of a search.

What this file proves, against the real local stack (S3 for Tune's storage and the features, MLflow for tracking):

* killed once: Tune's `FailureConfig(max_failures=1)` (ml/tune/search.py) restarts the trial in a new process from
  its latest registered checkpoint; the search completes with no errored trial and writes its `search_result.json`;
* killed past its retry, as the only trial: the search raises RuntimeError ("all 1 trials failed"), writes no
  `search_result.json`, ends its MLflow parent run FAILED, and every way into registration (the stored result that
  `ml evaluate` reads, the evaluation that `ml.registry` consumes) finds nothing to register;
* killed past its retry next to a healthy trial: the search completes with one errored trial and the healthy trial as
  the best one, also when the killed trial had the better scores before it died (`summarise` in ml/tune/summary.py
  once took Ray's best trial over all trials, errored ones included; tests/unit/ml/tune/test_summary.py checks the
  choice on fake results).

Small on purpose (2 cores shared with other tests): 300 training rows, at most 2 trials of 3 epochs, no Kafka.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ray import tune

from ml.settings import Settings
from ml.storage import exists, read_json
from ml.tune.callbacks import result_epoch
from ml.tune.config import SEARCH_MANIFEST_FILE, SEARCH_RESULT_FILE, SearchConfig, SearchIncomplete, SearchResult
from ml.tune.space import SEARCH_SPACES_DIR, load_search_space
from tests.integration.ml.tune.support import search
from tests.support.synthetic_features import SyntheticFeatures, delete_mlflow_experiment, write_synthetic_features

pytestmark = [
    # A retried trial reports its re-run epoch again; OptunaSearch passes it on and Optuna ignores the repeated step.
    pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step=.*` is already reported"),
]

MAX_EPOCHS = 3
KILL_AT_EPOCH = 2  # the target is killed when it reports this epoch (and, in mode "always", every later report)

# Tune pickles callbacks into the experiment state (tuner.pkl in S3), so the callback below keeps its live state here.
KILLS: dict[str, Any] = {}


def _arm(is_target: Callable[[Any, list], bool], mode: str) -> None:
    """mode "once": kill the target's worker the first time it reports epoch >= KILL_AT_EPOCH; "always": at every such
    report (the first run and its retry), so that the trial uses up its one retry and errors."""
    KILLS.clear()
    KILLS.update(is_target=is_target, mode=mode, results=[], val_loss={}, killed=[], checkpoints=[], events=[])


class KillTrialWorker(tune.Callback):
    """SIGKILLs the process that runs the target trial when it reports; records every result (trial, epoch, pid), its
    val_loss, every registered checkpoint and trial event (recover, error, complete) in KILLS."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch, pid = result_epoch(result), result.get("pid")
        KILLS["results"].append((trial.trial_id, epoch, pid))
        KILLS["val_loss"].setdefault(trial.trial_id, []).append(result.get("val_loss"))
        if KILLS["mode"] == "off" or not KILLS["is_target"](trial, trials) or epoch < KILL_AT_EPOCH:
            return
        if KILLS["mode"] == "once" and KILLS["killed"]:
            return
        # Never signal the driver (this pytest process) or anything that is not a trial's own worker.
        if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
            KILLS["events"].append(("bad pid", trial.trial_id))
            return
        saved = [e for t, e in KILLS["checkpoints"] if t == trial.trial_id]  # the target's registered checkpoints
        os.kill(pid, signal.SIGKILL)
        KILLS["killed"].append((trial.trial_id, epoch, pid, saved))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # Tune registers a checkpoint after it processed the result that carried it: last_result is its epoch.
        KILLS["checkpoints"].append((trial.trial_id, result_epoch(trial.last_result)))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        KILLS["events"].append(("recover", trial.trial_id))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        KILLS["events"].append(("error", trial.trial_id))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        KILLS["events"].append(("complete", trial.trial_id))


def _events(kind: str) -> list[str]:
    return [event[1] for event in KILLS["events"] if event[0] == kind]


def _reports(trial_id: str) -> list[tuple[int, int]]:
    """(epoch, pid) of every result the trial reported, in order."""
    return [(epoch, pid) for trial, epoch, pid in KILLS["results"] if trial == trial_id]


def _check_pids() -> None:
    pids = [pid for _, _, pid in KILLS["results"]]
    assert pids and all(isinstance(pid, int) for pid in pids), "Tune no longer puts the worker's pid into results"
    assert os.getpid() not in pids, "a trial ran in the driver process"
    assert not _events("bad pid"), KILLS["events"]


def _first_trial(trial: Any, trials: list) -> bool:
    return bool(trial.trial_id == trials[0].trial_id)  # the first trial the searcher created


@pytest.fixture(scope="module")
def features(s3_service: None, settings: Settings) -> Iterator[SyntheticFeatures]:
    made = write_synthetic_features(settings, "classification", 2, rows={"train": 300, "validation": 100, "test": 100})
    try:
        yield made
    finally:
        made.cleanup()  # the features and every search under lake/tune/<dataset>
        delete_mlflow_experiment(settings, made.dataset)


def _config(features: SyntheticFeatures, prefix: str, **values: Any) -> SearchConfig:
    run_name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    # grace_period = patience = max_epochs: neither ASHA nor early stopping ends a trial before it can be killed.
    config: dict[str, Any] = {
        "search_space": load_search_space(SEARCH_SPACES_DIR / "small.json"),
        "max_epochs": MAX_EPOCHS,
        "grace_period": MAX_EPOCHS,
        "patience": MAX_EPOCHS,
        "seed": 5,
        "dag_run_id": f"manual__{run_name}",
        **values,
    }
    return SearchConfig(dataset=features.dataset, snapshot_id=features.snapshot_id, run_name=run_name, **config)


def _search(config: SearchConfig, settings: Settings, *, tracked: bool = False, callbacks: Any = ()) -> SearchResult:
    """No Kafka here; MLflow only where a test looks at it."""
    return search(config, settings, mlflow=tracked, kafka=False, callbacks=callbacks)


def _child_runs(client: Any, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The parent's nested runs by trial id."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return {run.data.tags["mlops.trial_id"]: run for run in runs}


# --------------------------------------------------------------------------------------------------------------------
# Killed once: retried from its latest checkpoint, the search completes
# --------------------------------------------------------------------------------------------------------------------


def test_a_worker_killed_once_is_retried_from_its_latest_checkpoint(
    local_ray: None, features: SyntheticFeatures, settings: Settings, s3_client: Any, mlflow_client: Any
) -> None:
    config = _config(features, "kill-once", num_samples=2, max_concurrent_trials=2)
    _arm(_first_trial, "once")
    result = _search(config, settings, tracked=True, callbacks=[KillTrialWorker()])

    _check_pids()
    assert len(KILLS["killed"]) == 1, KILLS["killed"]
    target, killed_epoch, killed_pid, saved_before = KILLS["killed"][0]
    reports = _reports(target)
    after = reports[reports.index((killed_epoch, killed_pid)) + 1 :]
    print(
        f"\ntrial {target}: reports (epoch, pid) {reports}; killed pid {killed_pid} at epoch {killed_epoch}; "
        f"its checkpoints registered before the kill: epochs {saved_before}; events {KILLS['events']}"
    )

    # One retry (FailureConfig(max_failures=1)), in a new process, and no error.
    assert _events("recover") == [target] and _events("error") == []
    assert after, "the killed trial never reported again"
    assert killed_pid not in {pid for _, pid in after}, "a result came from the killed process"
    # The kill lands in the callback, before Tune registers that result's checkpoint: the latest registered one is the
    # previous epoch's. The retry restores it and runs the killed epoch again: it resumes, it does not start over.
    assert saved_before == list(range(1, killed_epoch)), saved_before
    assert after[0][0] == saved_before[-1] + 1 == killed_epoch, reports
    assert [epoch for epoch, _ in after] == list(range(killed_epoch, MAX_EPOCHS + 1)), reports

    # Every trial ran all its epochs and finished; the search completed and stored its result.
    trials = {trial for trial, _, _ in KILLS["results"]}
    assert len(trials) == 2 and sorted(_events("complete")) == sorted(trials)
    for trial in trials:
        assert max(epoch for epoch, _ in _reports(trial)) == MAX_EPOCHS, trial
    assert result.num_trials == 2 and result.num_errored == 0
    assert exists(result.search_result_uri, s3_client)
    assert read_json(result.search_result_uri, s3_client)["best_checkpoint_uri"] == result.best_checkpoint_uri

    # MLflow: the retried trial kept its one child run (found again after the restart), which ended FINISHED, with
    # every epoch. (The re-run epoch is logged twice at its step today: the killed attempt's point stays.)
    client = mlflow_client
    assert client.get_run(str(result.mlflow_parent_run_id)).info.status == "FINISHED"
    children = _child_runs(client, str(result.mlflow_experiment_id), str(result.mlflow_parent_run_id))
    assert sorted(children) == sorted(trials)
    assert {run.info.status for run in children.values()} == {"FINISHED"}
    steps = sorted(m.step for m in client.get_metric_history(children[target].info.run_id, "val_loss"))
    print(f"MLflow val_loss steps of the retried trial: {steps}")
    assert sorted(set(steps)) == list(range(1, MAX_EPOCHS + 1)), steps


# --------------------------------------------------------------------------------------------------------------------
# Killed past its retry, as the only trial: the search fails and nothing can be registered
# --------------------------------------------------------------------------------------------------------------------


def test_a_trial_killed_past_its_retry_fails_the_search_and_leaves_nothing_to_register(
    local_ray: None, features: SyntheticFeatures, settings: Settings, s3_client: Any, mlflow_client: Any
) -> None:
    from botocore.exceptions import ClientError

    from ml.evaluate import evaluate_best
    from ml.registry.conventions import registered_model_name
    from ml.storage import evaluation_uri
    from ml.tune.config import stored_search_result

    config = _config(features, "kill-always", num_samples=1, max_concurrent_trials=1)
    _arm(_first_trial, "always")
    with pytest.raises(RuntimeError, match=rf"search {config.run_name}: all 1 trials failed") as failure:
        _search(config, settings, tracked=True, callbacks=[KillTrialWorker()])
    assert not isinstance(failure.value, SearchIncomplete)  # failed, not interrupted (a retry would not help)

    _check_pids()
    (trial,) = {trial for trial, _, _ in KILLS["results"]}
    print(f"\ntrial {trial}: reports (epoch, pid) {_reports(trial)}; kills {KILLS['killed']}; events {KILLS['events']}")
    # The first run and its one retry were killed, each at KILL_AT_EPOCH: the retry resumed from the epoch before's
    # checkpoint, the only one registered.
    earlier = list(range(1, KILL_AT_EPOCH))
    assert [(e, saved) for _, e, _, saved in KILLS["killed"]] == [(KILL_AT_EPOCH, earlier)] * 2, KILLS["killed"]
    assert len({pid for _, _, pid, _ in KILLS["killed"]}) == 2
    assert _events("recover") == [trial] and _events("error") == [trial] and _events("complete") == []

    # The experiment was written (the manifest, Tune's state), but no result: registration reads that file only.
    experiment = config.experiment_uri(settings.lake)
    assert exists(experiment.join(SEARCH_MANIFEST_FILE), s3_client)
    assert not exists(experiment.join(SEARCH_RESULT_FILE), s3_client), "a failed search left a registrable result"
    assert not exists(evaluation_uri(experiment), s3_client)

    # MLflow: the parent run FAILED without a best checkpoint or a stored result; the trial's run FAILED too.
    client = mlflow_client
    mlflow_experiment = client.get_experiment_by_name(config.dataset)
    assert mlflow_experiment is not None
    (parent,) = client.search_runs(
        [mlflow_experiment.experiment_id],
        f"tags.`mlops.kind` = 'tune_search' AND tags.`mlops.run_name` = '{config.run_name}'",
    )
    assert parent.info.status == "FAILED"
    assert "mlops.best_checkpoint_uri" not in parent.data.tags
    assert SEARCH_RESULT_FILE not in [item.path for item in client.list_artifacts(parent.info.run_id)]
    children = _child_runs(client, mlflow_experiment.experiment_id, parent.info.run_id)
    assert sorted(children) == [trial] and children[trial].info.status == "FAILED"

    # The ways into registration refuse: `ml evaluate --dataset --snapshot --run-name` (stored_search_result) with a
    # clear message, evaluate_best (what RegisterModelOperator runs first) on the result's URI with S3's NoSuchKey.
    with pytest.raises(LookupError, match="no completed search"):
        stored_search_result(settings.lake, config.dataset, config.snapshot_id, config.run_name, s3_client)
    with pytest.raises(ClientError, match="NoSuchKey"):
        evaluate_best(str(experiment.join(SEARCH_RESULT_FILE)), s3=settings.s3, write_result=False)
    name = registered_model_name(config.dataset, features.spec.task)
    assert not client.search_registered_models(filter_string=f"name = '{name}'")

    # The task's retry (same run name) restores the search without running the errored trial again
    # (ml/tune/search.py: Ray 2.60 cannot resume it soundly), so it fails the same way and leaves nothing to register.
    KILLS["mode"] = "off"
    before = len(KILLS["results"])
    with pytest.raises(RuntimeError, match=rf"search {config.run_name}: all 1 trials failed"):
        _search(config, settings, tracked=True)
    assert len(KILLS["results"]) == before, "the errored trial ran again"
    assert not exists(experiment.join(SEARCH_RESULT_FILE), s3_client)


# --------------------------------------------------------------------------------------------------------------------
# Killed past its retry, next to a healthy trial: the search completes without it
# --------------------------------------------------------------------------------------------------------------------

# Only the learning rate varies. With seed 6 the searcher's first two trials get lr ~0.029 (learns within 3 epochs)
# and ~4.6e-05 (barely moves): one clearly stronger trial and one clearly weaker.
TWO_TRIALS_SPACE = {
    "lr": {"type": "loguniform", "low": 1e-6, "high": 0.1},
    "batch_size": 64,
    "num_layers": 1,
    "hidden_size": 32,
    "dropout": 0.0,
    "norm": "none",
    "activation": "relu",
}


class PreconditionError(Exception):
    """The set-up did not produce the situation under test (not an assertion, so that xfail does not absorb it)."""


def _by_lr(which: str) -> Callable[[Any, list], bool]:
    pick = max if which == "stronger" else min

    def is_target(trial: Any, trials: list) -> bool:
        return len(trials) == 2 and trial.config["lr"] == pick(t.config["lr"] for t in trials)

    return is_target


@pytest.mark.parametrize(
    "killed",
    [
        "weaker",
        "stronger",
    ],
)
def test_a_trial_killed_past_its_retry_next_to_a_healthy_one_is_left_out(
    local_ray: None, features: SyntheticFeatures, settings: Settings, s3_client: Any, killed: str
) -> None:
    config = _config(
        features, f"kill-{killed}", num_samples=2, max_concurrent_trials=2, seed=6, search_space=TWO_TRIALS_SPACE
    )
    _arm(_by_lr(killed), "always")
    result = _search(config, settings, callbacks=[KillTrialWorker()])

    _check_pids()
    targets = {trial for trial, _, _, _ in KILLS["killed"]}
    trials = set(KILLS["val_loss"])
    print(
        f"\nkilled the {killed} trial {targets}: kills {KILLS['killed']}; val_loss {KILLS['val_loss']}; "
        f"events {KILLS['events']}; best {result.best_trial_id} at epoch {result.best_epoch}"
    )
    if len(targets) != 1 or len(trials) != 2:
        raise PreconditionError(f"expected 2 trials, one of them killed: {KILLS}")
    (target,) = targets
    (healthy,) = trials - targets
    best_seen = {trial: min(v for v in losses if v is not None) for trial, losses in KILLS["val_loss"].items()}
    if (best_seen[target] < best_seen[healthy]) != (killed == "stronger"):
        raise PreconditionError(f"the killed trial is not the {killed} one: best val_loss seen {best_seen}")

    assert len(KILLS["killed"]) == 2  # the first run and its one retry
    assert _events("error") == [target] and _events("complete") == [healthy]
    assert result.num_trials == 2 and result.num_errored == 1
    assert exists(result.search_result_uri, s3_client)
    # Nothing of the errored trial is the search's outcome: the best trial is the healthy one, its checkpoint too.
    assert result.best_trial_id == healthy, f"the best trial is {result.best_trial_id}, which errored"
    assert f"/trial_{healthy}/" in result.best_checkpoint_uri
