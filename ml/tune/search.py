"""The search: Ray Tune (Optuna TPE + ASHA) over `ml.train.tune_trainable`, resumable, tracked, streamed.

`run_search(config, s3=..., lake=..., ray=..., mlflow=..., kafka=...) -> SearchResult`:
  * reads `feature_spec.json` and the train/validation splits' footers; splits up to `cache_mb` are read once and
    handed to the trials through `tune.with_parameters` (Ray's object store: trials on one node share the arrays),
    larger ones are streamed from S3 by every trial (ml.data.source);
  * trains each trial in one process, or data-parallel on `workers_per_trial` Ray Train workers (ml.tune.parallel),
    after checking that the cluster can place them;
  * searches the space with `OptunaSearch` (TPE, seeded) behind a `ConcurrencyLimiter`, and stops weak trials early
    with `ASHAScheduler` on the trial's own `epoch` (what max_t and the grace period count);
  * stores trials and checkpoints in S3 under `ml.storage.tune_uri(lake, dataset, snapshot, run_name)`, through a
    filesystem that signs every file with the stack's key (`RaySettings.state_signing_key`; no key, no search) and
    checks every file it reads (ml.tune.signing). The run name is the resume key: when that folder holds a restorable
    experiment whose state carries this stack's signatures (a file that does not: TamperedTuneState, before anything
    of it is unpickled), the search continues with `Tuner.restore(..., resume_unfinished=True)`: finished trials are
    kept, unfinished ones continue from their last (checked) checkpoint, errored ones stay errored (a search whose
    trials all failed fails again), and no finished trial runs again. A search that completed before returns its
    stored result at once. A trial whose worker dies is retried once, from its latest checkpoint
    (`FailureConfig(max_failures=1)`);
  * MLflow (unless `mlflow` is None): one parent run per search (ml.tune.tracking) and one nested child run per trial;
  * Kafka (unless `kafka` is None): `KafkaMetricsCallback` publishes every trial-epoch result.

The objective defaults to `val_loss` / `min` for both tasks (cross-entropy for classification, the MSE of the
standardised target for regression): smooth and defined from the first epoch, which suits ASHA's early comparisons.
Any reported validation metric may be chosen instead (e.g. `val_accuracy`, mode inferred as `max`).

An interrupted search (SIGINT/SIGUSR1: Tune saves its state and returns) raises `SearchIncomplete`, so that the
calling task fails and its retry resumes. Ray is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ml.clients import arrow_filesystem, keyless_arrow_filesystem, mlflow_client, s3_client
from ml.clock import SYSTEM_CLOCK, Clock
from ml.process_env import scoped_environment
from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, RaySettings, S3Settings
from ml.storage import S3Uri
from ml.tune.config import SearchConfig, SearchIncomplete, SearchResult
from ml.tune.parallel import Parallelism, cluster_resources, concurrent_trials, resolve_parallelism
from ml.tune.phases import PhaseTimer, format_phases
from ml.tune.runtime import ensure_ray, route_library_logs, without_driver_s3_keys
from ml.tune.space import to_tune_space
from ml.tune.state import record_or_check_manifest, restorable, store_result, stored_result
from ml.tune.summary import summarise

log = logging.getLogger(__name__)


def trial_name(trial: Any) -> str:
    """Short, stable trial names and folders (Tune's default puts every parameter into the folder name)."""
    return f"trial_{trial.trial_id}"


def run_search(
    config: SearchConfig,
    *,
    s3: S3Settings,
    lake: LakeSettings,
    ray: RaySettings,
    mlflow: MlflowSettings | None = None,
    kafka: KafkaSettings | None = None,
    callbacks: Sequence[Any] = (),
    clock: Clock = SYSTEM_CLOCK,
) -> SearchResult:
    """Run (or resume, or return the stored result of) the search named by `config.run_name`.

    `mlflow` None: no tracking; `kafka` None: no metrics stream. `callbacks` are extra ray.tune.Callback objects;
    they are saved with the experiment, and a resumed search keeps the ones saved when it started and ignores new
    ones (its own callbacks are made afresh for the current settings). Raises SearchIncomplete when interrupted,
    RuntimeError when every trial failed, ValueError when a resumed run's settings differ from the stored ones or no
    state signing key is configured, TamperedTuneState when the state to resume is not signed by this stack.

    The result's `phases_s` says where the wall time went (ml.tune.phases; `clock`: the one they are read on).
    """
    from ml.data import load_feature_spec, training_data
    from ml.tune.fit_callbacks import DEFAULT_LOGGERS_OFF, FitPhasesCallback, result_loggers
    from ml.tune.signing import share_key_with_ray, signed_filesystem

    timer = PhaseTimer(clock)
    # Tune's storage, for the whole folder of the search: signed with the stack's key (a ValueError without one),
    # keyless (Tune pickles its filesystem into the state it stores in S3; the signing key is not pickled either).
    with timer.phase("read_spec"):
        filesystem = signed_filesystem(keyless_arrow_filesystem(s3), ray.state_signing_key)
        client = s3_client(s3)
        features = config.resolved_features_uri(lake)
        spec = load_feature_spec(features, client)
        metric, mode = config.objective(spec.task)
        experiment = config.experiment_uri(lake)
        manifest = config.manifest(spec.task)

    with timer.phase("check_stored_state"):
        stored = stored_result(experiment, manifest, filesystem)
    if stored is not None:
        log.info(
            "search %s already completed: best trial %s, %s=%s (%s)",
            config.run_name,
            stored.best_trial_id,
            metric,
            stored.best_validation_metrics.get(metric),
            stored.best_checkpoint_uri,
        )
        return stored
    with timer.phase("check_stored_state"):
        experiment_path = f"{experiment.bucket}/{experiment.key}"
        restoring = restorable(experiment_path, filesystem)  # checks the signatures of what a restore would read

    with timer.phase("mlflow_client"):  # imports mlflow
        tracking = mlflow_client(mlflow) if mlflow is not None else None
    parent_run_id = experiment_id = None
    with timer.phase("start_ray"):
        route_library_logs()
        started_ray = ensure_ray(ray, s3, state_api=config.workers_per_trial > 1)
    try:
        # Before anything is recorded: a trial the cluster can never place is an error now, not a search that hangs.
        # The cluster is read once: the trials' resources and how many run at once come from the same figures.
        with timer.phase("record_manifest"):
            cluster = cluster_resources()
            parallelism = resolve_parallelism(
                config.workers_per_trial, config.cpus_per_trial, config.gpus_per_worker, cluster
            )
            record_or_check_manifest(experiment, manifest, restoring, filesystem)
        if tracking is not None:
            from ml.tune.tracking import start_parent_run

            with timer.phase("mlflow_parent_run"):
                experiment_id, parent_run_id = start_parent_run(
                    tracking, config, spec, str(features), str(experiment), manifest
                )
        with timer.phase("make_callbacks"):
            share_key_with_ray(ray.state_signing_key)  # Tune's workers sign their checkpoints and check them on resume
            fit_phases = FitPhasesCallback(clock)
            own_callbacks = [
                fit_phases,
                *_pipeline_callbacks(config, spec.task, mlflow, kafka, parent_run_id, experiment_id),
            ]
        with timer.phase("read_splits"):
            data = training_data(
                features,
                spec,
                arrow_filesystem(s3),
                trial_filesystem=keyless_arrow_filesystem(s3),
                cache_bytes=int(config.cache_mb * 2**20),
            )
        trials = Trials(config, data, metric, mode, experiment, filesystem, parallelism)
        fit_started = clock.monotonic()
        # Tune's result files: result.json and progress.csv, without its TensorBoard logger (ml.tune.callbacks).
        own_callbacks += result_loggers()
        # The trials get the search's S3 keys, never this process's environment's.
        with without_driver_s3_keys(), scoped_environment(DEFAULT_LOGGERS_OFF):
            if restoring:
                results = _resume(trials, own_callbacks)
            else:
                at_once = concurrent_trials(parallelism, config.max_concurrent_trials, cluster)
                results = _start(trials, [*own_callbacks, *callbacks], at_once)
        fit_ended = clock.monotonic()
        for name, seconds in fit_phases.split(fit_started, fit_ended).items():
            timer.add(f"fit_{name}", seconds)
        with timer.phase("summarise"):
            result = summarise(results, trials, spec, features, manifest["search_space_hash"])
            result.mlflow_parent_run_id, result.mlflow_experiment_id = parent_run_id, experiment_id
        # The result (stored, in MLflow, returned: the same) times the search up to its storing; the log line below
        # has the parent run's finishing too.
        result.wall_time_s, result.phases_s = timer.elapsed(), timer.summary()
        store_result(result, filesystem)
        if tracking is not None and parent_run_id:
            from ml.tune.tracking import finish_parent_run

            with timer.phase("mlflow_finish_parent_run"):
                finish_parent_run(tracking, parent_run_id, result)
        log.info(
            "search %s done in %.1fs: %d trials (%d errored); best trial %s at epoch %d, %s=%s -> %s",
            config.run_name,
            timer.elapsed(),
            result.num_trials,
            result.num_errored,
            result.best_trial_id,
            result.best_epoch,
            metric,
            result.best_validation_metrics.get(metric),
            result.best_checkpoint_uri,
        )
        log.info("search %s phases (s): %s", config.run_name, format_phases(timer.summary()))
        return result
    except BaseException as error:
        if tracking is not None and parent_run_id:
            from ml.tune.tracking import set_parent_status

            interrupted = isinstance(error, SearchIncomplete | KeyboardInterrupt)
            set_parent_status(tracking, parent_run_id, "KILLED" if interrupted else "FAILED")
        raise
    finally:
        if started_ray:
            import ray as ray_module

            ray_module.shutdown()


def _pipeline_callbacks(
    config: SearchConfig,
    task: str,
    mlflow: MlflowSettings | None,
    kafka: KafkaSettings | None,
    parent_run_id: str | None,
    experiment_id: str | None,
) -> list[Any]:
    """The search's own callbacks for the current settings (`task`: the features' task)."""
    from ml.registry.conventions import registered_model_name
    from ml.tune.callbacks import KafkaMetricsCallback, MetricsSubject, MlflowTrialCallback, ProgressLogCallback

    metric, mode = config.objective(task)
    callbacks: list[Any] = [ProgressLogCallback(config.run_name, metric, mode, config.num_samples)]
    if mlflow is not None and parent_run_id and experiment_id:
        callbacks.append(MlflowTrialCallback(experiment_id, parent_run_id, config.run_name, mlflow))
    if kafka is not None:
        subject = MetricsSubject(config.dataset, config.snapshot_id, task, registered_model_name(config.dataset, task))
        callbacks.append(KafkaMetricsCallback(config.run_name, kafka, dag_run_id=config.dag_run_id, subject=subject))
    return callbacks


@dataclass(frozen=True)
class Trials:
    """What every trial of the search is made of."""

    config: SearchConfig
    data: Any
    metric: str
    mode: str
    experiment: S3Uri
    filesystem: Any
    parallelism: Parallelism

    @property
    def experiment_path(self) -> str:
        return f"{self.experiment.bucket}/{self.experiment.key}"

    def trainable_and_space(self) -> tuple[Any, dict[str, Any]]:
        from ray import tune

        config, parallelism = self.config, self.parallelism
        if parallelism.data_parallel:
            import ray

            from ml.tune.parallel import DataHandle, data_parallel_trainable

            # The arrays go into the object store once; each DDP worker maps them through the handle.
            trainable = tune.with_parameters(
                data_parallel_trainable,
                data=DataHandle(ray.put(self.data)),
                parallelism=parallelism,
                experiment_path=self.experiment_path,
                filesystem=self.filesystem,
                metric=self.metric,
                mode=self.mode,
                checkpoints_to_keep=config.checkpoints_to_keep,
            )
        else:
            from ml.train import tune_trainable

            # with_parameters puts the arrays into the object store once; every trial (and a restored run) gets a
            # reference.
            device = "cuda" if parallelism.gpus_per_worker else "cpu"
            trainable = tune.with_parameters(tune_trainable, data=self.data, device=device)
        param_space = {
            **to_tune_space(config.search_space),
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "seed": config.seed,
            "metric": self.metric,
            "mode": self.mode,
            "threads": max(1, int(config.cpus_per_trial)),
        }
        return tune.with_resources(trainable, parallelism.trial_resources()), param_space


def _resume(trials: Trials, own_callbacks: list[Any]) -> Any:
    from ray import tune

    log.info("resuming search %s from %s", trials.config.run_name, trials.experiment_path)
    trainable, param_space = trials.trainable_and_space()
    # Errored trials (their FailureConfig retries used up) stay errored. Ray 2.60 offers no sound alternative
    # here: resume_errored ran such a trial for one more epoch and ended it as if complete, and restart_errored
    # gave it a new id that OptunaSearch rejects (KeyError); see tests/integration/ml/tune/test_trial_failures.py.
    tuner = tune.Tuner.restore(
        trials.experiment_path,
        trainable=trainable,
        resume_unfinished=True,
        param_space=param_space,
        storage_filesystem=trials.filesystem,
    )
    _replace_pipeline_callbacks(tuner, own_callbacks)
    return tuner.fit()


def _start(trials: Trials, callbacks: list[Any], max_concurrent: int) -> Any:
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    config, metric, mode = trials.config, trials.metric, trials.mode
    trainable, param_space = trials.trainable_and_space()
    # TPE starts from random points; with small budgets let it model sooner than Optuna's default of 10.
    sampler = TPESampler(seed=config.seed, n_startup_trials=max(2, min(10, config.num_samples // 3)))
    searcher = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=max_concurrent)
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=config.max_epochs,
        grace_period=config.resolved_grace_period,
        reduction_factor=config.reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # A finished data-parallel trial's thread outlives Tune's 2-s wait for it while its worker group shuts
            # down, and Tune then errors the next trial instead of starting a fresh actor.
            reuse_actors=not trials.parallelism.data_parallel,
        ),
        run_config=tune.RunConfig(
            name=config.run_name,
            storage_path=trials.experiment_path.rsplit("/", 1)[0],
            storage_filesystem=trials.filesystem,
            callbacks=callbacks,
            # Keep the best checkpoints of each trial (Tune always keeps the latest too, for resuming). A
            # data-parallel trial's checkpoints are kept by its Train run under the same rule (ml.tune.parallel).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=config.checkpoints_to_keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    return tuner.fit()


def _replace_pipeline_callbacks(tuner: Any, fresh: list[Any]) -> None:
    """A restored Tuner brings back the callbacks pickled when the search started. The search's own ones are
    replaced by `fresh`, made for the current settings (endpoints may have moved, and state written before ml.tune
    became a package recorded none); a caller's extra ones are kept.

    Ray keeps the restored RunConfig on the local tuner; in Ray Client mode there is none here, and the pickled
    callbacks (with the endpoints recorded when the search started) are used as they are."""
    from ml.tune.callbacks import PipelineCallback

    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        log.warning("Ray Client mode: the restored search keeps the callbacks recorded when it started")
        return
    run_config = local.get_run_config()
    kept = [callback for callback in run_config.callbacks or [] if not isinstance(callback, PipelineCallback)]
    run_config.callbacks = [*fresh, *kept]
