"""`python -m ml events replay-uploads s3://raw/cars/`: notify again the objects under a prefix, for the uploads whose
notifications were lost (the S3 server drops them when Kafka is down: docs/PIPELINE.md, "S3 bucket notifications").

Each object under the prefix (modified at or after `--since`, when given) gets one notification in AWS's format on
ml.topics.S3_EVENTS, as the S3 server would have sent it (`eventSource` says it was replayed). The asset watcher then
treats them as uploads: raw_data_events starts one run per routed dataset. A replayed object that had already trained
is a new notification to the watcher, so its run starts and takes the skip path (check_for_existing_model: the same
data, the model exists), which is cheap.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from ml.settings import KafkaSettings, Settings
from ml.storage import S3Uri, list_keys
from ml.topics import S3_EVENTS

REPLAY_SOURCE = "mlops:replay"


def notification(bucket: str, listed: Mapping[str, Any], *, url_encode_keys: bool = False) -> bytes:
    """One object of an S3 listing as a bucket notification (one record), its time the object's LastModified.
    `url_encode_keys`: as AWS does (for a watcher reading AWS's notifications); the local S3 server does not."""
    modified: datetime = listed["LastModified"]
    record = {
        "eventVersion": "2.1",
        "eventSource": REPLAY_SOURCE,
        "eventTime": modified.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": "s3:ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": quote_plus(listed["Key"], safe="/") if url_encode_keys else listed["Key"],
                "size": int(listed["Size"]),
                "eTag": listed["ETag"],
            },
        },
    }
    return json.dumps({"Records": [record]}).encode()


def replay_uploads(
    prefix: S3Uri,
    s3_client: Any,
    kafka: KafkaSettings,
    *,
    since: datetime | None = None,
    url_encode_keys: bool = False,
    producer: Any = None,
) -> dict[str, Any]:
    """Send a notification for each object under `prefix` (modified at or after `since`); returns what was sent."""
    from ml.clients import close_quietly, kafka_producer

    listed = [obj for obj in list_keys(prefix, s3_client) if since is None or obj["LastModified"] >= since]
    own = producer is None
    producer = producer or kafka_producer(kafka, acks="all")
    try:
        for obj in listed:
            producer.send(S3_EVENTS.name, notification(prefix.bucket, obj, url_encode_keys=url_encode_keys))
        producer.flush()
    finally:
        if own:
            close_quietly(producer)
    return {"topic": S3_EVENTS.name, "prefix": str(prefix), "replayed": len(listed)}


def _since(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (e.g. 2026-12-03T08:00:00Z)")
    return moment


def cli_replay(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.clients import s3_client

    return replay_uploads(
        S3Uri.parse(args.prefix),
        s3_client(settings.s3),
        settings.kafka,
        since=args.since,
        url_encode_keys=args.url_encode_keys,
    )


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "replay-uploads", help="notify the objects under an S3 prefix again (uploads made while Kafka was down)"
    )
    parser.add_argument("prefix", help="s3://bucket/prefix/ (e.g. s3://raw/cars/)")
    parser.add_argument("--since", type=_since, help="only objects modified at or after this time (ISO, with zone)")
    parser.add_argument(
        "--url-encode-keys", action="store_true", help="encode keys as AWS does (a watcher of AWS notifications)"
    )
    parser.set_defaults(handler=cli_replay)
