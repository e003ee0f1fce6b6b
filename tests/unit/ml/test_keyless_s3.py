"""ml.keyless_s3: the filesystem Ray Tune pickles into its state signs with the keys it was given, and pickles
without them; unpickled, it signs with the keys this process was given for that endpoint, else the process's chain."""

from __future__ import annotations

import pickle

import pytest

from ml import clients
from ml.keyless_s3 import KeylessS3Handler
from ml.settings import S3Settings
from tests.unit.ml.test_clients import keyed


def test_the_keyless_filesystem_pickles_without_its_keys() -> None:
    s3 = keyed()
    filesystem = clients.keyless_arrow_filesystem(s3)
    data = pickle.dumps(filesystem)
    for secret in (s3.access_key_id, s3.secret_access_key, s3.session_token):
        assert secret is not None and secret.encode() not in data
    # (the plain filesystem does carry them: it must never be pickled into storage)
    assert s3.secret_access_key.encode() in pickle.dumps(clients.arrow_filesystem(s3))  # type: ignore[union-attr]
    restored = pickle.loads(data)
    assert restored.type_name == "py::s3"
    handler = restored.handler
    assert isinstance(handler, KeylessS3Handler)
    assert handler.endpoint == S3Settings(endpoint_url="http://127.0.0.1:9000", region="eu-west-3")
    # equal to the original: Ray Tune compares the storage filesystem of a restored experiment
    assert filesystem.equals(restored)


def test_the_keyless_filesystem_refuses_to_empty_the_endpoint() -> None:
    filesystem = clients.keyless_arrow_filesystem(keyed())
    with pytest.raises(OSError, match="refusing to delete every bucket"):
        filesystem.delete_dir_contents("/", accept_root_dir=True)


def test_unpickled_where_its_keys_were_given_it_signs_with_them() -> None:
    """The Tune driver unpickles the checkpoints its workers send back: it must not need AWS variables for them."""
    s3 = keyed()
    restored = pickle.loads(pickle.dumps(clients.keyless_arrow_filesystem(s3)))
    assert s3.secret_access_key is not None
    assert s3.secret_access_key.encode() in pickle.dumps(restored.handler.inner)  # the inner S3FileSystem has them


def test_unpickled_in_another_process_it_takes_that_process_chain() -> None:
    import subprocess
    import sys

    s3 = keyed()
    data = pickle.dumps(clients.keyless_arrow_filesystem(s3))
    code = (
        "import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); "
        "sys.stdout.buffer.write(pickle.dumps(fs.handler.inner))"
    )
    inner = subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    ).stdout
    assert s3.secret_access_key is not None and s3.secret_access_key.encode() not in inner
