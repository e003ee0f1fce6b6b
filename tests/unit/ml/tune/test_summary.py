"""ml.tune.summary: the best kept checkpoint of the finished trials is the result (never an errored trial's), and a
search without one, interrupted or all failed, says so."""

from __future__ import annotations

import logging
import math

import pytest

from ml.tune.config import SearchConfig, SearchIncomplete, SearchResult
from ml.tune.parallel import Parallelism
from ml.tune.search import Trials
from ml.tune.space import search_space_hash, validate_search_space
from ml.tune.summary import summarise
from tests.support.synthetic_features import make_spec
from tests.unit.ml.tune.support import EXPERIMENT, FEATURES, SPACE, FakeResultGrid, fake_trial, make_config


def _summarise(grid: FakeResultGrid, config: SearchConfig | None = None, mode: str = "min") -> SearchResult:
    config = config or make_config()
    spec = make_spec("d", "snap", "regression", 1)
    trials = Trials(config, None, "val_loss", mode, EXPERIMENT, None, Parallelism())
    return summarise(grid, trials, spec, FEATURES, search_space_hash(SPACE))


def test_the_best_kept_checkpoint_of_the_finished_trials_is_the_result() -> None:
    grid = FakeResultGrid(
        [fake_trial("a", [0.9, 0.5, 0.6]), fake_trial("b", [0.8, 0.4], lr=0.05), fake_trial("c", [0.7])]
    )
    result = _summarise(grid)
    assert (result.best_trial_id, result.best_epoch) == ("b", 2)
    assert result.best_checkpoint_uri == "s3://lake/tune/d/snap/run-1/trial_b/checkpoint_000001"
    assert result.best_params == {"lr": 0.05, "hidden_size": 16}  # hyper-parameters only
    assert result.best_validation_metrics == {"val_loss": 0.4, "val_r2": pytest.approx(0.6)}  # validation only
    assert (result.num_trials, result.num_errored) == (3, 0)
    assert (result.task, result.metric, result.mode) == ("regression", "val_loss", "min")
    assert result.experiment_uri == str(EXPERIMENT) and result.features_uri == str(FEATURES)
    assert result.feature_spec_uri == str(FEATURES.join("feature_spec.json"))
    assert result.search_space == validate_search_space(SPACE) and result.search_space_hash == search_space_hash(SPACE)
    assert result.dag_run_id == "manual__1"


def test_max_mode_takes_the_highest_score() -> None:
    grid = FakeResultGrid([fake_trial("a", [0.9, 0.5]), fake_trial("b", [0.8]), fake_trial("c", [0.3])])
    result = _summarise(grid, mode="max")
    assert (result.best_trial_id, result.best_epoch) == ("a", 1)


def test_an_errored_trial_that_scored_best_is_never_chosen(caplog: pytest.LogCaptureFixture) -> None:
    # Ray's get_best_result ranks errored trials too: the killed trial's 0.1 would win there.
    grid = FakeResultGrid(
        [
            fake_trial("healthy", [0.6, 0.5]),
            fake_trial("killed", [0.2, 0.1], error=RuntimeError("worker died")),
            fake_trial("c", [0.7]),
        ]
    )
    with caplog.at_level(logging.WARNING, "ml.tune.search"):
        result = _summarise(grid)
    assert result.best_trial_id == "healthy" and "/trial_healthy/" in result.best_checkpoint_uri
    assert (result.num_trials, result.num_errored) == (3, 1)
    assert "1 of 3 trials failed" in caplog.text


def test_checkpoints_without_a_finite_score_are_no_candidates() -> None:
    grid = FakeResultGrid([fake_trial("a", [math.nan, 0.7]), fake_trial("b", [math.inf]), fake_trial("c", [])])
    result = _summarise(grid)
    assert (result.best_trial_id, result.best_epoch) == ("a", 2)
    with pytest.raises(RuntimeError, match="no finished trial has a checkpoint with a finite val_loss"):
        _summarise(FakeResultGrid([fake_trial("b", [math.nan]), fake_trial("c", []), fake_trial("d", [math.inf])]))


def test_an_interrupted_search_is_incomplete() -> None:
    with pytest.raises(SearchIncomplete, match=r"2 of 3 trials finished \(1 unfinished, 0 errored\).*run it again"):
        _summarise(
            FakeResultGrid([fake_trial("a", [0.5]), fake_trial("b", [0.4]), fake_trial("c", [0.6])], unfinished=1)
        )
    with pytest.raises(SearchIncomplete, match="2 of 3 trials finished"):  # the searcher had not created the 3rd
        _summarise(FakeResultGrid([fake_trial("a", [0.5]), fake_trial("b", [0.4])]))


def test_a_search_whose_trials_all_failed_fails() -> None:
    grid = FakeResultGrid([fake_trial(t, [0.1], error=RuntimeError(f"boom {t}")) for t in "abc"])
    with pytest.raises(RuntimeError, match="search run-1: all 3 trials failed; first error: boom a"):
        _summarise(grid)
