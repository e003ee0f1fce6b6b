"""The stack's S3 users against the real S3 server (stack/s3_users.py): the pipeline cannot write the searches'
storage (lake/tune/), the tune task can and can write nothing else, the MLflow server's user sees its bucket only,
anonymous and wrongly signed requests are refused, no user can change a policy or a bucket, setting it all up again
(a second `make stack-up`, a restart) changes nothing, and the pipeline's stages run with their own users (a real
Ray Tune search as tune, the evaluation of registration as pipeline).

The server is a private Versity S3 Gateway (tests/support/private_services.py: the stack's own command line, internal
IAM included, on a port of 127.0.0.1 in 19100-19109, data under tmp_path), set up by the functions `python -m stack
up` runs, with the users' keys generated into a throwaway stack folder as the stack's are. The shared stack's server
is never touched. It needs the versitygw binary of `make tools`, no running stack. No mock: every claim is a request
the server answers.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ml.clients import s3_client
from ml.settings import LakeSettings, S3Settings
from stack.config import S3_MLFLOW_USER, S3_PIPELINE_USER, S3_TUNE_USER, StackPaths
from stack.init_resources import create_buckets
from stack.s3_users import S3User, bucket_policies, ensure_users_and_policies, list_users, stack_users
from tests.support.private_services import PrivateServer, private_s3

PORTS = range(19100, 19110)  # the private S3 servers' ports on this machine
LAKE = LakeSettings()
TUNE_STATE = "tune/penguins/abc/run-1/tuner.pkl"  # what a retried search would unpickle (ml.tune.signing signs it)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a private S3 server")


@dataclass
class Gateway:
    server: PrivateServer
    root: S3Settings
    users: dict[str, S3User]

    def client(self, user: str | None = None) -> Any:
        """A boto3 client signing as `user` (root when None)."""
        return s3_client(self.users[user].settings(self.root) if user else self.root)

    def set_up(self) -> dict[str, Any]:
        """What `python -m stack up` does once the server runs: buckets, users, policies (as root)."""
        return {"buckets": create_buckets(self.root, LAKE), **ensure_users_and_policies(self.root, LAKE, self.users)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("s3-users")
    server, keys = private_s3(folder / "server", port=_free_port())
    server.start()
    try:
        root = S3Settings(server.service.url, "us-east-1", keys.access_key, keys.secret_key)
        gateway = Gateway(server, root, stack_users(StackPaths(folder / "stack")))
        gateway.set_up()
        gateway.client().put_object(Bucket=LAKE.lake_bucket, Key=TUNE_STATE, Body=b"state the tune task wrote")
        gateway.client().put_object(Bucket=LAKE.raw_bucket, Key="penguins/part-0.csv", Body=b"a,b\n1,2\n")
        yield gateway
    finally:
        server.stop()


def _refused(call: Callable[[], Any]) -> str:
    """The error code of a request the server refuses (the test fails if it is served)."""
    with pytest.raises(ClientError) as refused:
        call()
    return str(refused.value.response["Error"]["Code"])


def _state(gateway: Gateway) -> bytes:
    return bytes(gateway.client().get_object(Bucket=LAKE.lake_bucket, Key=TUNE_STATE)["Body"].read())


# --- set-up ----------------------------------------------------------------------------------------------------------


def test_the_users_are_the_stacks_generated_ones_and_none_is_an_admin(gateway: Gateway) -> None:
    listed = list_users(gateway.root)
    for name in (S3_PIPELINE_USER, S3_TUNE_USER, S3_MLFLOW_USER):
        user = gateway.users[name]
        assert user.access_key.startswith(f"mlops-{name}-")
        assert listed[user.access_key] == {"Secret": user.secret_key, "Role": "user"}
    iam_files = [path for path in (gateway.server.paths.data / "s3" / "iam").iterdir() if path.is_file()]
    assert iam_files and all(path.stat().st_mode & 0o077 == 0 for path in iam_files), "users' secrets readable"


def test_setting_up_again_changes_nothing_even_after_a_restart(gateway: Gateway) -> None:
    assert gateway.set_up() == {
        "buckets": [],
        "s3_users_created": [],
        "s3_users_updated": [],
        "bucket_policies_put": [],
    }
    gateway.server.stop()
    gateway.server.start()
    assert gateway.set_up()["bucket_policies_put"] == [], "the policies survive a restart"
    assert list_users(gateway.root).keys() >= {user.access_key for user in gateway.users.values()}
    assert gateway.client(S3_TUNE_USER).head_object(Bucket=LAKE.lake_bucket, Key=TUNE_STATE)
    stored = json.loads(gateway.client().get_bucket_policy(Bucket=LAKE.lake_bucket)["Policy"])
    access_keys = {name: user.access_key for name, user in gateway.users.items()}
    assert stored == bucket_policies(LAKE, access_keys)[LAKE.lake_bucket]


def test_a_user_whose_secret_changed_is_updated_and_the_old_secret_refused(gateway: Gateway) -> None:
    old = gateway.users[S3_MLFLOW_USER]
    new = S3User(old.name, old.access_key, secrets.token_urlsafe(30))
    try:
        done = ensure_users_and_policies(gateway.root, LAKE, {**gateway.users, S3_MLFLOW_USER: new})
        assert done["s3_users_updated"] == [S3_MLFLOW_USER] and done["s3_users_created"] == []
        assert _refused(lambda: gateway.client(S3_MLFLOW_USER).list_objects_v2(Bucket="mlflow")) in (
            "SignatureDoesNotMatch",
            "AccessDenied",
        )
        assert s3_client(new.settings(gateway.root)).list_objects_v2(Bucket="mlflow")
    finally:
        ensure_users_and_policies(gateway.root, LAKE, gateway.users)


# --- the pipeline: reads raw, reads and writes the lake except lake/tune/ -------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["tune/x.pkl", TUNE_STATE, "./tune/x.pkl", "datasets/../tune/x.pkl", "/tune/x.pkl", "tune//x.pkl", "tune", "tune/"],
)
def test_the_pipeline_cannot_write_the_searches_storage(gateway: Gateway, key: str) -> None:
    pipeline = gateway.client(S3_PIPELINE_USER)
    lake = LAKE.lake_bucket
    assert _refused(lambda: pipeline.put_object(Bucket=lake, Key=key, Body=b"planted")) == "AccessDenied"
    assert _refused(lambda: pipeline.create_multipart_upload(Bucket=lake, Key=key)) == "AccessDenied"
    source = {"Bucket": LAKE.raw_bucket, "Key": "penguins/part-0.csv"}
    assert _refused(lambda: pipeline.copy_object(Bucket=lake, Key=key, CopySource=source)) == "AccessDenied"
    assert _state(gateway) == b"state the tune task wrote"
    assert _refused(lambda: gateway.client().head_object(Bucket=lake, Key="tune/x.pkl")) == "404"


def test_the_pipeline_cannot_delete_the_searches_state_one_by_one_or_in_a_batch(gateway: Gateway) -> None:
    pipeline = gateway.client(S3_PIPELINE_USER)
    lake = LAKE.lake_bucket
    assert _refused(lambda: pipeline.delete_object(Bucket=lake, Key=TUNE_STATE)) == "AccessDenied"
    pipeline.put_object(Bucket=lake, Key="datasets/d/scratch.csv", Body=b"x")
    batch = {"Objects": [{"Key": TUNE_STATE}, {"Key": "datasets/d/scratch.csv"}], "Quiet": True}
    errors = pipeline.delete_objects(Bucket=lake, Delete=batch).get("Errors", [])
    assert [(error["Key"], error["Code"]) for error in errors] == [(TUNE_STATE, "AccessDenied")]
    assert _state(gateway) == b"state the tune task wrote"
    assert _refused(lambda: pipeline.head_object(Bucket=lake, Key="datasets/d/scratch.csv")) == "404"


def test_the_pipeline_reads_raw_and_the_searches_and_writes_the_rest_of_the_lake(gateway: Gateway) -> None:
    from ml.storage import S3Uri, delete_prefix, read_json, write_json

    pipeline = gateway.client(S3_PIPELINE_USER)
    assert pipeline.get_object(Bucket=LAKE.raw_bucket, Key="penguins/part-0.csv")["Body"].read() == b"a,b\n1,2\n"
    assert pipeline.list_objects_v2(Bucket=LAKE.raw_bucket, Prefix="penguins/")["KeyCount"] == 1
    assert pipeline.get_object(Bucket=LAKE.lake_bucket, Key=TUNE_STATE)["Body"].read()  # the register task reads it
    prefixes = ("datasets/d/snapshots/s1", "datasets/d/features/s1", "locks/registry", "warehouse/mlops.db")
    for prefix in (*prefixes, "evaluations/d/s1/run-1"):  # registration writes its evaluation there
        uri = S3Uri(LAKE.lake_bucket, f"{prefix}/test.json")
        write_json(uri, {"written": prefix}, pipeline)
        assert read_json(uri, pipeline) == {"written": prefix}
    assert delete_prefix(S3Uri(LAKE.lake_bucket, "datasets/d/snapshots/s1"), pipeline) == 1  # an ingest's clean-up


def test_the_pipeline_cannot_write_raw_or_touch_mlflows_bucket(gateway: Gateway) -> None:
    pipeline = gateway.client(S3_PIPELINE_USER)
    assert _refused(lambda: pipeline.put_object(Bucket=LAKE.raw_bucket, Key="penguins/x.csv", Body=b"x")) == (
        "AccessDenied"
    )
    assert _refused(lambda: pipeline.delete_object(Bucket=LAKE.raw_bucket, Key="penguins/part-0.csv")) == (
        "AccessDenied"
    )
    assert _refused(lambda: pipeline.list_objects_v2(Bucket="mlflow")) == "AccessDenied"
    assert _refused(lambda: pipeline.put_object(Bucket="mlflow", Key="artifacts/x", Body=b"x")) == "AccessDenied"


# --- the tune task: writes lake/tune/ only ---------------------------------------------------------------------------


def test_the_tune_task_writes_its_storage_through_the_filesystem_ray_tune_uses(gateway: Gateway) -> None:
    """Ray Tune's storage goes through ml.keyless_s3 (pyarrow), with the tune user's keys: writes, listings and the
    deletes of old checkpoints (delete_dir) all stay under lake/tune/."""
    from pyarrow import fs

    from ml.clients import keyless_arrow_filesystem

    tune = gateway.users[S3_TUNE_USER].settings(gateway.root)
    storage = keyless_arrow_filesystem(tune)
    run = f"{LAKE.lake_bucket}/tune/penguins/abc/run-2"
    storage.create_dir(f"{run}/checkpoint_000001", recursive=True)
    with storage.open_output_stream(f"{run}/checkpoint_000001/model.pt") as stream:
        stream.write(b"weights")
    with storage.open_output_stream(f"{run}/experiment_state.json") as stream:
        stream.write(b"{}")
    found = storage.get_file_info(fs.FileSelector(run, recursive=True))
    assert {info.base_name for info in found} >= {"checkpoint_000001", "model.pt", "experiment_state.json"}
    storage.delete_dir(f"{run}/checkpoint_000001")  # Tune keeps the best checkpoints, deletes the others
    assert storage.get_file_info(f"{run}/checkpoint_000001/model.pt").type == fs.FileType.NotFound
    with pytest.raises(OSError, match=r"(?i)access ?denied"):
        with storage.open_output_stream(f"{LAKE.lake_bucket}/datasets/d/features/s1/planted.parquet") as stream:
            stream.write(b"x")


def test_the_tune_task_persists_signed_checkpoints_as_ray_train_does(gateway: Gateway, tmp_path: Path) -> None:
    """A checkpoint folder copied into the search's storage through the signing filesystem (pyarrow's copy_files, as
    Ray Train persists one), with the tune user's keys: files and signatures land, and read back verified."""
    from pyarrow import fs

    from ml.clients import keyless_arrow_filesystem
    from ml.tune.signing import signed_filesystem

    local = tmp_path / "checkpoint_000002"
    local.mkdir()
    (local / "model_state.pt").write_bytes(b"tensors")
    (local / "model_config.json").write_text("{}")
    storage = signed_filesystem(
        keyless_arrow_filesystem(gateway.users[S3_TUNE_USER].settings(gateway.root)), secrets.token_urlsafe(32)
    )
    target = f"{LAKE.lake_bucket}/tune/penguins/abc/run-3/checkpoint_000002"
    fs.copy_files(str(local), target, source_filesystem=fs.LocalFileSystem(), destination_filesystem=storage)
    with storage.open_input_stream(f"{target}/model_state.pt") as stream:
        assert stream.read() == b"tensors"
    keys = [
        entry["Key"]
        for entry in gateway.client().list_objects_v2(Bucket=LAKE.lake_bucket, Prefix="tune/penguins/abc/run-3/")[
            "Contents"
        ]
    ]
    assert len(keys) == 4 and all(key.startswith("tune/penguins/abc/run-3/checkpoint_000002/") for key in keys), keys


def test_the_tune_task_reads_the_lake_and_raw_and_writes_nothing_else(gateway: Gateway) -> None:
    from ml.storage import S3Uri, write_json

    tune = gateway.client(S3_TUNE_USER)
    write_json(S3Uri(LAKE.lake_bucket, "datasets/d/features/s1/feature_spec.json"), {"f": 1}, gateway.client())
    assert tune.get_object(Bucket=LAKE.lake_bucket, Key="datasets/d/features/s1/feature_spec.json")["Body"].read()
    assert tune.get_object(Bucket=LAKE.raw_bucket, Key="penguins/part-0.csv")["Body"].read()  # a search space there
    lake = LAKE.lake_bucket
    for key in ("datasets/d/features/s1/feature_spec.json", "locks/registry/m.lock", "tune/../datasets/x", "x"):
        assert _refused(lambda key=key: tune.put_object(Bucket=lake, Key=key, Body=b"x")) == "AccessDenied"  # type: ignore[misc]
    assert _refused(lambda: tune.delete_object(Bucket=lake, Key="datasets/d/features/s1/feature_spec.json")) == (
        "AccessDenied"
    )
    batch = {"Objects": [{"Key": "datasets/d/features/s1/feature_spec.json"}], "Quiet": True}
    assert [error["Code"] for error in tune.delete_objects(Bucket=lake, Delete=batch)["Errors"]] == ["AccessDenied"]
    assert _refused(lambda: tune.put_object(Bucket=LAKE.raw_bucket, Key="penguins/x.csv", Body=b"x")) == (
        "AccessDenied"
    )
    assert _refused(lambda: tune.list_objects_v2(Bucket="mlflow")) == "AccessDenied"


# --- MLflow's artifact store: the mlflow bucket only ------------------------------------------------------------------


def test_the_mlflow_user_reads_and_writes_its_bucket_only(gateway: Gateway) -> None:
    mlflow = gateway.client(S3_MLFLOW_USER)
    mlflow.put_object(Bucket="mlflow", Key="artifacts/1/model/MLmodel", Body=b"flavors: {}")
    assert mlflow.get_object(Bucket="mlflow", Key="artifacts/1/model/MLmodel")["Body"].read() == b"flavors: {}"
    assert mlflow.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")["KeyCount"] == 1
    mlflow.delete_object(Bucket="mlflow", Key="artifacts/1/model/MLmodel")
    for bucket, key in ((LAKE.lake_bucket, TUNE_STATE), (LAKE.raw_bucket, "penguins/part-0.csv")):
        assert _refused(lambda b=bucket, k=key: mlflow.get_object(Bucket=b, Key=k)) == "AccessDenied"  # type: ignore[misc]
        assert _refused(lambda b=bucket: mlflow.list_objects_v2(Bucket=b)) == "AccessDenied"  # type: ignore[misc]
        assert _refused(lambda b=bucket: mlflow.put_object(Bucket=b, Key="tune/x", Body=b"x")) == "AccessDenied"  # type: ignore[misc]


# --- nobody else -----------------------------------------------------------------------------------------------------


def test_anonymous_and_wrongly_signed_requests_are_refused(gateway: Gateway) -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.client(
        "s3",
        endpoint_url=gateway.root.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
    )
    lake = LAKE.lake_bucket
    assert _refused(lambda: anonymous.get_object(Bucket=lake, Key=TUNE_STATE)) == "AccessDenied"
    assert _refused(lambda: anonymous.put_object(Bucket=lake, Key="tune/x.pkl", Body=b"x")) == "AccessDenied"
    assert _refused(lambda: anonymous.list_objects_v2(Bucket=LAKE.raw_bucket)) == "AccessDenied"
    tune = gateway.users[S3_TUNE_USER]
    forged = s3_client(S3User("tune", tune.access_key, secrets.token_urlsafe(30)).settings(gateway.root))
    assert _refused(lambda: forged.put_object(Bucket=lake, Key="tune/x.pkl", Body=b"x")) == "SignatureDoesNotMatch"
    assert _state(gateway) == b"state the tune task wrote"


@pytest.mark.parametrize("user", [S3_PIPELINE_USER, S3_TUNE_USER, S3_MLFLOW_USER])
def test_no_user_can_change_a_policy_a_bucket_or_the_users(gateway: Gateway, user: str) -> None:
    from stack.s3_users import AdminApiError

    client = gateway.client(user)
    anyone = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:*"]}]}
    for bucket in (LAKE.raw_bucket, LAKE.lake_bucket, "mlflow"):
        anyone["Statement"][0]["Resource"] = [f"arn:aws:s3:::{bucket}/*"]
        policy = json.dumps(anyone)
        assert _refused(lambda b=bucket, p=policy: client.put_bucket_policy(Bucket=b, Policy=p)) == "AccessDenied"  # type: ignore[misc]
        assert _refused(lambda b=bucket: client.delete_bucket_policy(Bucket=b)) == "AccessDenied"  # type: ignore[misc]
        assert _refused(lambda b=bucket: client.delete_bucket(Bucket=b)) == "AccessDenied"  # type: ignore[misc]
    assert _refused(lambda: client.create_bucket(Bucket=f"made-by-{user}")) == "AccessDenied"
    with pytest.raises(AdminApiError, match="HTTP 403"):
        list_users(gateway.users[user].settings(gateway.root))
    assert _state(gateway) == b"state the tune task wrote"


# --- the pipeline's stages, each with its own user --------------------------------------------------------------------


def test_a_search_runs_as_the_tune_user_and_registration_evaluates_it_as_the_pipeline(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The S3 side of a DAG run with the stack's users: features written as the pipeline (the preprocessing job's
    output), a real Ray Tune search (a local Ray, as the tune task starts one: its workers get the tune user's keys
    through the runtime environment only) that stores its signed state and checkpoints under lake/tune/, then the
    register task's evaluation as the pipeline, which reads the search and writes beside it."""
    import ray

    from ml.evaluate import evaluate_best
    from ml.settings import RaySettings, Settings
    from ml.storage import evaluation_uri, read_json
    from ml.tune.search import run_search
    from tests.integration.ml.tune.support import small_search
    from tests.support.synthetic_features import write_synthetic_features

    assert not ray.is_initialized()
    pipeline = Settings(s3=gateway.users[S3_PIPELINE_USER].settings(gateway.root), lake=LAKE)
    tune = gateway.users[S3_TUNE_USER].settings(gateway.root)
    features = write_synthetic_features(
        pipeline, "classification", 2, rows={"train": 120, "validation": 40, "test": 40}
    )
    config = small_search(features.dataset, features.snapshot_id, "s3-users-run", num_samples=2, max_epochs=2)
    result = run_search(config, s3=tune, lake=LAKE, ray=RaySettings(state_signing_key=secrets.token_urlsafe(32)))
    assert not ray.is_initialized(), "the search stops the Ray it started"
    assert result.num_trials == 2 and result.best_checkpoint_uri.startswith(f"s3://{LAKE.lake_bucket}/tune/")
    stored = gateway.client().list_objects_v2(Bucket=LAKE.lake_bucket, Prefix=f"tune/{features.dataset}/")
    assert any(entry["Key"].endswith("tuner.pkl") for entry in stored["Contents"])

    evaluation = evaluate_best(result.to_dict(), s3=pipeline.s3)
    assert read_json(evaluation_uri(result.experiment_uri), gateway.client()) == evaluation
