"""`python -m ml STAGE ...`: every pipeline stage without Airflow. Each prints a JSON result on stdout and exits
non-zero with a clear message on failure."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from typing import Any

from ml.settings import Settings

# Each module adds its sub-commands in `register_cli(subparsers)`, setting `handler=fn(args, settings) -> dict | int |
# None` (and `writes_stdout=True` for a command whose stdout is its output). The settings are read from the
# environment here, once: this is the entry point.
# Heavy imports stay inside the handlers, so `--help` is fast.
STAGE_MODULES = (
    "ml.datasets",
    "ml.ingest.cli",
    "ml.preprocess.cli",
    "ml.scoring.cli",
    "ml.tune.cli",
    "ml.evaluate",
    "ml.registry.cli",
    "ml.events.cli",
    "ml.serve.cli",
    "ml.drift.cli",
    "ml.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml",
        description="Pipeline stages (S3 ingest -> Spark preprocess -> Ray Tune -> evaluate -> register -> Kafka) "
        "runnable without Airflow. Endpoints come from the environment (see `python -m stack env`).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGE_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        # Libraries print progress to stdout (Ray Tune's tables, MLflow's run links): keep stdout for the JSON result,
        # except for commands whose output is their stdout (`events tail`).
        writes_stdout = getattr(args, "writes_stdout", False)
        with contextlib.nullcontext() if writes_stdout else contextlib.redirect_stdout(sys.stderr):
            result: Any = args.handler(args, Settings.from_env(os.environ))
    except (ValueError, LookupError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    if isinstance(result, int):
        return result
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
