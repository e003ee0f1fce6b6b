"""batch_scoring under Airflow (issue 16 item 5): triggered as a user would (REST, no logical date), it scores the
first e2e run's raw data (a copy of the shipped penguins) with that run's champion into Hive: every raw row once,
in the partition of the run's day and the champion's version. That each row equals the service's answer is checked
in tests/integration/ml/scoring."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ml.datasets import load_shipped
from ml.preprocess.hive import hive_table_name
from stack.demo import AirflowApi, follow, trigger
from tests.support.hive import hive_scalar

DAG = "batch_scoring"


def test_batch_scoring_writes_the_champions_predictions_into_hive(
    airflow_api: AirflowApi, first_run: dict[str, Any], stack_env: dict[str, str], mlflow_client: Any
) -> None:
    assert first_run["state"] == "success"
    dataset = first_run["dataset"]
    model = f"{dataset}-classification"
    champion = mlflow_client.get_model_version_by_alias(model, "champion").version
    days = {datetime.now(UTC).strftime("%Y-%m-%d")}
    run_id = trigger(airflow_api, {"dataset": dataset, "model": model, "raw_uri": first_run["conf"]["raw_uri"]}, DAG)
    state = follow(airflow_api, [run_id], timeout_s=900, dag_id=DAG)[run_id]
    days.add(datetime.now(UTC).strftime("%Y-%m-%d"))  # a run across midnight
    assert state == "success"
    summary = hive_scalar(
        "SELECT to_json(named_struct('rows', count(*), 'scored', count(prediction), 'refused', count(error), "
        f"'days', collect_set(score_date), 'versions', collect_set(model_version))) "
        f"FROM {hive_table_name(dataset, kind='predictions')}",
        stack_env,
    )
    found = json.loads(summary or "{}")
    assert found["versions"] == [champion] and len(found["days"]) == 1 and found["days"][0] in days, found
    # every shipped row once; the rows the service would refuse (none expected in the shipped data) say why
    assert found["rows"] == len(load_shipped("penguins")) == found["scored"] + found["refused"], found
