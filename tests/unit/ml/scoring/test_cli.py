"""`python -m ml score`'s arguments, the job's arguments, and resolving the version to score with."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from ml.__main__ import build_parser
from ml.scoring.job import main as job_main
from ml.scoring.model import NoModelToScore, ScoringModel, scoring_model_from_version
from ml.scoring.submit import application_args

MODEL = ScoringModel("penguins-classification", "4", "s3://lake/ck", "s3://lake/spec.json")


def parse(*argv: str) -> object:
    return build_parser().parse_args(["score", *argv])


def test_the_cli_takes_a_dataset_model_date_and_one_input() -> None:
    args = parse("--dataset", "penguins", "--model", "penguins-classification", "--date", "2026-12-03")
    assert (args.alias, args.version, args.table, args.date) == ("champion", None, None, "2026-12-03")
    args = parse("--dataset", "p", "--model", "m", "--version", "7", "--date", "2026-12-03", "--table", "db.t")
    assert (args.version, args.table) == (7, "db.t")


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "p", "--model", "m", "--date", "2026-13-03"],  # not a date
        ["--dataset", "p", "--model", "m"],  # no date
        ["--dataset", "p", "--model", "m", "--date", "2026-12-03", "--version", "1", "--alias", "challenger"],
        ["--dataset", "p", "--model", "m", "--date", "2026-12-03", "--table", "t", "--raw-uri", "s3://raw/p/"],
        ["--dataset", "p", "--model", "m", "--date", "2026-12-03", "--version", "two"],
    ],
)
def test_the_cli_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_application_args_name_exactly_one_input() -> None:
    args = application_args("penguins", MODEL, "2026-12-03", raw_uri="s3://raw/penguins/")
    assert args[args.index("--raw-uri") + 1] == "s3://raw/penguins/"
    assert ScoringModel.from_dict(json.loads(args[args.index("--model-json") + 1])) == MODEL
    with pytest.raises(ValueError, match="exactly one"):
        application_args("penguins", MODEL, "2026-12-03")
    with pytest.raises(ValueError, match="exactly one"):
        application_args("penguins", MODEL, "2026-12-03", table="t", raw_uri="s3://raw/p/")


def test_the_job_refuses_two_inputs() -> None:
    with pytest.raises(SystemExit):
        job_main(
            ["--dataset", "p", "--model-json", "{}", "--date", "2026-12-03", "--table", "t", "--raw-uri", "s3://x/"]
        )


def version(tags: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(version=4, tags=tags)


def test_a_champion_must_have_passed_the_gate_and_carry_its_locations() -> None:
    tags = {"gate.decision": "promoted", "checkpoint_uri": "s3://lake/ck", "feature_spec_uri": "s3://lake/spec.json"}
    assert scoring_model_from_version("penguins-classification", version(tags), "champion") == MODEL
    with pytest.raises(NoModelToScore, match="promotion gate"):
        scoring_model_from_version("m", version({**tags, "gate.decision": "rejected"}), "champion")
    assert scoring_model_from_version("m", version({**tags, "gate.decision": "rejected"}), "4").version == "4"
    with pytest.raises(NoModelToScore, match="checkpoint_uri"):
        scoring_model_from_version("m", version({"gate.decision": "promoted"}), "champion")


def test_the_job_runs_its_work_through_the_shared_application_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """ml.scoring.job.main hands its work to ml.preprocess.application (whose session, credentials, result line and
    error line are tested with the preprocessing job): named after the dataset and date, the scoring job's marker,
    and a work that scores with the parsed arguments."""
    import ml.scoring.job as job
    from ml.settings import S3Settings

    calls: list[tuple[str, str]] = []
    scored: dict[str, Any] = {}

    def application(app_name: str, marker: str, work: Any) -> int:
        calls.append((app_name, marker))
        return 0 if work("spark", S3Settings(endpoint_url="http://s3.example:9000")) == {"rows": 1} else 1

    def run(spark: Any, **kwargs: Any) -> dict[str, Any]:
        scored.update(spark=spark, **kwargs)
        return {"rows": 1}

    monkeypatch.setattr(job, "run_spark_application", application)
    monkeypatch.setattr(job, "run", run)
    model_json = json.dumps(MODEL.to_dict())
    assert job.main(["--dataset", "p", "--model-json", model_json, "--date", "2026-12-03", "--table", "t"]) == 0
    assert calls == [("score-p-2026-12-03", job.RESULT_MARKER)]
    assert (scored["spark"], scored["dataset"], scored["model"], scored["score_date"]) == (
        "spark",
        "p",
        MODEL,
        "2026-12-03",
    )
    assert (scored["table"], scored["raw_uri"]) == ("t", None)
    assert scored["s3_client"].meta.endpoint_url == "http://s3.example:9000"
