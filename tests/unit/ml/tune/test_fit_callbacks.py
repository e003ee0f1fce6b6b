"""ml.tune.fit_callbacks: the fit split at the first trial's start, the last trial's end and the experiment's end (on
an injected clock); the result files the search keeps (Tune's, without TensorBoard's)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ml.tune.callbacks import PipelineCallback
from ml.tune.fit_callbacks import DEFAULT_LOGGERS_OFF, FitPhasesCallback, result_loggers
from tests.support.fake_clock import FakeClock


def test_the_fit_callbacks_are_the_pipelines() -> None:
    assert issubclass(FitPhasesCallback, PipelineCallback)


def test_the_search_keeps_tunes_result_files_and_drops_tensorboards() -> None:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    loggers = result_loggers()
    # Tune adds none of its own when these are there (ray.tune.utils.callback), and a restore makes them afresh.
    assert [isinstance(c, (CSVLoggerCallback, JsonLoggerCallback)) for c in loggers] == [True, True]
    assert all(isinstance(c, PipelineCallback) and not isinstance(c, TBXLoggerCallback) for c in loggers)
    assert DEFAULT_LOGGERS_OFF == {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


# -- the fit's phases


def test_the_fit_is_split_at_the_first_trials_start_the_last_trials_end_and_the_experiments_end() -> None:
    clock = FakeClock(monotonic=100.0)
    callback = FitPhasesCallback(clock)
    fit_started = clock.monotonic()
    clock.advance(1.0)
    callback.setup()
    clock.advance(2.0)
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="a"))
    clock.advance(5.0)
    callback.on_trial_start(1, [], SimpleNamespace(trial_id="b"))  # only the first start counts
    clock.advance(10.0)
    callback.on_trial_error(2, [], SimpleNamespace(trial_id="a"))
    clock.advance(4.0)
    callback.on_trial_complete(3, [], SimpleNamespace(trial_id="b"))  # the last end counts
    clock.advance(1.5)
    callback.on_experiment_end([])
    clock.advance(0.5)

    assert callback.split(fit_started, clock.monotonic()) == {
        "tune_setup": 1.0,
        "tune_start": 2.0,
        "trials": 19.0,
        "tune_end": 1.5,
        "callbacks_end": 0.5,
    }


def test_a_fit_without_trials_is_all_start_and_end() -> None:
    clock = FakeClock(monotonic=0.0)
    callback = FitPhasesCallback(clock)
    callback.setup()
    clock.advance(2.0)
    callback.on_experiment_end([])
    clock.advance(1.0)
    assert callback.split(0.0, clock.monotonic()) == {"tune_setup": 0.0, "tune_end": 2.0, "callbacks_end": 1.0}

    pickled = FitPhasesCallback()  # Tune pickles it with the experiment state (on the system clock)
    pickled.on_experiment_end([])
    assert pickle.loads(pickle.dumps(pickled)).experiment_end == pickled.experiment_end
