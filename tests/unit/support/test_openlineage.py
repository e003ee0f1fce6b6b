"""The OpenLineage check of the e2e tests (tests/support/openlineage.py) accepts what OpenLineage's client writes and
refuses what its spec does not allow, saying where."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from tests.support.openlineage import NotOpenLineage, run_event


def _event() -> dict[str, Any]:
    """A task's COMPLETE event as openlineage-python itself serialises it (parent facet, a versioned output)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import dataset_version_dataset, job_type_job, parent_run
    from openlineage.client.serde import Serde

    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=str(uuid.uuid4())), job=parent_run.Job(namespace="ns", name="dag")
    )
    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime="2026-12-03T10:00:00.000000+00:00",
        run=Run(runId=str(uuid.uuid4()), facets={"parent": parent}),
        job=Job(
            namespace="ns",
            name="dag.task",
            facets={"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="AIRFLOW")},
        ),
        producer="https://example.test/producer",
        inputs=[InputDataset(namespace="s3://lake", name="datasets/d/features/abc")],
        outputs=[
            OutputDataset(
                namespace="http://127.0.0.1:5000",
                name="models/d-classification",
                facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="3")},
            )
        ],
    )
    return json.loads(Serde.to_json(event))


def test_an_event_of_openlineages_client_is_accepted_with_its_facets_typed() -> None:
    doc = _event()
    event = run_event(doc)
    assert event.eventType.value == "COMPLETE"
    assert type(event.run.facets["parent"]).__name__ == "ParentRunFacet"
    assert event.outputs[0].facets["version"].datasetVersion == "3"
    assert event.run.runId == doc["run"]["runId"]


def _broken(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_event())
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["run"].update(runId="run-1"), r"event\.run: Run refuses it"),
        (lambda d: d.update(eventTime="2026-12-03"), "has to contain time"),
        (lambda d: d.update(eventType="DONE"), r"event\.eventType: 'DONE' is not one of"),
        (lambda d: d.pop("job"), "required field 'job' of RunEvent is missing"),
        (lambda d: d["job"].update(owner="me"), r"event\.job: fields \['owner'\] are not in Job"),
        (lambda d: d["inputs"][0].update(name=7), r"event\.inputs\[0\]\.name: 7 is not a str"),
        (lambda d: d["run"]["facets"]["parent"].pop("_producer"), "a facet needs _producer and _schemaURL"),
        (
            lambda d: d["run"]["facets"]["parent"].update(_schemaURL="https://x.test/F.json#/$defs/NoSuchFacet"),
            "no OpenLineage facet is named 'NoSuchFacet'",
        ),
        (lambda d: d["run"]["facets"]["parent"].pop("job"), "required field 'job' of ParentRunFacet is missing"),
    ],
)
def test_what_the_spec_does_not_allow_is_refused_saying_where(change: Any, message: str) -> None:
    with pytest.raises(NotOpenLineage, match=message):
        run_event(_broken(change))
