"""The callbacks a search adds to Tune's fit besides the pipeline's own (ml.tune.callbacks): the moments that split
the fit into phases (B2's profile, ml.tune.phases) and the trial result files it keeps (Tune's defaults without
TensorBoard's). Like the others they hold no secrets and are made afresh when a search resumes.
"""

from __future__ import annotations

from typing import Any

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from ml.clock import SYSTEM_CLOCK, Clock
from ml.tune.callbacks import PipelineCallback


class FitPhasesCallback(PipelineCallback):
    """Timestamps, on the driver's clock, of the moments that split a Tune fit: `setup` (Tune starts the experiment),
    the first trial's start, the last trial's end (finished or errored) and `on_experiment_end` (Tune's final state
    sync done; the callbacks after this one in the list still drain). Holds no secrets; Tune pickles it with the
    experiment state like the other callbacks, and a resumed search makes a fresh one."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.setup_at: float | None = None
        self.first_trial_start: float | None = None
        self.last_trial_end: float | None = None
        self.experiment_end: float | None = None

    def setup(self, *args: Any, **info: Any) -> None:
        self.setup_at = self.clock.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.first_trial_start is None:
            self.first_trial_start = self.clock.monotonic()

    def _ended(self) -> None:
        self.last_trial_end = self.clock.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.experiment_end = self.clock.monotonic()

    def split(self, fit_started: float, fit_ended: float) -> dict[str, float]:
        """The fit from `fit_started` to `fit_ended` (the same clock) in phases: `tune_setup` (the Tuner made, its
        state written, until Tune sets its callbacks up), `tune_start` (to the first trial's start: its actor up),
        `trials` (to the last trial's end), `tune_end` (to on_experiment_end), `callbacks_end` (the callbacks after
        this one, and Tune's return). A moment never seen (no trial ran) leaves its phase out; its time goes to the
        next phase seen."""
        phases: dict[str, float] = {}
        previous = fit_started
        for name, moment in (
            ("tune_setup", self.setup_at),
            ("tune_start", self.first_trial_start),
            ("trials", self.last_trial_end),
            ("tune_end", self.experiment_end),
            ("callbacks_end", fit_ended),
        ):
            if moment is not None:
                phases[name] = max(0.0, moment - previous)
                previous = moment
        return phases


# Tune adds its default loggers (CSV, JSON, TensorBoard) unless this is "1". Its TensorBoard logger imports tensorboardX
# and with it torch into the driver: 2 to 2.5 s of a search's start on the benchmark machine (B2), for event files that
# nothing of the pipeline reads (the metrics go to MLflow and Kafka). The search switches the defaults off for its fit
# and passes the two loggers it keeps (`result_loggers`).
DEFAULT_LOGGERS_OFF = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


class ResultJsonLogger(JsonLoggerCallback, PipelineCallback):
    """Tune's `result.json` per trial (what ExperimentAnalysis and a restore read), as one of the search's own
    callbacks (made afresh on restore)."""


class ResultCsvLogger(CSVLoggerCallback, PipelineCallback):
    """Tune's `progress.csv` per trial, as one of the search's own callbacks."""


def result_loggers() -> list[Any]:
    """The trial result files the search writes: Tune's defaults without TensorBoard's event files."""
    return [ResultCsvLogger(), ResultJsonLogger()]
