"""ml.tune.state against the real S3 server, through the signed keyless filesystem Tune's storage uses: a run killed
before Tune's first snapshot (tuner.pkl alone) starts over, one with a signed experiment state resumes, and one whose
state was written without the stack's key is refused, naming the file; and Ray's way of copying a folder through
it (many files on Arrow's IO thread pool) ends."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml.clients import keyless_arrow_filesystem
from ml.settings import Settings
from ml.storage import S3Uri, delete_prefix
from ml.tune.signing import SIGNATURE_SUFFIX, TamperedTuneState, signed_filesystem
from ml.tune.state import restorable

STATE = "experiment_state-2026-01-01_00-00-00.json"


def test_a_run_killed_before_its_first_snapshot_starts_over_and_only_a_signed_state_resumes(
    s3_client: Any, settings: Settings, unique_prefix: str
) -> None:
    bucket = settings.lake.lake_bucket
    path = f"{bucket}/{unique_prefix}/run"
    signed = signed_filesystem(keyless_arrow_filesystem(settings.s3), settings.ray.state_signing_key)
    try:
        with signed.open_output_stream(f"{path}/tuner.pkl") as stream:
            stream.write(b"not restorable alone")
        assert tune.Tuner.can_restore(path, storage_filesystem=signed)
        assert not restorable(path, signed)

        # An experiment state put there without the key (as anything that can write to the bucket could).
        s3_client.put_object(Bucket=bucket, Key=f"{unique_prefix}/run/{STATE}", Body=b"{}")
        with pytest.raises(TamperedTuneState, match=f"{path}/{STATE}: it has no valid signature"):
            restorable(path, signed)

        with signed.open_output_stream(f"{path}/{STATE}") as stream:
            stream.write(b"{}")
        assert restorable(path, signed)
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{unique_prefix}/run/")["Contents"]
        assert {o["Key"].rsplit("/", 1)[-1] for o in listed} >= {
            STATE + SIGNATURE_SUFFIX,
            "tuner.pkl" + SIGNATURE_SUFFIX,
        }
    finally:
        delete_prefix(S3Uri(bucket, unique_prefix), s3_client)


def test_many_files_copy_up_and_down_through_arrows_io_pool(
    s3_client: Any, settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    """What Ray does with a checkpoint or a trial folder (pyarrow.fs.copy_files, on Arrow's IO thread pool) with more
    files than that pool has threads: each signed write ends within the pool thread that closes it (S3 uploads in
    the writing thread, ml.clients), so the copy ends; with background uploads it waited forever."""
    import pyarrow as pa
    from pyarrow import fs

    signed = signed_filesystem(keyless_arrow_filesystem(settings.s3), settings.ray.state_signing_key)
    local = tmp_path / "checkpoint"
    local.mkdir()
    for number in range(4 * pa.io_thread_count()):
        (local / f"part-{number}.bin").write_bytes(bytes([number]) * 1000)
    folder = f"{settings.lake.lake_bucket}/{unique_prefix}/trial/checkpoint_000001"
    (tmp_path / "restored").mkdir()
    done = threading.Event()

    def copy_up_and_down() -> None:
        fs.copy_files(str(local), folder, destination_filesystem=signed)
        fs.copy_files(folder, str(tmp_path / "restored"), source_filesystem=signed)
        done.set()

    threading.Thread(target=copy_up_and_down, daemon=True).start()
    try:
        assert done.wait(120), "copy_files through the signed filesystem did not end"
        restored = sorted(path.name for path in (tmp_path / "restored").iterdir())
        assert restored == sorted(path.name for path in local.iterdir())
    finally:
        delete_prefix(S3Uri(settings.lake.lake_bucket, unique_prefix), s3_client)
