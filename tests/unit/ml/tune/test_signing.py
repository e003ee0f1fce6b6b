"""ml.tune.signing on a local pyarrow filesystem (laid out as S3, bucket/key): every file written through the signed
filesystem gets a signature, every file read through it is checked before a byte is returned (changed content, a
changed or missing signature, a file moved from another path, another stack's key: TamperedTuneState naming it), the
signatures stay out of listings, copies and moves are signed for their new place, a task killed between the two
uploads of a file leaves it readable, a snapshot of Tune's folder uploads only the files that changed since this
filesystem object wrote them, and the filesystem pickles without its key."""

from __future__ import annotations

import json
import pickle
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pyarrow import fs

from ml.arrow_handler import DelegatingHandler
from ml.tune import signing
from ml.tune.signing import SIGNATURE_SUFFIX, TamperedTuneState, sign_tree, signed_filesystem

RUN = "lake/tune/d/s/run-1"
REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    """The plain filesystem under the signed one: what a writer without the key writes through."""
    filesystem = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    filesystem.create_dir(f"{RUN}/trial_a", recursive=True)
    return filesystem


@pytest.fixture
def signing_key() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def signed(storage: Any, signing_key: str) -> Any:
    return signed_filesystem(storage, signing_key)


def _write(filesystem: Any, path: str, content: bytes) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(content)


def _read(filesystem: Any, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.readall())


def _names(filesystem: Any, path: str, recursive: bool = False) -> list[str]:
    selector = fs.FileSelector(path, recursive=recursive)
    return sorted(info.path.removeprefix(f"{path}/") for info in filesystem.get_file_info(selector))


# -- signing on write, checking on read


def test_a_file_written_through_it_is_signed_stored_as_is_and_read_back(storage: Any, signed: Any) -> None:
    path = f"{RUN}/tuner.pkl"
    with signed.open_output_stream(path) as stream:
        stream.write(b"pickled ")
        stream.write(bytearray(b"state"))
    assert _read(storage, path) == b"pickled state", "the content itself is unchanged: other readers see the same"
    signature = json.loads(_read(storage, path + SIGNATURE_SUFFIX))
    assert signature["format"] == "mlops-tune-state-mac/v1" and len(signature["macs"]) == 1
    assert _read(signed, path) == b"pickled state"
    with signed.open_input_file(path) as random_access:  # what Tuner.restore opens tuner.pkl with
        assert (random_access.size(), random_access.read_at(5, 8)) == (13, b"state")


def test_signatures_stay_out_of_every_listing(storage: Any, signed: Any) -> None:
    _write(signed, f"{RUN}/experiment_state-x.json", b"{}")
    _write(signed, f"{RUN}/trial_a/result.json", b"{}")
    assert _names(storage, RUN) == ["experiment_state-x.json", f"experiment_state-x.json{SIGNATURE_SUFFIX}", "trial_a"]
    assert _names(signed, RUN) == ["experiment_state-x.json", "trial_a"]
    assert _names(signed, RUN, recursive=True) == ["experiment_state-x.json", "trial_a", "trial_a/result.json"]


@pytest.mark.parametrize("open_file", ["open_input_stream", "open_input_file"])
def test_changed_content_is_refused_naming_the_file(storage: Any, signed: Any, open_file: str) -> None:
    path = f"{RUN}/experiment_state-x.json"
    _write(signed, path, b'{"trials": []}')
    _write(storage, path, b'{"trials": ["planted"]}')
    with pytest.raises(TamperedTuneState, match=rf"{path}: its content does not match its signature") as refused:
        getattr(signed, open_file)(path)
    assert refused.value.path == path


def test_a_file_without_a_signature_is_refused(storage: Any, signed: Any) -> None:
    _write(storage, f"{RUN}/tuner.pkl", b"planted")
    with pytest.raises(
        TamperedTuneState, match=rf"{RUN}/tuner.pkl: it has no valid signature \(tuner.pkl{SIGNATURE_SUFFIX} is missing"
    ):
        signed.open_input_stream(f"{RUN}/tuner.pkl")
    with pytest.raises(FileNotFoundError):  # a missing file is missing, as on any filesystem
        signed.open_input_stream(f"{RUN}/absent.pkl")


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"not json",
        b'{"format": "mlops-tune-state-mac/v1", "macs": "0000"}',
        json.dumps({"format": "mlops-tune-state-mac/v1", "macs": ["0" * 64]}).encode(),
        json.dumps({"format": "something-else", "macs": ["0" * 64]}).encode(),
    ],
    ids=["empty", "not-json", "macs-not-a-list", "forged-mac", "other-format"],
)
def test_a_changed_signature_is_refused(storage: Any, signed: Any, signature: bytes) -> None:
    path = f"{RUN}/searcher-state-x.pkl"
    _write(signed, path, b"state")
    _write(storage, path + SIGNATURE_SUFFIX, signature)
    with pytest.raises(TamperedTuneState, match=path):
        signed.open_input_stream(path)


def test_a_signed_file_moved_to_another_path_is_refused(storage: Any, signed: Any) -> None:
    """The MAC covers the path: a genuine file and its genuine signature, copied elsewhere, do not match there."""
    _write(signed, f"{RUN}/trial_a/params.pkl", b"genuine")
    for name in ("params.pkl", "params.pkl" + SIGNATURE_SUFFIX):
        storage.copy_file(f"{RUN}/trial_a/{name}", f"{RUN}/{name.replace('params', 'tuner')}")
    with pytest.raises(TamperedTuneState, match=f"{RUN}/tuner.pkl: its content does not match"):
        signed.open_input_stream(f"{RUN}/tuner.pkl")


def test_state_signed_with_another_key_is_refused(storage: Any, signed: Any) -> None:
    _write(signed_filesystem(storage, secrets.token_urlsafe(32)), f"{RUN}/tuner.pkl", b"another stack's")
    with pytest.raises(TamperedTuneState, match=r"tuner\.pkl"):
        signed.open_input_stream(f"{RUN}/tuner.pkl")


def test_a_task_killed_between_the_two_uploads_leaves_a_readable_file(storage: Any, signed: Any) -> None:
    """The signature is written before the content and keeps the previous versions' MACs: killed in between, the
    file holds its previous version, which still matches. Three versions are kept, no more."""
    path = f"{RUN}/experiment_state-x.json"
    versions = [f'{{"snapshot": {n}}}'.encode() for n in range(5)]
    _write(signed, path, versions[0])
    _write(signed, path, versions[1])
    _write(storage, path, versions[0])  # the second upload never happened: the old content, the new signature
    assert _read(signed, path) == versions[0]
    for version in versions[2:]:
        _write(signed, path, version)
    assert _read(signed, path) == versions[4]
    _write(storage, path, versions[1])  # three versions later: no longer accepted
    with pytest.raises(TamperedTuneState):
        signed.open_input_stream(path)


# -- what Tune does with its storage filesystem


def test_checkpoints_copied_in_and_out_as_tune_does(storage: Any, signed: Any, tmp_path: Path) -> None:
    """Ray Train persists a checkpoint with pyarrow.fs.copy_files (local -> storage) and a resumed trial downloads it
    the same way (storage -> local): signed going up, checked coming down, signatures never downloaded."""
    local = tmp_path / "local-checkpoint"
    (local / "nested").mkdir(parents=True)
    (local / "model_state.pt").write_bytes(b"tensors")
    (local / "nested" / "model_config.json").write_text("{}")
    checkpoint = f"{RUN}/trial_a/checkpoint_000001"
    fs.copy_files(str(local), checkpoint, destination_filesystem=signed)
    assert f"model_state.pt{SIGNATURE_SUFFIX}" in _names(storage, checkpoint)

    fs.copy_files(checkpoint, str(tmp_path / "restored"), source_filesystem=signed)
    restored = sorted(p.relative_to(tmp_path / "restored").as_posix() for p in (tmp_path / "restored").rglob("*"))
    assert restored == ["model_state.pt", "nested", "nested/model_config.json"]

    _write(storage, f"{checkpoint}/model_state.pt", b"planted tensors")
    with pytest.raises(TamperedTuneState, match=f"{checkpoint}/model_state.pt"):
        fs.copy_files(checkpoint, str(tmp_path / "again"), source_filesystem=signed)


def test_copies_and_moves_are_checked_then_signed_for_their_new_place(storage: Any, signed: Any) -> None:
    _write(signed, f"{RUN}/trial_a/result.json", b"{}")
    signed.copy_file(f"{RUN}/trial_a/result.json", f"{RUN}/copy.json")
    assert _read(signed, f"{RUN}/copy.json") == b"{}"
    fs.copy_files(f"{RUN}/copy.json", f"{RUN}/copied.json", source_filesystem=signed, destination_filesystem=signed)
    assert _read(signed, f"{RUN}/copied.json") == b"{}"
    signed.move(f"{RUN}/trial_a", f"{RUN}/trial_b")
    assert _read(signed, f"{RUN}/trial_b/result.json") == b"{}"
    assert _names(storage, f"{RUN}/trial_b") == ["result.json", f"result.json{SIGNATURE_SUFFIX}"]
    assert storage.get_file_info(f"{RUN}/trial_a").type == fs.FileType.NotFound
    signed.delete_file(f"{RUN}/copy.json")
    assert not [name for name in _names(storage, RUN) if name.startswith("copy.json")], "the signature goes too"
    _write(storage, f"{RUN}/planted.json", b"{}")
    with pytest.raises(TamperedTuneState, match=r"planted\.json"):
        signed.copy_file(f"{RUN}/planted.json", f"{RUN}/laundered.json")
    with pytest.raises(OSError, match="appending"):
        signed.open_append_stream(f"{RUN}/copied.json")


def test_sign_tree_signs_what_a_folder_holds(storage: Any, signed: Any, signing_key: str) -> None:
    _write(storage, f"{RUN}/tuner.pkl", b"written before signing")
    _write(storage, f"{RUN}/trial_a/result.json", b"{}")
    assert sign_tree(storage, RUN, signing_key) == [f"{RUN}/trial_a/result.json", f"{RUN}/tuner.pkl"]
    assert _read(signed, f"{RUN}/tuner.pkl") == b"written before signing"
    _write(storage, f"{RUN}/tuner.pkl", b"changed after signing")
    with pytest.raises(TamperedTuneState):
        signed.open_input_stream(f"{RUN}/tuner.pkl")


# -- Tune's snapshots: the unchanged files of a folder are not uploaded again


class _CountingHandler(DelegatingHandler):
    """The plain filesystem, counting the files opened for writing per path (content and signatures alike) and
    failing the next content upload when told to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: Counter[str] = Counter()
        self.fail_next_content = False

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def get_type_name(self) -> str:
        return "counting"

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self.writes[path] += 1
        if self.fail_next_content and not path.endswith(SIGNATURE_SUFFIX):
            self.fail_next_content = False
            raise OSError(f"upload of {path} failed")
        return self.inner.open_output_stream(path, metadata=metadata)


@pytest.fixture
def counted(storage: Any) -> _CountingHandler:
    return _CountingHandler(storage)


def test_a_snapshot_uploads_only_what_changed_since_this_filesystem_wrote_it(
    storage: Any, counted: _CountingHandler, signing_key: str, tmp_path: Path
) -> None:
    """Tune syncs its whole driver folder at every snapshot (pyarrow.fs.copy_files): what this filesystem object
    wrote before with the same content is neither signed nor uploaded again; a changed file is, and reads back."""
    signed = signed_filesystem(fs.PyFileSystem(counted), signing_key)
    folder = tmp_path / "driver_artifacts"
    (folder / "trial_a").mkdir(parents=True)
    (folder / "trial_a" / "params.json").write_text('{"lr": 0.1}')
    (folder / "experiment_state.json").write_text('{"snapshot": 1}')
    fs.copy_files(str(folder), RUN, destination_filesystem=signed)
    first = dict(counted.writes)
    assert sum(first.values()) == 4  # two files, each with its signature

    (folder / "experiment_state.json").write_text('{"snapshot": 2}')
    fs.copy_files(str(folder), RUN, destination_filesystem=signed)
    changed = {path: count - first.get(path, 0) for path, count in counted.writes.items() if count != first.get(path)}
    state = f"{RUN}/experiment_state.json"
    assert changed == {state: 1, f"{state}{SIGNATURE_SUFFIX}": 1}
    assert _read(signed, state) == b'{"snapshot": 2}' and _read(signed, f"{RUN}/trial_a/params.json") == b'{"lr": 0.1}'

    # Another filesystem object (another process's: a pickled copy starts empty too) knows nothing of these uploads.
    again = signed_filesystem(fs.PyFileSystem(counted), signing_key)
    before = sum(counted.writes.values())
    _write(again, state, b'{"snapshot": 2}')
    assert sum(counted.writes.values()) == before + 2


def test_a_deleted_moved_or_failed_file_is_uploaded_again(
    storage: Any, counted: _CountingHandler, signing_key: str
) -> None:
    signed = signed_filesystem(fs.PyFileSystem(counted), signing_key)
    path = f"{RUN}/trial_a/result.json"
    for forget in (
        lambda: signed.delete_file(path),
        lambda: signed.delete_dir(f"{RUN}/trial_a"),
        lambda: signed.delete_dir_contents(RUN),
        lambda: signed.move(f"{RUN}/trial_a", f"{RUN}/trial_b"),
    ):
        _write(signed, path, b"{}")
        forget()
        storage.create_dir(f"{RUN}/trial_a")  # S3 needs no folders; the local filesystem under the test does
        before = counted.writes[path]
        _write(signed, path, b"{}")
        assert counted.writes[path] == before + 1
        assert _read(signed, path) == b"{}"

    counted.fail_next_content = True
    with pytest.raises(OSError, match="failed"):
        _write(signed, path, b'{"epoch": 2}')
    _write(signed, path, b'{"epoch": 2}')  # uploaded this time: a failed upload is not remembered as done
    assert _read(signed, path) == b'{"epoch": 2}'


# -- the key


def test_no_key_or_a_short_one_is_refused(storage: Any) -> None:
    with pytest.raises(ValueError, match="no Tune state signing key configured"):
        signed_filesystem(storage, None)
    with pytest.raises(ValueError, match="at least 32 characters"):
        signed_filesystem(storage, "short")


def test_the_filesystem_pickles_without_its_key(storage: Any, signed: Any, signing_key: str) -> None:
    """Tune pickles its storage filesystem into tuner.pkl and the experiment state in S3, and into every trial it
    ships to a worker: the pickle names the key by its id only."""
    _write(signed, f"{RUN}/tuner.pkl", b"state")
    pickled = pickle.dumps(signed)
    assert signing_key.encode() not in pickled
    copy = pickle.loads(pickled)
    assert copy == signed and _read(copy, f"{RUN}/tuner.pkl") == b"state"  # this process knows the key

    # A process that was never given the key (and has no Ray cluster to find it in) unpickles it, and refuses to use it.
    code = (
        "import pickle, sys\n"
        "filesystem = pickle.loads(sys.stdin.buffer.read())\n"
        "try:\n"
        f"    filesystem.open_input_stream({RUN + '/tuner.pkl'!r})\n"
        "except RuntimeError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=pickled, cwd=REPO, capture_output=True, check=True, timeout=120
    )
    assert b"RuntimeError the Tune state signing key" in done.stdout and b"is not known" in done.stdout, done


def test_a_worker_finds_the_key_in_rays_key_value_store(
    storage: Any, signing_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Tune worker does: its unpickled filesystem finds the key the driver shared, by id (and only a value
    whose id matches)."""
    import ray
    from ray.experimental import internal_kv

    identity = signing.key_id(signing_key.encode())
    store: dict[tuple[str, str], bytes] = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(internal_kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(
        internal_kv,
        "_internal_kv_put",
        lambda key, value, overwrite=True, namespace=None: store.update({(namespace, key): value}) or True,
    )
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key, namespace=None: store.get((namespace, key)))
    monkeypatch.setattr(signing, "_KEYS", {})  # a fresh worker process

    signing.share_key_with_ray(signing_key)
    assert store == {(signing.KEY_NAMESPACE, identity): signing_key.encode()}
    monkeypatch.setattr(signing, "_KEYS", {})
    worker_copy = pickle.loads(pickle.dumps(fs.PyFileSystem(signing.SignedStateHandler(storage, identity))))
    _write(worker_copy, f"{RUN}/trial_a/checkpoint.pt", b"tensors")  # signs with the key found in the store
    assert _read(signed_filesystem(storage, signing_key), f"{RUN}/trial_a/checkpoint.pt") == b"tensors"

    store[(signing.KEY_NAMESPACE, identity)] = secrets.token_urlsafe(32).encode()  # a value that is not that key
    monkeypatch.setattr(signing, "_KEYS", {})
    with pytest.raises(RuntimeError, match="is not known"):
        worker_copy.open_input_stream(f"{RUN}/trial_a/checkpoint.pt")


def test_the_refusal_pickles_as_ray_ships_a_trials_error() -> None:
    error = pickle.loads(pickle.dumps(TamperedTuneState("lake/x/tuner.pkl", "it has no valid signature")))
    assert (error.path, error.reason) == ("lake/x/tuner.pkl", "it has no valid signature")
    assert str(error).startswith(
        "refusing to read Tune state lake/x/tuner.pkl: it has no valid signature. Nothing of it"
    )
