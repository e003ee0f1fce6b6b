"""`python -m ml ingest`: its arguments become an IngestConfig, and the settings' S3 and lake slices reach ingest()."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ml.ingest import cli, snapshot
from ml.ingest.config import IngestConfig, IngestResult
from ml.settings import LakeSettings, S3Settings, Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register_cli(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(["ingest", *argv])


def test_arguments_become_the_config_and_settings_the_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_ingest(config: IngestConfig, *, s3: S3Settings, lake: LakeSettings) -> IngestResult:
        seen.update(config=config, s3=s3, lake=lake)
        return IngestResult("d", "snap", "s3://lake/x", "s3://lake/x/manifest.json", 3, "regression", "y", True)

    monkeypatch.setattr(snapshot, "ingest", fake_ingest)
    settings = Settings(s3=S3Settings(endpoint_url="http://s3.example:9000"), lake=LakeSettings("in", "out"))
    args = parse(
        "--raw-uri",
        "s3://in/d/",
        "--dataset",
        "d",
        "--target",
        "y",
        "--task",
        "regression",
        "--max-bad-share",
        "0.2",
        "--allow-schema-drift",
    )
    result = args.handler(args, settings)
    assert seen == {
        "config": IngestConfig("s3://in/d/", "d", "y", task="regression", max_bad_share=0.2, allow_schema_drift=True),
        "s3": settings.s3,
        "lake": settings.lake,
    }
    assert result["snapshot_id"] == "snap" and result["created"] is True


def test_defaults() -> None:
    args = parse("--raw-uri", "s3://raw/d/", "--dataset", "d", "--target", "y")
    assert (args.task, args.max_bad_share, args.allow_schema_drift) == (None, 0.01, False)
    defaults = IngestConfig("s3://raw/d/", "d", "y")
    assert (defaults.task, defaults.max_bad_share, defaults.allow_schema_drift) == (None, 0.01, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "d", "--target", "y"],
        ["--raw-uri", "s3://raw/d/", "--target", "y"],
        ["--raw-uri", "s3://raw/d/", "--dataset", "d", "--target", "y", "--task", "ranking"],
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
