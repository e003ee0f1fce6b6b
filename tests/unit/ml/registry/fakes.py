"""In-memory stand-ins for the clients that ml.registry (and ml.predictor, ml.serve, ml.events) take as
arguments (the clock: tests.support.fake_clock, and SteppedClock for the lock's renewal thread): an S3 client with
conditional puts and deletes, and an MLflow client with registered model versions, tags and aliases. They behave like
the real ones where the code under test relies on it (error codes, ETags, MlflowException for a missing alias) and
nothing more."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fake_clock import FakeClock


class SteppedClock(FakeClock):
    """A FakeClock whose `sleep` returns only when the test says so (`step`), then moves the clock on by the pause.

    A background thread sleeping on it (the alias lock's renewal) runs exactly as often as the test steps it, and
    `step` returns once that thread is asleep again: no test waits for time to pass or races the thread. Only the
    thread under test may sleep on it (a sleep nobody steps blocks)."""

    def __init__(self, wall: float = 1_900_000_000.0, monotonic: float = 100.0) -> None:
        super().__init__(wall, monotonic)
        self._changed = threading.Condition()
        self._asleep = 0  # sleeps begun
        self._woken = 0  # sleeps let go

    def sleep(self, seconds: float) -> None:
        with self._changed:
            self._asleep += 1
            turn = self._asleep
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._woken >= turn)
        super().sleep(seconds)

    def step(self, *, then_asleep: bool = True) -> None:
        """Let the sleeping thread go on; with `then_asleep`, return when it sleeps again (else it is ending: join
        it)."""
        with self._changed:
            assert self._changed.wait_for(lambda: self._asleep > self._woken, timeout=_SYNC_S), "nobody is asleep"
            self._woken += 1
            self._changed.notify_all()
            if then_asleep:
                assert self._changed.wait_for(lambda: self._asleep > self._woken, timeout=_SYNC_S), "not asleep again"


_SYNC_S = 30.0  # a safety net against a test that hangs, never a timing: a thread is awaited, not time


def client_error(code: str, operation: str = "Operation", status: int = 400) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


class FakeS3:
    """A boto3 S3 client over a dict, with S3's conditional writes (`IfNoneMatch="*"`, `IfMatch=etag`).

    `before` hooks run before an operation (by name, e.g. "get_object"), once each: a test makes another client act
    between two steps of the code under test. `fail_with` makes every call of an operation raise."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.before: dict[str, list[Callable[[], None]]] = {}
        self.fail_with: dict[str, Exception] = {}
        self._versions = 0

    def _enter(self, operation: str, **kwargs: Any) -> None:
        self.calls.append((operation, kwargs))
        hooks = self.before.get(operation, [])
        if hooks:
            hooks.pop(0)()
        if operation in self.fail_with:
            raise self.fail_with[operation]

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: bytes | str,
        IfNoneMatch: str | None = None,
        IfMatch: str | None = None,
        ContentType: str | None = None,
    ) -> dict[str, Any]:
        self._enter("put_object", Bucket=Bucket, Key=Key, IfNoneMatch=IfNoneMatch, IfMatch=IfMatch)
        current = self.objects.get((Bucket, Key))
        if IfNoneMatch == "*" and current is not None:
            raise client_error("PreconditionFailed", "PutObject", 412)
        if IfMatch is not None:
            if current is None:
                raise client_error("NoSuchKey", "PutObject", 404)
            if current[1] != IfMatch:
                raise client_error("PreconditionFailed", "PutObject", 412)
        body = Body.encode() if isinstance(Body, str) else bytes(Body)
        self._versions += 1
        etag = '"' + hashlib.md5(body + str(self._versions).encode()).hexdigest() + '"'
        self.objects[(Bucket, Key)] = (body, etag)
        return {"ETag": etag}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._enter("get_object", Bucket=Bucket, Key=Key)
        if (Bucket, Key) not in self.objects:
            raise client_error("NoSuchKey", "GetObject", 404)
        body, etag = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(body), "ETag": etag}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._enter("head_object", Bucket=Bucket, Key=Key)
        if (Bucket, Key) not in self.objects:
            raise client_error("404", "HeadObject", 404)
        return {"ETag": self.objects[(Bucket, Key)][1]}

    def delete_object(self, *, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        self._enter("delete_object", Bucket=Bucket, Key=Key, IfMatch=IfMatch)
        current = self.objects.get((Bucket, Key))
        if IfMatch is not None and (current is None or current[1] != IfMatch):
            raise client_error("PreconditionFailed", "DeleteObject", 412)
        self.objects.pop((Bucket, Key), None)
        return {}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        fake = self

        class Paginator:
            def paginate(self, *, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                keys = sorted(key for bucket, key in fake.objects if bucket == Bucket and key.startswith(Prefix))
                return [{"Contents": [{"Key": key} for key in keys[i : i + 2]]} for i in range(0, len(keys), 2)] or [{}]

        return Paginator()

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self._enter("download_file", Bucket=bucket, Key=key)
        Path(filename).write_bytes(self.objects[(bucket, key)][0])

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        """Test set-up: an object with a file's bytes."""
        self.objects[(bucket, key)] = (path.read_bytes(), '"' + key + '"')

    def body(self, bucket: str, key: str) -> bytes:
        return self.objects[(bucket, key)][0]


@dataclass
class FakeVersion:
    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    status: str = "READY"
    source: str = ""
    run_id: str | None = None


class FakeMlflow:
    """An MlflowClient's registry calls over dicts. `on` hooks run before a method (by name), once each."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, str]] = {}
        self.versions: dict[tuple[str, str], FakeVersion] = {}
        self.created: list[tuple[str, str]] = []
        self.aliases: dict[tuple[str, str], str] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.on: dict[str, list[Callable[[], None]]] = {}
        self.fail_with: dict[str, Exception] = {}
        self.status_sequence: list[str] = []

    def _enter(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        hooks = self.on.get(method, [])
        if hooks:
            hooks.pop(0)()
        if method in self.fail_with:
            raise self.fail_with[method]

    @staticmethod
    def _missing(what: str) -> Exception:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        return MlflowException(f"{what} not found", error_code=RESOURCE_DOES_NOT_EXIST)

    def create_registered_model(self, name: str, tags: dict[str, str], description: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

        self._enter("create_registered_model", name, tags, description)
        if name in self.models:
            raise MlflowException(f"{name} exists", error_code=RESOURCE_ALREADY_EXISTS)
        self.models[name] = dict(tags)

    def create_model_version(self, name: str, *, source: str, run_id: str | None, tags: dict[str, str], **_: Any):
        self._enter("create_model_version", name, source, run_id, tags)
        # Like MLflow, a number is never reused, even after its version was deleted.
        number = str(1 + max((int(v) for model, v in [*self.versions, *self.created] if model == name), default=0))
        self.created.append((name, number))
        created = FakeVersion(name, number, dict(tags), source=source, run_id=run_id)
        self.versions[(name, number)] = created
        return created

    def add(self, name: str, version: str | int, **tags: str) -> FakeVersion:
        created = FakeVersion(name, str(version), dict(tags))
        self.versions[(name, str(version))] = created
        self.created.append((name, str(version)))
        return created

    def get_model_version(self, name: str, version: str) -> FakeVersion:
        self._enter("get_model_version", name, version)
        if (name, str(version)) not in self.versions:
            raise self._missing(f"{name} v{version}")
        found = self.versions[(name, str(version))]
        if self.status_sequence:
            found.status = self.status_sequence.pop(0)
        found.aliases = self._aliases_of(found)
        return found

    def get_model_version_by_alias(self, name: str, alias: str) -> FakeVersion:
        self._enter("get_model_version_by_alias", name, alias)
        if (name, alias) not in self.aliases:
            raise self._missing(f"alias {alias} of {name}")
        found = self.versions[(name, self.aliases[(name, alias)])]
        found.aliases = self._aliases_of(found)
        return found

    def _aliases_of(self, version: FakeVersion) -> list[str]:
        return [alias for (model, alias), v in self.aliases.items() if model == version.name and v == version.version]

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._enter("set_registered_model_alias", name, alias, version)
        self.aliases[(name, alias)] = str(version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._enter("delete_registered_model_alias", name, alias)
        self.aliases.pop((name, alias), None)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._enter("set_model_version_tag", name, version, key, value)
        self.versions[(name, str(version))].tags[key] = value

    def delete_model_version(self, name: str, version: str) -> None:
        self._enter("delete_model_version", name, version)
        del self.versions[(name, str(version))]
        for key in [key for key, v in self.aliases.items() if key[0] == name and v == str(version)]:
            del self.aliases[key]

    def search_model_versions(self, filter_string: str) -> list[FakeVersion]:
        """Understands the one filter the registry sends: name = '...' and tags.dag_run_id = '...'."""
        self._enter("search_model_versions", filter_string)
        import re

        match = re.fullmatch(r"name = '(.*)' and tags\.dag_run_id = '(.*)'", filter_string)
        assert match, filter_string
        name, run = match.groups()
        return [
            v for (model, _), v in sorted(self.versions.items()) if model == name and v.tags.get("dag_run_id") == run
        ]

    def tags_set(self, name: str, version: str) -> dict[str, str]:
        """The tags set on a version through set_model_version_tag, in order."""
        return {
            args[2]: args[3]
            for method, args in self.calls
            if method == "set_model_version_tag" and args[:2] == (name, version)
        }


def fake_context(
    mlflow: FakeMlflow | None = None,
    s3: FakeS3 | None = None,
    clock: FakeClock | None = None,
    published: list[tuple[Any, ...]] | None = None,
    **kwargs: Any,
) -> Any:
    """A RegistryContext on the fakes; every event is appended to `published` as (topic, payload, key, dag_run_id)."""
    from ml.registry.context import RegistryContext
    from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, S3Settings

    record = published if published is not None else []
    # The lock's renewal thread sleeps on the clock, and a FakeClock's sleep returns at once: a test that wants the
    # renewal passes a SteppedClock and lock_keep_renewed=True.
    kwargs.setdefault("lock_keep_renewed", False)
    context = RegistryContext(
        mlflow=MlflowSettings("http://mlflow.invalid"),
        s3=S3Settings(endpoint_url="http://s3.invalid"),
        lake=LakeSettings(),
        kafka=KafkaSettings("kafka.invalid:9092"),
        clock=clock or FakeClock(),
        publish=lambda topic, payload, key, dag_run_id: record.append((topic, payload, key, dag_run_id)),
        **kwargs,
    )
    # The clients are cached properties: the fakes take their place.
    context.__dict__["client"] = mlflow or FakeMlflow()
    context.__dict__["s3_client"] = s3 or FakeS3()
    return context
