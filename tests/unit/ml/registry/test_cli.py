"""ml.registry.cli: `python -m ml register` and `python -m ml promote` pass their arguments and settings through, and
report MLflow's errors as one clear line (the commands against the real registry: tests/integration/ml/registry)."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from ml.__main__ import main
from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, Settings

SETTINGS = Settings(
    mlflow=MlflowSettings("http://mlflow.example:5000"),
    lake=LakeSettings(lake_bucket="the-lake"),
    kafka=KafkaSettings("kafka.example:9092"),
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, dict[str, Any]]]:
    recorded: list[tuple[str, Any, dict[str, Any]]] = []

    def register_and_promote(evaluation: Any, context: Any, **kwargs: Any) -> dict[str, Any]:
        recorded.append(("register_and_promote", (evaluation, context), kwargs))
        return {"version": "1"}

    def rollback(context: Any, model: str, version: str, *, reason: str) -> dict[str, Any]:
        recorded.append(("rollback", (context, model, version), {"reason": reason}))
        return {"champion": version}

    monkeypatch.setattr("ml.registry.promote.register_and_promote", register_and_promote)
    monkeypatch.setattr("ml.registry.promote.rollback", rollback)
    monkeypatch.setattr("ml.registry.register.load_evaluation", lambda location, s3_client: {"from": location})
    return recorded


def parser() -> argparse.ArgumentParser:
    """Only this module's commands (`python -m ml` itself is used once, below)."""
    from ml.registry.cli import register_cli

    root = argparse.ArgumentParser()
    register_cli(root.add_subparsers(dest="stage", required=True))
    return root


def run(argv: list[str]) -> Any:
    args = parser().parse_args(argv)
    return args.handler(args, SETTINGS)


def test_register_passes_the_gate_options_and_the_settings(calls: list[tuple[str, Any, dict[str, Any]]]) -> None:
    argv = ["register", "--evaluation", "s3://lake/e.json", "--dag-id", "cli", "--dag-run-id", "cli-1"]
    assert run([*argv, "--metric", "rmse", "--margin", "0.01", "--backfill", "--code-version", "c1"]) == {
        "version": "1"
    }
    [(name, (evaluation, context), kwargs)] = calls
    assert name == "register_and_promote" and evaluation == {"from": "s3://lake/e.json"}
    assert (context.mlflow, context.lake, context.kafka) == (SETTINGS.mlflow, SETTINGS.lake, SETTINGS.kafka)
    assert kwargs == {
        "dag_id": "cli",
        "dag_run_id": "cli-1",
        "code_version": "c1",
        "metric": "rmse",
        "margin": 0.01,
        "is_backfill": True,
        "allow_backfill_promotion": False,
    }


def test_register_defaults(calls: list[tuple[str, Any, dict[str, Any]]]) -> None:
    run(["register", "--evaluation", "evaluation.json"])
    [(_, _, kwargs)] = calls
    assert kwargs["dag_id"] == "manual" and kwargs["code_version"] is None and kwargs["metric"] is None
    assert re.fullmatch(r"manual__\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", kwargs["dag_run_id"])
    assert (kwargs["margin"], kwargs["is_backfill"]) == (0.0, False)


def test_promote_is_a_rollback(calls: list[tuple[str, Any, dict[str, Any]]]) -> None:
    assert run(["promote", "--model", "m-classification", "--version", "3"]) == {"champion": "3"}
    [(name, (context, model, version), kwargs)] = calls
    assert (name, model, version, kwargs) == ("rollback", "m-classification", "3", {"reason": "manual rollback"})
    assert context.mlflow == SETTINGS.mlflow


def test_mlflow_errors_become_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.exceptions import MlflowException

    def rollback(*args: Any, **kwargs: Any) -> None:
        raise MlflowException("Registered Model with name=m not found")

    monkeypatch.setattr("ml.registry.promote.rollback", rollback)
    with pytest.raises(RuntimeError, match=r"MLflow at http://mlflow\.example:5000: Registered Model .* not found"):
        run(["promote", "--model", "m", "--version", "1"])
    assert main(["promote", "--model", "m", "--version", "1"]) == 1
    assert "error: MLflow at " in capsys.readouterr().err


def test_required_arguments() -> None:
    for argv in (["register"], ["promote", "--model", "m"], ["promote", "--version", "1"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
