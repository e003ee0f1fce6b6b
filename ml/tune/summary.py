"""A finished search's result: the best kept checkpoint of the trials that finished, or why there is none."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ml.features import FeatureSpec
from ml.json_values import is_finite_number
from ml.storage import S3Uri, feature_spec_uri
from ml.train import trial_params
from ml.tune.config import SearchIncomplete, SearchResult
from ml.tune.space import validate_search_space

if TYPE_CHECKING:
    from ml.tune.search import Trials

log = logging.getLogger(__name__)


def summarise(results: Any, trials: Trials, spec: FeatureSpec, features: S3Uri, space_hash: str) -> SearchResult:
    from ml.tune.callbacks import result_epoch, result_metrics

    config, metric, mode, experiment = trials.config, trials.metric, trials.mode, trials.experiment
    total = len(results)
    errored = results.num_errors
    unfinished = total - results.num_terminated - errored
    if unfinished or total < config.num_samples:
        raise SearchIncomplete(
            f"search {config.run_name} stopped with {results.num_terminated} of "
            f"{config.num_samples} trials finished ({unfinished} unfinished, {errored} errored); "
            "run it again with the same run name to resume"
        )
    if errored == total:
        raise RuntimeError(f"search {config.run_name}: all {total} trials failed; first error: {results.errors[0]}")
    if errored:
        log.warning("search %s: %d of %d trials failed", config.run_name, errored, total)

    # The best kept checkpoint of the trials that finished: an errored trial's scores (Ray's get_best_result ranks
    # them too) and a killed attempt's scores without a kept checkpoint are no basis for a model.
    candidates = [
        (trial, path, m)
        for trial in results
        if trial.error is None
        for path, m in _kept_checkpoints(trial, trials)
        if is_finite_number(m.get(metric))
    ]
    if not candidates:
        raise RuntimeError(f"search {config.run_name}: no finished trial has a checkpoint with a finite {metric}")
    best, checkpoint, metrics = (max if mode == "max" else min)(candidates, key=lambda item: item[2][metric])
    return SearchResult(
        dataset=config.dataset,
        snapshot_id=config.snapshot_id,
        run_name=config.run_name,
        task=spec.task,
        metric=metric,
        mode=mode,
        best_trial_id=str(best.metrics.get("trial_id") or metrics.get("trial_id")),
        best_params=trial_params(best.config),
        best_epoch=result_epoch(metrics),
        best_validation_metrics={k: v for k, v in result_metrics(metrics).items() if k.startswith("val_")},
        best_checkpoint_uri=f"s3://{checkpoint.lstrip('/')}",
        num_trials=total,
        num_errored=errored,
        experiment_uri=str(experiment),
        features_uri=str(features),
        feature_spec_uri=str(feature_spec_uri(features)),
        search_space=validate_search_space(config.search_space),
        search_space_hash=space_hash,
        dag_run_id=config.dag_run_id,
    )


def _kept_checkpoints(trial: Any, trials: Trials) -> list[tuple[str, dict[str, Any]]]:
    """(path, metrics) of a finished trial's kept checkpoints: Tune's, or a data-parallel trial's Train run's."""
    if trials.parallelism.data_parallel:
        from ml.tune.parallel import kept_checkpoints

        return kept_checkpoints(trial.path, trials.filesystem)
    return [(checkpoint.path, metrics) for checkpoint, metrics in (trial.best_checkpoints or [])]
