"""A pyarrow S3 filesystem that signs with explicit keys in this process but pickles without them.

Ray Tune pickles its storage filesystem into the experiment state it writes to S3 (`tuner.pkl`) and into every trial
it ships to a worker. Unpickled, this filesystem takes its keys from the standard AWS chain of the process it lands in
(Ray workers get them through their runtime environment), so no secret is ever written to storage.
"""

from __future__ import annotations

from typing import Any

from pyarrow import fs

from ml.arrow_handler import DelegatingHandler
from ml.clients import arrow_s3_options
from ml.settings import S3Settings

# (endpoint, region) -> the settings with keys this process was given for it. Memory only: never pickled.
_KEYS_IN_THIS_PROCESS: dict[tuple[str | None, str], S3Settings] = {}


def keyless_s3_filesystem(s3: S3Settings) -> fs.PyFileSystem:
    if s3.access_key_id:
        _KEYS_IN_THIS_PROCESS[(s3.endpoint_url, s3.region)] = s3
    return fs.PyFileSystem(KeylessS3Handler(s3))


class KeylessS3Handler(DelegatingHandler):
    """Delegates every call to an S3FileSystem; its pickle carries the endpoint and region only."""

    def __init__(self, s3: S3Settings, *, with_keys: bool = True) -> None:
        self.endpoint = S3Settings(endpoint_url=s3.endpoint_url, region=s3.region)
        self.inner = fs.S3FileSystem(**arrow_s3_options(s3, with_keys=with_keys))

    def __reduce__(self) -> tuple[Any, ...]:
        return _keyless_from_endpoint, (self.endpoint.endpoint_url, self.endpoint.region)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeylessS3Handler) and other.endpoint == self.endpoint

    def __hash__(self) -> int:
        return hash(self.endpoint)

    def get_type_name(self) -> str:
        return "s3"

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete every bucket of the S3 endpoint")


def _keyless_from_endpoint(endpoint_url: str | None, region: str) -> KeylessS3Handler:
    known = _KEYS_IN_THIS_PROCESS.get((endpoint_url, region))
    if known is not None:
        return KeylessS3Handler(known)
    return KeylessS3Handler(S3Settings(endpoint_url=endpoint_url, region=region), with_keys=False)
