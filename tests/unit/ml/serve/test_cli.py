"""ml.serve.cli: `python -m ml serve` runs gunicorn on the app factory with the settings in the child's environment, or
Werkzeug's server with --dev (gunicorn for real: tests/integration/ml/serve/test_cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from ml.serve.app import ServeSettings
from ml.serve.cli import register_cli
from ml.settings import KafkaSettings, MlflowSettings, S3Settings, Settings

FAKE_KEY = "-".join(["not", "a", "real", "key"])  # built, not a literal: the repository's secret scan stays quiet
SETTINGS = Settings(
    s3=S3Settings(endpoint_url="http://s3.example:9000", access_key_id="key-id", secret_access_key=FAKE_KEY),
    mlflow=MlflowSettings("http://mlflow.example:5000"),
    kafka=KafkaSettings("kafka.example:9092"),
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["serve", *argv])


def test_defaults_bind_loopback_with_one_worker() -> None:
    args = parse([])
    assert (args.host, args.port, args.workers, args.threads, args.dev, args.model) == (
        "127.0.0.1",
        8000,
        1,
        4,
        False,
        None,
    )


def test_serve_runs_gunicorn_on_the_app_factory_with_the_settings_in_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess

    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    monkeypatch.delenv("MLOPS_SERVE_MODEL", raising=False)
    args = parse(["--model", "iris-classification", "--port", "8123", "--workers", "2", "--threads", "3"])
    assert args.handler(args, SETTINGS) == 0
    [(command, env)] = calls
    assert Path(command[0]).name == "gunicorn" and command[-1] == "ml.serve:create_app()"
    assert command[command.index("--bind") + 1] == "127.0.0.1:8123"
    assert (command[command.index("--workers") + 1], command[command.index("--threads") + 1]) == ("2", "3")
    assert env["MLOPS_SERVE_MODEL"] == "iris-classification"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka.example:9092"
    assert env["AWS_SECRET_ACCESS_KEY"] == FAKE_KEY  # for the child only: never on its command line
    assert FAKE_KEY not in " ".join(command)
    assert Settings.from_env(env).mlflow == SETTINGS.mlflow  # the worker's factory reads back the same settings


def test_dev_runs_the_app_in_werkzeug(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[ServeSettings, dict[str, Any]]] = []
    runs: list[dict[str, Any]] = []

    class App:
        def run(self, **options: Any) -> None:
            runs.append(options)

    def build_app(config: ServeSettings, **kwargs: Any) -> App:
        built.append((config, kwargs))
        return App()

    monkeypatch.setattr("ml.serve.app.build_app", build_app)
    monkeypatch.setenv("MLOPS_SERVE_MAX_ROWS", "7")
    args = parse(["--model", "iris-classification", "--dev", "--port", "8124"])
    assert args.handler(args, SETTINGS) == 0
    [(config, kwargs)] = built
    assert (config.model_name, config.max_rows) == ("iris-classification", 7)
    assert kwargs == {"mlflow": SETTINGS.mlflow, "kafka": SETTINGS.kafka}
    assert runs == [{"host": "127.0.0.1", "port": 8124, "threaded": True, "use_reloader": False}]


def test_serve_needs_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_SERVE_MODEL", raising=False)
    args = parse([])
    with pytest.raises(ValueError, match="--model NAME"):
        args.handler(args, SETTINGS)


def test_gunicorn_gets_a_private_fresh_prometheus_folder_and_its_hook_and_the_folder_is_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Prometheus' multiprocess mode: every worker writes its metrics under PROMETHEUS_MULTIPROC_DIR; the command makes
    a new private one (an earlier run's files would be added to this run's), replacing any the caller had, and gives
    gunicorn ml.serve.gunicorn_conf (child_exit marks exited workers dead)."""
    import stat
    import subprocess

    seen: list[dict[str, Any]] = []

    def call(command: list[str], env: dict[str, str]) -> int:
        folder = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        seen.append(
            {
                "command": command,
                "folder": folder,
                "mode": stat.S_IMODE(folder.stat().st_mode),
                "empty": not any(folder.iterdir()),
            }
        )
        (folder / "counter_123.db").write_bytes(b"x")  # what a worker leaves there
        return 0

    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the caller's: not used
    args = parse(["--model", "iris-classification"])
    assert args.handler(args, SETTINGS) == 0
    [run] = seen
    command = run["command"]
    assert command[command.index("--config") + 1] == "python:ml.serve.gunicorn_conf"
    assert command.index("--config") < len(command) - 1 and command[-1] == "ml.serve:create_app()"
    assert run["folder"] != tmp_path and run["empty"] and run["mode"] == 0o700
    assert not run["folder"].exists(), "removed when gunicorn exits"


def test_the_prometheus_folder_is_removed_on_ctrl_c_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    folders: list[Path] = []

    def call(command: list[str], env: dict[str, str]) -> int:
        folders.append(Path(env["PROMETHEUS_MULTIPROC_DIR"]))
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "call", call)
    args = parse(["--model", "iris-classification"])
    assert args.handler(args, SETTINGS) == 130
    assert len(folders) == 1 and not folders[0].exists()


def test_dev_keeps_the_metrics_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[ServeSettings] = []

    class App:
        def run(self, **options: Any) -> None:
            pass

    monkeypatch.setattr("ml.serve.app.build_app", lambda config, **kwargs: built.append(config) or App())
    monkeypatch.setenv("MLOPS_SERVE_PAYLOAD_SAMPLE_RATE", "0.1")
    monkeypatch.setenv("MLOPS_SERVE_METRICS", "0")
    args = parse(["--model", "iris-classification", "--dev"])
    assert args.handler(args, SETTINGS) == 0
    [config] = built
    assert (config.model_name, config.payload_sample_rate, config.metrics_enabled) == (
        "iris-classification",
        0.1,
        False,
    )
