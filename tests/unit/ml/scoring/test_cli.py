"""`python -m ml score`'s arguments, the job's arguments, and resolving the version to score with."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
