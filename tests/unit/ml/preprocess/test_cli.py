"""`python -m ml preprocess`: its arguments and the settings' slices reach run_preprocess (no Spark starts)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import pytest

from ml.preprocess import cli, submit
from ml.settings import LakeSettings, S3Settings, Settings, SparkSettings

SETTINGS = Settings(
    s3=S3Settings(endpoint_url="http://s3.example:9000"),
    lake=LakeSettings("in", "out"),
    spark=SparkSettings(master="local[4]", extra_classpath="/jars/s3a.jar"),
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["preprocess", *argv])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_run_preprocess(dataset: str, snapshot_id: str, **kwargs: Any) -> dict[str, Any]:
        seen.append({"dataset": dataset, "snapshot_id": snapshot_id, **kwargs})
        return {"skipped": False}

    monkeypatch.setattr(submit, "run_preprocess", fake_run_preprocess)
    return seen


def test_defaults_leave_the_job_its_own(calls: list[dict[str, Any]]) -> None:
    args = parse("--dataset", "d", "--snapshot", "snap")
    assert args.handler(args, SETTINGS) == {"skipped": False}
    assert calls == [
        {
            "dataset": "d",
            "snapshot_id": "snap",
            "s3": SETTINGS.s3,
            "lake": SETTINGS.lake,
            "spark": SETTINGS.spark,
            "seed": None,
            "max_categories": None,
            "force": False,
        }
    ]


def test_options_and_a_master_of_its_own(calls: list[dict[str, Any]]) -> None:
    args = parse(
        "--dataset",
        "d",
        "--snapshot",
        "snap",
        "--master",
        "local[1]",
        "--seed",
        "0",
        "--max-categories",
        "5",
        "--force",
    )
    args.handler(args, SETTINGS)
    [call] = calls
    # only the master changes: the deployment's classpath and metastore stay
    assert call["spark"] == replace(SETTINGS.spark, master="local[1]")
    assert (call["seed"], call["max_categories"], call["force"]) == (0, 5, True)


def test_dataset_and_snapshot_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--dataset", "d")
    assert exit_info.value.code == 2 and "--snapshot" in capsys.readouterr().err
