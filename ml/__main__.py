"""`python -m ml STAGE ...`: every pipeline stage without Airflow. Each prints a JSON result on stdout and exits
non-zero with a clear message on failure."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from typing import Any

# Each module adds its sub-commands in `register_cli(subparsers)`, setting `handler=fn(args) -> dict | None` (and
# `writes_stdout=True` for a command whose stdout is its output).
# Heavy imports stay inside the handlers, so `--help` is fast.
STAGE_MODULES = (
    "ml.datasets",
    "ml.ingest",
    "ml.preprocess",
    "ml.tune",
    "ml.evaluate",
    "ml.registry",
    "ml.events",
    "ml.serve",
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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register_cli(subparsers)
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
            result: Any = args.handler(args)
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
