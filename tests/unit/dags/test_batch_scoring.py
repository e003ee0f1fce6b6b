"""dags/batch_scoring.py parses and wires resolve_champion -> score_with_spark (the Spark submission is tested in
tests/unit/ml/scoring; the run against the stack in tests/integration/ml/scoring)."""

from __future__ import annotations

from typing import Any


def test_the_dag_parses_and_wires_its_tasks(dagbag: Any) -> None:
    assert not {path: error for path, error in dagbag.import_errors.items() if "batch_scoring" in path}
    dag = dagbag.dags["batch_scoring"]
    assert dag.catchup is False and "'0 0 * * *'" in repr(dag.timetable)  # @daily
    assert {task_id: sorted(task.downstream_task_ids) for task_id, task in dag.task_dict.items()} == {
        "resolve_champion": ["score_with_spark"],
        "score_with_spark": [],
    }
    score = dag.task_dict["score_with_spark"]
    assert type(score).__name__ == "BatchScoreOperator"
    assert "ds" in score.score_date and str(score.application).endswith("ml/scoring/job.py")
    assert set(dag.params) == {"dataset", "model", "alias", "table", "raw_uri"}
    assert dag.params["alias"] == "champion"
