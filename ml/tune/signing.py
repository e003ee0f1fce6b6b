"""Signed Tune state: a search's folder in S3 is written and read only through a filesystem that signs every file it
writes and checks every file it reads, so that a retried task restores only state this stack wrote.

Why: `Tuner.restore` unpickles `tuner.pkl`, the experiment state and the searcher state, and trials load their
checkpoints; anything that could write under `lake/tune/` could otherwise plant pickled code that runs on the next
retry. With `signed_filesystem` as Tune's storage filesystem:

  * a file's signature is HMAC-SHA256, with the stack's key (`RaySettings.state_signing_key`), over its full path and
    its content: a changed file, one moved from another path, one written without the key (or with another stack's
    key) does not match. It is kept in a sidecar object, `<file>.mlops-signature` (pyarrow's S3 filesystem writes no
    user metadata), which the filesystem's listings leave out: Tune never sees one;
  * writing: the content is buffered (a spooled temporary file) while its MAC is computed; on close the sidecar is
    written first, then the content. The sidecar keeps the MACs of the file's two previous versions too, so that a
    task killed between the two uploads leaves a file that still matches (the previous version), never a false alarm.
    (Accepting an earlier version of the same file allows at most a roll-back to state this stack wrote itself.)
    The inner S3 filesystem uploads in the writing thread (`background_writes=False`, ml.clients): pyarrow.fs.copy_files
    closes this Python stream on a thread of Arrow's IO pool, where waiting for a background upload deadlocks;
  * rewriting: Tune uploads its whole driver folder (the experiment state, the searcher's, and every trial's params
    and result logs) at each state snapshot, and `CheckpointConfig(num_to_keep)` forces a snapshot every few
    checkpoints. A file this filesystem object has already published with the same MAC (so the same content) is not
    uploaded again: at 8 trials most of the folder is unchanged between snapshots (B2 in bench/README.md). Deleting or
    moving a path forgets what was published under it. A file changed behind this process's back since it published
    it stays as it is until its content changes here (and a restore refuses it, as any changed file);
  * reading: the whole content is read and checked before a byte of it is returned; a file without a signature, or
    with one that does not match, raises `TamperedTuneState` naming it, so nothing of it is ever unpickled.

The key is never pickled. Tune pickles its storage filesystem into the state it writes to S3 and into every trial it
ships to a worker: the pickle carries the key's id (a hash of it) only, and a process finds the key by that id, in
its own registry (`signed_filesystem` registers it) or in the Ray cluster's internal key-value store, where the
driver puts it once connected (`share_key_with_ray`; Tune keeps its registered trainables there too). Whoever holds
the cluster's token can read it there, as they can read the S3 keys of the job's runtime environment.

`sign_tree` signs what is in a folder as it is: for tests and for migrating state written before signing, never on a
path that an untrusted writer may have touched.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import posixpath
import threading
from collections.abc import Iterator
from tempfile import SpooledTemporaryFile
from typing import IO, Any

import pyarrow as pa
from pyarrow import fs

from ml.arrow_handler import DelegatingHandler

SIGNATURE_SUFFIX = ".mlops-signature"
MIN_KEY_LENGTH = 32
KEY_NAMESPACE = "mlops_tune_state_keys"  # where the driver puts the key in Ray's internal key-value store
NO_KEY = (
    "no Tune state signing key configured: set MLOPS_TUNE_STATE_KEY for `python -m ml` (the local stack's: "
    "`python -m stack secret MLOPS_TUNE_STATE_KEY`), or the `state-signing-secret` extra of the Airflow connection "
    "ray_default; a search never writes or restores unsigned state"
)

_MAC_DOMAIN = b"mlops-tune-state/v1\0"
_MACS_KEPT = 3  # the current version's MAC and the previous two (see the module docstring)
_SIGNATURE_FORMAT = "mlops-tune-state-mac/v1"
_MAX_SIGNATURE_BYTES = 64 * 1024
_CHUNK = 8 * 1024 * 1024
_SPOOL_IN_MEMORY = 32 * 1024 * 1024

# key id -> key, for the keys this process was given or found. Memory only: never pickled.
_KEYS: dict[str, bytes] = {}


class TamperedTuneState(RuntimeError):
    """A file of a search's Tune state is not signed with this stack's key, or does not match its signature."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both, so that the error pickles (Ray ships a trial's error to the driver)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return (
            f"refusing to read Tune state {self.path}: {self.reason}. Nothing of it was loaded: Tune state is "
            "restored only when this stack's key signed it. Start a new run (a new run name); only a folder known to "
            "be this stack's own, written before signing, may be signed once with ml.tune.signing.sign_tree"
        )


def _key_bytes(key: str | None) -> bytes:
    if not key:
        raise ValueError(NO_KEY)
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"the Tune state signing key must be at least {MIN_KEY_LENGTH} characters long")
    return key.encode()


def key_id(key: bytes) -> str:
    """The name a key goes by in pickles and in Ray's key-value store: a hash that reveals nothing of the key."""
    return hashlib.sha256(b"mlops-tune-state-key-id\0" + key).hexdigest()[:32]


def signed_filesystem(inner: fs.FileSystem, key: str | None) -> fs.PyFileSystem:
    """`inner` (Tune's S3 filesystem) signing what it writes and checking what it reads with `key`; ValueError
    without a key."""
    secret = _key_bytes(key)
    identity = key_id(secret)
    _KEYS[identity] = secret
    return fs.PyFileSystem(SignedStateHandler(inner, identity))


def share_key_with_ray(key: str | None) -> None:
    """Put the key into the connected Ray cluster's internal key-value store, where Tune's workers (and, through Ray
    Client, the remote Tuner) find it by its id. Nothing to do without a Ray connection."""
    import ray

    if not ray.is_initialized():
        return
    from ray.experimental.internal_kv import _internal_kv_put

    secret = _key_bytes(key)
    _internal_kv_put(key_id(secret), secret, overwrite=True, namespace=KEY_NAMESPACE)


def _find_key(identity: str) -> bytes:
    known = _KEYS.get(identity)
    if known is not None:
        return known
    import ray

    if ray.is_initialized():
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        found = _internal_kv_get(identity, namespace=KEY_NAMESPACE) if _internal_kv_initialized() else None
        if found and key_id(found) == identity:
            _KEYS[identity] = found
            return bytes(found)
    raise RuntimeError(
        f"the Tune state signing key {identity} is not known in this process nor in its Ray cluster: the search's "
        "driver registers it (ml.tune.signing.signed_filesystem) and shares it with Ray once connected"
    )


def _canonical(path: str) -> str:
    return posixpath.normpath(path).lstrip("/")


def _new_mac(key: bytes, path: str) -> Any:
    """The MAC of a file at `path`, to be fed its content."""
    name = _canonical(path).encode()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(_MAC_DOMAIN + len(name).to_bytes(8, "big") + name)
    return mac


def _signature_path(path: str) -> str:
    return path.rstrip("/") + SIGNATURE_SUFFIX


def _copy(source: Any, target: Any | None, mac: Any = None) -> None:
    """Copy a stream in chunks, feeding each to `mac` too (`target` None: only to the MAC)."""
    while chunk := source.read(_CHUNK):
        if mac is not None:
            mac.update(chunk)
        if target is not None:
            target.write(chunk)


class SignedStateHandler(DelegatingHandler):
    """Delegates to `inner`, signing every file written and checking every file read (the module docstring). Pickles
    as `inner` and the key's id."""

    def __init__(self, inner: fs.FileSystem, identity: str) -> None:
        self.inner = inner
        self.key_id = identity
        # What this object has published: canonical path -> MAC (not pickled: a copy in another process starts empty).
        self._published: dict[str, str] = {}
        self._published_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return SignedStateHandler, (self.inner, self.key_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignedStateHandler) and other.key_id == self.key_id and other.inner == self.inner

    def __hash__(self) -> int:
        return hash(self.key_id)

    # -- signing and checking

    def _stored_macs(self, path: str) -> list[str]:
        """The MACs the signature of `path` accepts ([] when it has none or an unreadable one)."""
        try:
            with self.inner.open_input_stream(_signature_path(path)) as stream:
                text = stream.read(_MAX_SIGNATURE_BYTES + 1)
        except FileNotFoundError:
            return []
        try:
            document = json.loads(text) if len(text) <= _MAX_SIGNATURE_BYTES else {}
        except ValueError:
            return []
        if not isinstance(document, dict) or document.get("format") != _SIGNATURE_FORMAT:
            return []
        macs = document.get("macs")
        return [m for m in macs if isinstance(m, str)] if isinstance(macs, list) else []

    def _checked(self, path: str) -> pa.NativeFile:
        """The content of `path`, read whole and returned only when its MAC is one its signature accepts."""
        key = _find_key(self.key_id)
        spool: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        try:
            mac = _new_mac(key, path)
            with self.inner.open_input_stream(path) as source:  # FileNotFoundError as usual for a missing file
                _copy(source, spool, mac)
            accepted = self._stored_macs(path)
            if not accepted:
                name = f"{posixpath.basename(path)}{SIGNATURE_SUFFIX}"
                raise TamperedTuneState(path, f"it has no valid signature ({name} is missing or unreadable)")
            digest = mac.hexdigest()
            if not any(hmac.compare_digest(digest, expected) for expected in accepted):
                raise TamperedTuneState(
                    path, "its content does not match its signature (changed, moved here, or signed with another key)"
                )
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return pa.PythonFile(spool, mode="r")

    def _publish(self, path: str, content: IO[bytes], mac: str, metadata: Any) -> None:
        """Write the signature (with the previous versions' MACs), then the content; nothing when this object has
        published the same content at `path` already."""
        key = _canonical(path)
        with self._published_lock:
            if self._published.get(key) == mac:
                return
        self._sign(path, [mac, *[m for m in self._stored_macs(path) if m != mac]][:_MACS_KEPT])
        content.seek(0)
        with self.inner.open_output_stream(path, metadata=metadata) as stream:
            _copy(content, stream)
        with self._published_lock:
            self._published[key] = mac

    def _forget(self, path: str) -> None:
        """Forget what was published at `path` and under it (it is being deleted or moved)."""
        key = _canonical(path)
        with self._published_lock:
            for published in [p for p in self._published if p == key or p.startswith(f"{key}/")]:
                del self._published[published]

    def _sign(self, path: str, macs: list[str]) -> None:
        with self.inner.open_output_stream(_signature_path(path)) as stream:
            stream.write(json.dumps({"format": _SIGNATURE_FORMAT, "macs": macs}).encode())

    def _files_under(self, path: str) -> Iterator[fs.FileInfo]:
        for info in self.get_file_info_selector(fs.FileSelector(path, recursive=True)):
            if info.type == fs.FileType.File:
                yield info

    # -- the FileSystemHandler interface

    def get_type_name(self) -> str:
        return f"signed+{self.inner.type_name}"

    def get_file_info_selector(self, selector: fs.FileSelector) -> Any:
        return [info for info in self.inner.get_file_info(selector) if not info.path.endswith(SIGNATURE_SUFFIX)]

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete everything under the root of Tune's storage")

    def delete_dir(self, path: str) -> None:
        self._forget(path)
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._forget(path)
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_file(self, path: str) -> None:
        self._forget(path)
        self.inner.delete_file(path)
        try:
            self.inner.delete_file(_signature_path(path))
        except FileNotFoundError:
            pass

    def copy_file(self, src: str, dest: str) -> None:
        # The signature names the path: the copy is checked, then signed for its new place.
        with self._checked(src) as source, self.open_output_stream(dest, None) as target:
            _copy(source, target)

    def move(self, src: str, dest: str) -> None:
        self._forget(src)
        if self.inner.get_file_info(src).type == fs.FileType.Directory:
            for info in list(self._files_under(src)):
                target = dest.rstrip("/") + info.path[len(src.rstrip("/")) :]
                self.inner.create_dir(posixpath.dirname(target), recursive=True)
                self.copy_file(info.path, target)
            self.inner.delete_dir(src)
        else:
            self.copy_file(src, dest)
            self.delete_file(src)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._checked(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._checked(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_SigningWriter(self, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        raise OSError(f"appending to {path} is not supported: a signed file is written whole")


class _SigningWriter(io.RawIOBase):
    """What a signed file's writer writes to: a spooled buffer and the MAC; `close` publishes both."""

    def __init__(self, handler: SignedStateHandler, path: str, metadata: Any) -> None:
        super().__init__()
        self._handler, self._path, self._metadata = handler, path, metadata
        self._mac = _new_mac(_find_key(handler.key_id), path)
        self._buffer: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._mac.update(view)
        self._buffer.write(view)
        self._written += len(view)
        return len(view)

    def tell(self) -> int:
        return self._written

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._handler._publish(self._path, self._buffer, self._mac.hexdigest(), self._metadata)
        finally:
            self._buffer.close()
            super().close()


def sign_tree(filesystem: fs.FileSystem, root: str, key: str | None) -> list[str]:
    """Sign every file under `root` of `filesystem` (a plain one: what is there is signed as it is) with `key`;
    return the paths signed. For tests and migrations only: it vouches for whatever the folder holds."""
    secret = _key_bytes(key)
    handler = SignedStateHandler(filesystem, key_id(secret))
    signed = []
    for info in list(handler._files_under(root)):
        mac = _new_mac(secret, info.path)
        with filesystem.open_input_stream(info.path) as source:
            _copy(source, None, mac)
        handler._sign(info.path, [mac.hexdigest()])
        signed.append(info.path)
    return signed
