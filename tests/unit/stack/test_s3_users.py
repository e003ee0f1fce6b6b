"""stack/s3_users.py without a server: the bucket policies say what the module promises (each user's statements,
evaluated here the way the gateway evaluates them: a matching Deny wins, else a matching Allow, else refused), the
admin API requests are signed PATCHes in the gateway's XML, and setting up twice sends nothing the second time. The
server's own enforcement is tests/integration/stack/test_s3_users.py's (a real gateway)."""

from __future__ import annotations

import fnmatch
import json
import uuid
import xml.etree.ElementTree as ElementTree
from typing import Any

import pytest

from ml.settings import LakeSettings, S3Settings
from stack.config import S3_MLFLOW_USER, S3_MONITOR_USER, S3_PIPELINE_USER, S3_TUNE_USER, S3_USERS, StackPaths
from stack.s3_users import READ_ACTIONS, WRITE_ACTIONS, S3User, bucket_policies, stack_users

LAKE = LakeSettings(raw_bucket="raw-b", lake_bucket="lake-b")
KEYS = {user: f"mlops-{user}-0123456789ab" for user in S3_USERS}
ROOT = S3Settings("http://127.0.0.1:19100", "us-east-1", "root-id", "root-secret")


def _decide(policy: dict[str, Any], access_key: str, action: str, resource: str) -> bool:
    """The gateway's rule (auth/bucket_policy.go): a matching Deny refuses, else a matching Allow grants."""
    allowed = False
    for statement in policy["Statement"]:
        patterns = [arn.removeprefix("arn:aws:s3:::") for arn in statement["Resource"]]
        if (
            access_key in statement["Principal"]["AWS"]
            and action in statement["Action"]
            and any(fnmatch.fnmatchcase(resource, pattern) for pattern in patterns)
        ):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def _may(user: str, action: str, resource: str) -> bool:
    bucket = resource.split("/", 1)[0]
    return _decide(bucket_policies(LAKE, KEYS, "mlflow-b")[bucket], KEYS[user], action, resource)


def test_every_statement_names_a_user_by_its_access_key_and_an_object_or_bucket_of_its_own() -> None:
    policies = bucket_policies(LAKE, KEYS, "mlflow-b")
    assert set(policies) == {"raw-b", "lake-b", "mlflow-b"}
    for bucket, policy in policies.items():
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            assert statement["Principal"]["AWS"] and set(statement["Principal"]["AWS"]) <= set(KEYS.values())
            assert all(arn.startswith(f"arn:aws:s3:::{bucket}") for arn in statement["Resource"])
            assert "s3:*" not in statement["Action"], "every action is named"
            if statement["Effect"] == "Allow" and set(statement["Action"]) & set(WRITE_ACTIONS):
                assert all("/" in arn.removeprefix("arn:aws:s3:::") for arn in statement["Resource"]), (
                    "a write action granted on a bucket itself"
                )


@pytest.mark.parametrize("key", ["tune", "tune/x", "tune/d/s/run/tuner.pkl"])
@pytest.mark.parametrize("action", WRITE_ACTIONS)
def test_only_the_tune_user_writes_the_searches_storage(key: str, action: str) -> None:
    assert _may(S3_TUNE_USER, action, f"lake-b/{key}")
    assert not _may(S3_PIPELINE_USER, action, f"lake-b/{key}")
    assert not _may(S3_MLFLOW_USER, action, f"lake-b/{key}")


@pytest.mark.parametrize("key", ["datasets/d/snapshots/s/manifest.json", "locks/registry/m.lock", "warehouse/x"])
def test_the_pipeline_writes_the_rest_of_the_lake_and_the_tune_user_does_not(key: str) -> None:
    assert all(_may(S3_PIPELINE_USER, action, f"lake-b/{key}") for action in READ_ACTIONS + WRITE_ACTIONS)
    assert _may(S3_TUNE_USER, "s3:GetObject", f"lake-b/{key}")
    assert not any(_may(S3_TUNE_USER, action, f"lake-b/{key}") for action in WRITE_ACTIONS)


def test_raw_is_read_only_and_mlflows_bucket_is_the_mlflow_users_alone() -> None:
    for user in (S3_PIPELINE_USER, S3_TUNE_USER):
        assert _may(user, "s3:GetObject", "raw-b/d/part-0.csv") and _may(user, "s3:ListBucket", "raw-b")
        assert not any(_may(user, action, "raw-b/d/part-0.csv") for action in WRITE_ACTIONS)
        assert not _may(user, "s3:GetObject", "mlflow-b/artifacts/1/model.pt")
        assert not _may(user, "s3:ListBucket", "mlflow-b")
    assert all(_may(S3_MLFLOW_USER, action, "mlflow-b/artifacts/1/m") for action in READ_ACTIONS + WRITE_ACTIONS)
    assert _may(S3_MLFLOW_USER, "s3:ListBucket", "mlflow-b")
    for resource in ("raw-b/d/part-0.csv", "lake-b/tune/x", "lake-b/datasets/x"):
        assert not _may(S3_MLFLOW_USER, "s3:GetObject", resource)
    assert not _may(S3_MLFLOW_USER, "s3:ListBucket", "lake-b")


def test_the_monitors_statements_are_exactly_its_checkpoint_and_the_training_distributions() -> None:
    """What the drift monitor may do, all of it: list the lake (s3a's probes), read the training distributions beside
    each features folder, and read and write lake/monitor/ (its checkpoint); no statement of the raw or mlflow
    bucket names it."""
    policies = bucket_policies(LAKE, KEYS, "mlflow-b")
    monitor = KEYS[S3_MONITOR_USER]
    statements = {
        bucket: [
            (statement["Effect"], tuple(statement["Action"]), tuple(statement["Resource"]))
            for statement in policy["Statement"]
            if monitor in statement["Principal"]["AWS"]
        ]
        for bucket, policy in policies.items()
    }
    assert statements == {
        "raw-b": [],
        "mlflow-b": [],
        "lake-b": [
            ("Allow", ("s3:ListBucket",), ("arn:aws:s3:::lake-b",)),
            (
                "Allow",
                READ_ACTIONS,
                (
                    "arn:aws:s3:::lake-b/datasets/*/features/*/training_distributions.json",
                    "arn:aws:s3:::lake-b/monitor",
                    "arn:aws:s3:::lake-b/monitor/*",
                ),
            ),
            ("Allow", WRITE_ACTIONS, ("arn:aws:s3:::lake-b/monitor", "arn:aws:s3:::lake-b/monitor/*")),
        ],
    }


def test_the_monitor_writes_its_checkpoint_and_reads_the_training_distributions_and_nothing_else() -> None:
    from ml.storage import drift_checkpoint_uri, features_uri, training_distributions_uri

    checkpoint = drift_checkpoint_uri(LAKE)
    distributions = training_distributions_uri(features_uri(LAKE, "penguins", "snap-1"))
    assert checkpoint.bucket == distributions.bucket == "lake-b"
    for key in (checkpoint.key, f"{checkpoint.key}/offsets/7", f"{checkpoint.key}/state/0/1/1.delta", "monitor"):
        assert all(_may(S3_MONITOR_USER, action, f"lake-b/{key}") for action in READ_ACTIONS + WRITE_ACTIONS), key
    assert _may(S3_MONITOR_USER, "s3:GetObject", f"lake-b/{distributions.key}")
    assert _may(S3_MONITOR_USER, "s3:ListBucket", "lake-b")
    # It writes nothing outside lake/monitor/: not the training distributions it reads, not the pipeline's objects.
    elsewhere = (
        distributions.key,
        "datasets/penguins/features/snap-1/feature_spec.json",
        "datasets/penguins/snapshots/snap-1/part-0.csv",
        "warehouse/x",
        "tune/d/s/run/tuner.pkl",
        "monitoring/x",  # a prefix that merely starts like its folder
        "locks/registry/m.lock",
    )
    for key in elsewhere:
        assert not any(_may(S3_MONITOR_USER, action, f"lake-b/{key}") for action in WRITE_ACTIONS), key
    # ... and reads only the distributions: not the features, the snapshots, the searches, raw data or artifacts.
    for resource in (
        "lake-b/datasets/penguins/features/snap-1/feature_spec.json",
        "lake-b/datasets/penguins/features/snap-1/train/part-0.parquet",
        "lake-b/datasets/penguins/snapshots/snap-1/part-0.csv",
        "lake-b/tune/d/s/run/tuner.pkl",
        "lake-b/evaluations/d/s/run/evaluation.json",
        "raw-b/d/part-0.csv",
        "mlflow-b/artifacts/1/model.pt",
    ):
        assert not _may(S3_MONITOR_USER, "s3:GetObject", resource), resource
    assert not _may(S3_MONITOR_USER, "s3:ListBucket", "raw-b") and not _may(
        S3_MONITOR_USER, "s3:ListBucket", "mlflow-b"
    )


@pytest.mark.parametrize(
    "action", ["s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:DeleteBucket", "s3:PutBucketAcl"]
)
def test_no_user_may_change_a_bucket(action: str) -> None:
    for user in S3_USERS:
        for bucket in ("raw-b", "lake-b", "mlflow-b"):
            assert not _may(user, action, bucket) and not _may(user, action, f"{bucket}/x")


def test_the_stack_users_are_the_generated_keys(stack_dir: StackPaths) -> None:
    from stack.config import s3_user_keys

    users = stack_users(stack_dir)
    assert set(users) == set(S3_USERS)
    for name, user in users.items():
        assert (user.access_key, user.secret_key) == tuple(s3_user_keys(stack_dir, name).values())
        assert user.secret_key not in repr(user)
        assert user.settings(ROOT) == S3Settings(ROOT.endpoint_url, ROOT.region, user.access_key, user.secret_key)


# --- the admin API ---------------------------------------------------------------------------------------------------


class FakeAdminApi:
    """What the gateway's admin API would answer (users in memory), and the requests it got."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def __call__(self, root: S3Settings, path: str, body: bytes = b"", query: Any = None) -> bytes:
        fields = {child.tag: child.text or "" for child in ElementTree.fromstring(body)} if body else {}
        self.requests.append((path, fields, dict(query or {})))
        if path == "create-user":
            self.users[fields["Access"]] = {"Secret": fields["Secret"], "Role": fields["Role"]}
        elif path == "update-user":
            self.users[query["access"]].update(fields)
        accounts = "".join(
            f"<Accounts><Access>{access}</Access><Secret>{user['Secret']}</Secret><Role>{user['Role']}</Role>"
            "<UserID>0</UserID></Accounts>"
            for access, user in self.users.items()
        )
        return f"<ListUserAccountsResult>{accounts}</ListUserAccountsResult>".encode()


def test_users_are_created_once_with_the_least_role_and_updated_when_their_secret_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stack.s3_users
    from stack.s3_users import ensure_users, list_users

    api = FakeAdminApi()
    monkeypatch.setattr(stack.s3_users, "_admin_request", api)
    users = {name: S3User(name, KEYS[name], f"secret-of-{name}") for name in S3_USERS}
    assert ensure_users(ROOT, users) == {"created": list(S3_USERS), "updated": []}
    created = [fields for path, fields, _ in api.requests if path == "create-user"]
    assert created == [{"Access": KEYS[name], "Secret": f"secret-of-{name}", "Role": "user"} for name in S3_USERS]
    assert list_users(ROOT) == {KEYS[name]: {"Secret": f"secret-of-{name}", "Role": "user"} for name in S3_USERS}

    api.requests.clear()
    assert ensure_users(ROOT, users) == {"created": [], "updated": []}
    assert [path for path, _, _ in api.requests] == ["list-users"], "a second set-up changed something"

    new_secret = uuid.uuid4().hex
    changed = {**users, S3_TUNE_USER: S3User(S3_TUNE_USER, KEYS[S3_TUNE_USER], new_secret)}
    assert ensure_users(ROOT, changed) == {"created": [], "updated": [S3_TUNE_USER]}
    assert api.requests[-1] == ("update-user", {"Secret": new_secret, "Role": "user"}, {"access": KEYS["tune"]})


def test_the_admin_api_gets_a_signed_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed as `versitygw admin` signs (SigV4, service s3, the payload's hash), sent to the gateway's own port."""
    import urllib.request

    from stack.s3_users import _admin_request

    sent: list[urllib.request.Request] = []

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self) -> bytes:
            return b"<ok/>"

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> Answer:
        sent.append(request)
        return Answer()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert _admin_request(ROOT, "update-user", b"<MutableProps/>", {"access": "mlops-tune-1"}) == b"<ok/>"
    [request] = sent
    headers = {name.lower(): value for name, value in request.header_items()}
    assert request.get_method() == "PATCH"
    assert request.full_url == "http://127.0.0.1:19100/update-user?access=mlops-tune-1"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=root-id/")
    assert "/us-east-1/s3/aws4_request" in headers["authorization"]
    assert "root-secret" not in json.dumps(headers)
    assert len(headers["x-amz-content-sha256"]) == 64


def test_the_admin_api_needs_an_http_endpoint() -> None:
    from stack.s3_users import _admin_request

    with pytest.raises(ValueError, match="http"):
        _admin_request(S3Settings(None, "us-east-1", "a", "b"), "list-users")


def test_every_user_needs_keys_before_anything_is_sent() -> None:
    from stack.s3_users import ensure_users_and_policies

    with pytest.raises(ValueError, match="mlflow"):
        ensure_users_and_policies(ROOT, LAKE, {name: S3User(name, "a", "b") for name in S3_USERS[:2]})
