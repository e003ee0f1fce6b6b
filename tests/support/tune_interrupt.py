"""A Ray Tune callback that interrupts a search like Ctrl+C once N trials have finished in this process.

Armed only where a test (or the script that wrote tests/fixtures/legacy_tune_state/) sets `ARMED["after"]`: a
restored experiment brings the callback back from its pickle, and there it must stay inert."""

from __future__ import annotations

import os
import signal
from typing import Any

from ray import tune

ARMED: dict[str, int | None] = {"after": None}
COMPLETED: list[str] = []


class InterruptAfterTrials(tune.Callback):
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        COMPLETED.append(str(trial.trial_id))
        if ARMED["after"] is not None and len(COMPLETED) == ARMED["after"]:
            ARMED["after"] = None  # once
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                raise RuntimeError("Tune's SIGINT handler is not installed: refusing to interrupt the process")
            os.kill(os.getpid(), signal.SIGINT)
