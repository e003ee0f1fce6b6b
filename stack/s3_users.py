"""Who may use the local S3 server, and for what: its users and the buckets' policies (issue 14).

The server (Versity S3 Gateway with its internal IAM, `--iam-dir`: stack.services.s3_gateway_command) has a root key
(stack.config.local_credentials: the stack's set-up, the operator's and the tests' key) and these users, each with
keys generated per stack folder (stack.config.stack_secrets), all of role `user` (no admin API, no bucket creation):

  pipeline  Airflow's aws_default (ingest, Spark's preprocessing, the Hive metastore, registration): reads raw, reads
            and writes the lake, except lake/tune/, which it may read but not write.
  tune      Airflow's aws_tune (the tune task and its Ray workers): reads raw (a search space may be an object there)
            and the lake, writes lake/tune/ only.
  mlflow    the MLflow server's artifact store: reads and writes the mlflow bucket, nothing else.
  monitor   the streaming drift monitor (ml.drift): reads the training distributions beside each features folder
            (lake/datasets/*/features/*/training_distributions.json) and reads and writes lake/monitor/ (its
            checkpoint: ml.storage.drift_checkpoint_uri), nothing else.

Serving has no S3 key: it loads models through MLflow's artifact proxy. The buckets belong to root (the users own
none, so none may change a bucket's policy or ACL). A bucket with a policy is decided by its policy alone (the
gateway consults no ACL then), what no statement allows is refused, and an explicit Deny wins over every Allow.
What v1.8.0 enforces, read in its source (auth/access-control.go) and tested against the real server
(tests/integration/stack/test_s3_users.py): every object request is matched against its own key, normalised first
(`./tune/x` and `datasets/../tune/x` are `tune/x`); a multi-object delete checks each key on its own (a denied key
comes back as that object's AccessDenied error, the others are deleted); copies and multipart uploads are
s3:PutObject on their destination. Write actions are granted on objects (`bucket/prefix*`) only, never on a bucket.

`ensure_users_and_policies` (run by `python -m stack up` and `python -m stack.init_resources` with the root key)
creates the users through the gateway's admin API (signed PATCH requests, as `versitygw admin` sends them) and puts
the policies; both are idempotent, so a second `up` changes nothing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ml.settings import LakeSettings, S3Settings
from ml.storage import TRAINING_DISTRIBUTIONS_FILE
from stack.config import (
    MLFLOW_BUCKET,
    S3_MLFLOW_USER,
    S3_MONITOR_USER,
    S3_PIPELINE_USER,
    S3_TUNE_USER,
    S3_USERS,
    StackPaths,
)
from stack.config import s3_user_keys as _stored_keys

USER_ROLE = "user"  # the gateway's least role: no admin API, no CreateBucket; access only by policy or ACL
TUNE_PREFIX = "tune/"  # ml.storage.tune_uri: Ray Tune's storage in the lake
MONITOR_PREFIX = "monitor/"  # ml.storage.drift_checkpoint_uri: the drift monitor's checkpoint in the lake
# The training distributions of every features folder (ml.storage.training_distributions_uri): what the drift monitor
# reads of the lake (a policy's `*` matches any characters, `/` included).
TRAINING_DISTRIBUTIONS_OBJECTS = f"datasets/*/features/*/{TRAINING_DISTRIBUTIONS_FILE}"

# The actions each kind of access takes (versitygw's names). HeadBucket and the listings are s3:ListBucket; HeadObject
# is s3:GetObject; multipart uploads and copies are s3:PutObject on the destination.
LIST_ACTIONS = ("s3:ListBucket",)
READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


@dataclass(frozen=True)
class S3User:
    """One of the server's users: its name in the stack, its keys."""

    name: str
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"S3User({self.name!r}, {self.access_key!r}, ...)"

    def settings(self, s3: S3Settings) -> S3Settings:
        """`s3`'s endpoint, signing as this user."""
        return S3Settings(s3.endpoint_url, s3.region, self.access_key, self.secret_key)


def stack_users(paths: StackPaths) -> dict[str, S3User]:
    """The stack's S3 users with their generated keys."""
    return {name: S3User(name, **_stored_keys(paths, name)) for name in S3_USERS}


# --- the bucket policies ---------------------------------------------------------------------------------------------


def _statement(effect: str, access_key: str, actions: tuple[str, ...], *resources: str) -> dict[str, Any]:
    return {
        "Effect": effect,
        "Principal": {"AWS": [access_key]},
        "Action": list(actions),
        "Resource": [f"arn:aws:s3:::{resource}" for resource in resources],
    }


def bucket_policies(
    lake: LakeSettings, access_keys: Mapping[str, str], mlflow_bucket: str = MLFLOW_BUCKET
) -> dict[str, dict[str, Any]]:
    """Each bucket's policy, the users named by their access keys (`access_keys`: user -> access key)."""
    raw, lake_bucket = lake.raw_bucket, lake.lake_bucket
    pipeline, tune, mlflow, monitor = (
        access_keys[user] for user in (S3_PIPELINE_USER, S3_TUNE_USER, S3_MLFLOW_USER, S3_MONITOR_USER)
    )
    # lake/tune/ and everything under it. The folder's own marker object (`tune/`, which pyarrow's create_dir writes
    # for Ray Tune) is matched as `lake/tune`: the gateway normalises a key's trailing slash away.
    tune_objects = (f"{lake_bucket}/{TUNE_PREFIX.rstrip('/')}", f"{lake_bucket}/{TUNE_PREFIX}*")
    # lake/monitor/ likewise (s3a's folder markers, and the HEAD probes of each parent of the checkpoint).
    monitor_objects = (f"{lake_bucket}/{MONITOR_PREFIX.rstrip('/')}", f"{lake_bucket}/{MONITOR_PREFIX}*")
    return {
        raw: {
            "Version": "2012-10-17",
            "Statement": [_statement("Allow", user, LIST_ACTIONS, raw) for user in (pipeline, tune)]
            + [_statement("Allow", user, READ_ACTIONS, f"{raw}/*") for user in (pipeline, tune)],
        },
        lake_bucket: {
            "Version": "2012-10-17",
            "Statement": [
                # Listing uploads in progress: Spark's s3a may look for ones to abort under its output.
                _statement("Allow", pipeline, (*LIST_ACTIONS, "s3:ListBucketMultipartUploads"), lake_bucket),
                _statement("Allow", pipeline, READ_ACTIONS + WRITE_ACTIONS, f"{lake_bucket}/*"),
                # An explicit Deny wins over every Allow: the pipeline reads the searches' results, never writes them.
                _statement("Deny", pipeline, WRITE_ACTIONS, *tune_objects),
                _statement("Allow", tune, LIST_ACTIONS, lake_bucket),
                _statement("Allow", tune, READ_ACTIONS, f"{lake_bucket}/*"),
                _statement("Allow", tune, WRITE_ACTIONS, *tune_objects),
                # s3a lists the checkpoint's folders (a listing cannot be narrowed to a prefix by policy here).
                _statement("Allow", monitor, LIST_ACTIONS, lake_bucket),
                _statement(
                    "Allow", monitor, READ_ACTIONS, f"{lake_bucket}/{TRAINING_DISTRIBUTIONS_OBJECTS}", *monitor_objects
                ),
                _statement("Allow", monitor, WRITE_ACTIONS, *monitor_objects),
            ],
        },
        mlflow_bucket: {
            "Version": "2012-10-17",
            "Statement": [
                _statement("Allow", mlflow, LIST_ACTIONS, mlflow_bucket),
                _statement("Allow", mlflow, READ_ACTIONS + WRITE_ACTIONS, f"{mlflow_bucket}/*"),
            ],
        },
    }


# --- the gateway's admin API (users) ---------------------------------------------------------------------------------


class AdminApiError(RuntimeError):
    """The gateway refused an admin request (its S3 error code and message)."""


def _admin_request(root: S3Settings, path: str, body: bytes = b"", query: Mapping[str, str] | None = None) -> bytes:
    """A PATCH to the gateway's admin API, signed with SigV4 as `root` (the API takes the root key or an admin's)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    if not (root.endpoint_url or "").startswith(("http://", "https://")):
        raise ValueError(f"the S3 server's admin API needs its http(s) endpoint URL, not {root.endpoint_url!r}")
    url = f"{str(root.endpoint_url).rstrip('/')}/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = AWSRequest(method="PATCH", url=url, data=body)
    S3SigV4Auth(Credentials(root.access_key_id, root.secret_access_key), "s3", root.region).add_auth(request)
    prepared = request.prepare()
    headers = dict(prepared.headers.items())
    sent = urllib.request.Request(url, data=body, headers=headers, method="PATCH")  # noqa: S310 - http(s) endpoint
    try:
        with urllib.request.urlopen(sent, timeout=15) as response:  # noqa: S310 - the stack's own endpoint
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        # The answers of the S3 server the stack configured (no entity expansion in ElementTree's parser).
        code = ElementTree.fromstring(detail).findtext("Code") if detail.startswith("<") else None  # noqa: S314
        hint = " (a gateway started without --iam-dir has no users: restart it, `make stack-down stack-up`)"
        raise AdminApiError(f"S3 admin API {path}: HTTP {error.code} {code or detail[:200]}{hint}") from None


def _xml(tag: str, fields: Mapping[str, str]) -> bytes:
    root = ElementTree.Element(tag)
    for name, value in fields.items():
        ElementTree.SubElement(root, name).text = value
    return ElementTree.tostring(root)


def list_users(root: S3Settings) -> dict[str, dict[str, str]]:
    """The gateway's users (access key -> their `Secret` and `Role`), as the root key sees them."""
    tree = ElementTree.fromstring(_admin_request(root, "list-users"))  # noqa: S314 - as in _admin_request
    users = {}
    for element in tree.iter():
        access = element.findtext("Access")  # a direct child: one account's element
        if access is not None:
            users[access] = {"Secret": element.findtext("Secret") or "", "Role": element.findtext("Role") or ""}
    return users


def ensure_users(root: S3Settings, users: Mapping[str, S3User]) -> dict[str, list[str]]:
    """Create each user (role `user`) unless it exists with its key and role; a user whose secret or role differs is
    updated. Returns the names created and updated."""
    existing = list_users(root)
    created, updated = [], []
    for name, user in users.items():
        found = existing.get(user.access_key)
        if found is None:
            fields = {"Access": user.access_key, "Secret": user.secret_key, "Role": USER_ROLE}
            _admin_request(root, "create-user", _xml("Account", fields))
            created.append(name)
        elif found != {"Secret": user.secret_key, "Role": USER_ROLE}:
            fields = {"Secret": user.secret_key, "Role": USER_ROLE}
            _admin_request(root, "update-user", _xml("MutableProps", fields), {"access": user.access_key})
            updated.append(name)
    return {"created": created, "updated": updated}


# --- everything, as root ---------------------------------------------------------------------------------------------


def ensure_policies(root: S3Settings, policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Put each bucket's policy unless it already has that one; returns the buckets whose policy was put."""
    from botocore.exceptions import ClientError

    from ml.clients import s3_client

    client = s3_client(root)
    put = []
    for bucket, policy in policies.items():
        try:
            current = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
        except ClientError as error:
            if error.response["Error"]["Code"] != "NoSuchBucketPolicy":
                raise
            current = None
        if current != policy:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
            put.append(bucket)
    return put


def ensure_users_and_policies(
    root: S3Settings, lake: LakeSettings, users: Mapping[str, S3User], mlflow_bucket: str = MLFLOW_BUCKET
) -> dict[str, Any]:
    """As root, on a server whose buckets exist: the users (`users`: name -> user, every one of S3_USERS), then the
    buckets' policies naming them. Idempotent."""
    missing = [name for name in S3_USERS if name not in users]
    if missing:
        raise ValueError(f"the S3 users {missing} have no keys")
    done = ensure_users(root, users)
    access_keys = {name: user.access_key for name, user in users.items()}
    policies = ensure_policies(root, bucket_policies(lake, access_keys, mlflow_bucket))
    return {"s3_users_created": done["created"], "s3_users_updated": done["updated"], "bucket_policies_put": policies}
