"""`python -m ml`: every stage on one parser, heavy libraries left unimported until a stage runs, a JSON result on
stdout, and failures as one `error: ...` line with a non-zero exit status."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

import ml.datasets
from ml import __main__ as entry
from ml.settings import PROJECT_ROOT, Settings
from ml.storage import DataError

STAGES = {
    "upload-dataset",
    "ingest",
    "preprocess",
    "tune",
    "evaluate",
    "register",
    "promote",
    "events",
    "serve",
    "monitor",
    "run-all",
    "score",
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_parser_lists_every_stage() -> None:
    commands = subcommands(entry.build_parser())
    assert set(commands) == STAGES
    assert set(subcommands(commands["events"])) == {"schemas", "tail", "replay-uploads"}
    # every stage module contributes, and every command has a handler
    for name in entry.STAGE_MODULES:
        assert callable(importlib.import_module(name).register_cli), name
    for name, parser in commands.items():
        if name != "events":
            assert callable(parser.get_default("handler")), name


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys; from ml.__main__ import build_parser; build_parser(); "
        "print([m for m in ('pyspark', 'ray', 'torch', 'mlflow', 'kafka', 'pandas', 'boto3') if m in sys.modules])"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert completed.stdout.strip() == "[]"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(stage in out for stage in STAGES - {"events"})


def test_an_unknown_stage_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["train-everything"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'train-everything'" in capsys.readouterr().err


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Replace the `upload-dataset` handler (its parser is rebuilt by main) with `behaviour(args, settings)`."""

    def install(behaviour: Any) -> None:
        monkeypatch.setattr(ml.datasets, "_upload_cli", behaviour)

    return install


def test_the_result_is_json_on_stdout_and_library_chatter_goes_to_stderr(
    handler: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def behaviour(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
        print("a progress table a library printed")
        return {"b": 1, "a": [1.5, "x"]}

    handler(behaviour)
    assert entry.main(["upload-dataset", "penguins"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"a": [1.5, "x"], "b": 1}
    assert "a progress table" in captured.err and "a progress table" not in captured.out


def test_the_handler_gets_settings_from_the_environment(
    handler: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Settings] = []
    handler(lambda args, settings: seen.append(settings))
    monkeypatch.setenv("MLOPS_RAW_BUCKET", "incoming-bucket")
    assert entry.main(["upload-dataset", "penguins"]) == 0
    assert isinstance(seen[0], Settings) and seen[0].lake.raw_bucket == "incoming-bucket"
    assert capsys.readouterr().out == ""  # None: nothing printed


def test_an_int_result_is_the_exit_status(handler: Any) -> None:
    handler(lambda args, settings: 3)
    assert entry.main(["upload-dataset", "penguins"]) == 3


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DataError("s3://raw/x.csv: target column 'y' is missing"), 2),
        (ValueError("format must be csv or parquet"), 2),
        (LookupError("no model version with alias champion"), 1),
        (RuntimeError("Spark preprocessing of d snapshot s failed"), 1),
        (FileNotFoundError("ml/search_spaces/mine.json"), 1),
        (ConnectionRefusedError("connection refused"), 1),
    ],
)
def test_a_failure_is_one_error_line_and_a_non_zero_status(
    handler: Any, capsys: pytest.CaptureFixture[str], error: Exception, status: int
) -> None:
    def behaviour(args: argparse.Namespace, settings: Settings) -> None:
        raise error

    handler(behaviour)
    assert entry.main(["upload-dataset", "penguins"]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1] == f"error: {error}"
    assert "Traceback" not in captured.err


def test_the_module_runs_as_a_program() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ml", "upload-dataset", "penguins", "--format", "json"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2 and "invalid choice: 'json'" in completed.stderr and completed.stdout == ""
