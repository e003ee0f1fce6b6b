"""ml.process_env: the one writer of this process's environment sets, unsets and puts back."""

from __future__ import annotations

import os

import pytest

from ml.process_env import apply_to_environment, scoped_environment


def test_values_are_set_and_none_or_empty_unsets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_TEST_B", "old")
    monkeypatch.setenv("MLOPS_TEST_C", "old")
    monkeypatch.delenv("MLOPS_TEST_A", raising=False)
    apply_to_environment({"MLOPS_TEST_A": "new", "MLOPS_TEST_B": None, "MLOPS_TEST_C": ""})
    assert os.environ["MLOPS_TEST_A"] == "new"
    assert "MLOPS_TEST_B" not in os.environ and "MLOPS_TEST_C" not in os.environ


def test_a_scope_puts_back_what_was_there_even_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_TEST_KEPT", "before")
    monkeypatch.delenv("MLOPS_TEST_ABSENT", raising=False)
    with pytest.raises(RuntimeError), scoped_environment({"MLOPS_TEST_KEPT": None, "MLOPS_TEST_ABSENT": "during"}):
        assert "MLOPS_TEST_KEPT" not in os.environ and os.environ["MLOPS_TEST_ABSENT"] == "during"
        raise RuntimeError("inside")
    assert os.environ["MLOPS_TEST_KEPT"] == "before" and "MLOPS_TEST_ABSENT" not in os.environ
