"""`python -m ml monitor`: the streaming drift monitor (ml.drift.stream) on the serving topic."""

from __future__ import annotations

import argparse
from typing import Any

from ml.drift.window import DEFAULT_MIN_ROWS, DEFAULT_PSI_THRESHOLD, DriftThresholds
from ml.settings import Settings
from ml.topics import SERVING_METRICS


def _cli_monitor(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.drift.monitor import run_monitor
    from ml.drift.stream import MonitorConfig
    from ml.storage import drift_checkpoint_uri

    config = MonitorConfig(
        checkpoint_uri=args.checkpoint_uri or str(drift_checkpoint_uri(settings.lake)),
        topic=args.topic,
        window=args.window,
        watermark=args.watermark,
        trigger=args.trigger,
        once=args.once,
        starting_offsets=args.starting_offsets,
        thresholds=DriftThresholds(psi=args.psi_threshold, min_rows=args.min_rows),
        ui_port=args.ui_port,
    )
    return run_monitor(settings, config)


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="the streaming drift monitor: live request values against the training distributions -> mlops.drift.v1",
    )
    parser.add_argument("--topic", default=SERVING_METRICS.name, help="the serving-metrics topic to read")
    parser.add_argument("--window", default="1 minute", help="event-time window per verdict (a Spark duration)")
    parser.add_argument("--watermark", default="30 seconds", help="how late a request may arrive and still count")
    parser.add_argument("--trigger", default="1 minute", help="how often a micro-batch runs")
    parser.add_argument("--once", action="store_true", help="process what is on the topic, then stop")
    parser.add_argument("--checkpoint-uri", default=None, help="S3 URI of the checkpoint (default: s3://LAKE/monitor/)")
    parser.add_argument(
        "--starting-offsets", default="earliest", help="where a first start reads from: earliest or latest"
    )
    parser.add_argument(
        "--psi-threshold", type=float, default=DEFAULT_PSI_THRESHOLD, help="PSI at which a feature drifts"
    )
    parser.add_argument("--min-rows", type=int, default=DEFAULT_MIN_ROWS, help="rows a window needs for a verdict")
    parser.add_argument("--ui-port", type=int, default=None, help="Spark's UI port (default: 4040 or the next free)")
    parser.set_defaults(handler=_cli_monitor)
