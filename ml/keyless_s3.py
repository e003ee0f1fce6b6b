"""A pyarrow S3 filesystem that signs with explicit keys in this process but pickles without them.

Ray Tune pickles its storage filesystem into the experiment state it writes to S3 (`tuner.pkl`) and into every trial
it ships to a worker. Unpickled, this filesystem takes its keys from the standard AWS chain of the process it lands in
(Ray workers get them through their runtime environment), so no secret is ever written to storage.
"""

from __future__ import annotations

from typing import Any

from pyarrow import fs

from ml.clients import arrow_s3_options
from ml.settings import S3Settings

# (endpoint, region) -> the settings with keys this process was given for it. Memory only: never pickled.
_KEYS_IN_THIS_PROCESS: dict[tuple[str | None, str], S3Settings] = {}


def keyless_s3_filesystem(s3: S3Settings) -> fs.PyFileSystem:
    if s3.access_key_id:
        _KEYS_IN_THIS_PROCESS[(s3.endpoint_url, s3.region)] = s3
    return fs.PyFileSystem(KeylessS3Handler(s3))


class KeylessS3Handler(fs.FileSystemHandler):
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

    def equals(self, other: Any) -> bool:
        return self == other

    def normalize_path(self, path: str) -> str:
        return str(self.inner.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> Any:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: fs.FileSelector) -> Any:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete every bucket of the S3 endpoint")

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.inner.open_append_stream(path, metadata=metadata)


def _keyless_from_endpoint(endpoint_url: str | None, region: str) -> KeylessS3Handler:
    known = _KEYS_IN_THIS_PROCESS.get((endpoint_url, region))
    if known is not None:
        return KeylessS3Handler(known)
    return KeylessS3Handler(S3Settings(endpoint_url=endpoint_url, region=region), with_keys=False)
