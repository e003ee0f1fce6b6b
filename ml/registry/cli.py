"""`python -m ml register` (register an evaluation and run the gate) and `python -m ml promote` (rollback)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ml.settings import Settings


def _context(settings: Settings) -> Any:
    from ml.registry.context import RegistryContext

    return RegistryContext(mlflow=settings.mlflow, s3=settings.s3, lake=settings.lake, kafka=settings.kafka)


def _mlflow_errors_as_runtime_errors(
    function: Callable[[argparse.Namespace, Settings], dict[str, Any]],
) -> Callable[[argparse.Namespace, Settings], dict[str, Any]]:
    """`python -m ml` reports RuntimeErrors as one clear line; MLflow's own exceptions become those."""

    def handler(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        try:
            return function(args, settings)
        except MlflowException as error:
            raise RuntimeError(f"MLflow at {settings.mlflow.tracking_uri}: {error.message}") from error

    return handler


@_mlflow_errors_as_runtime_errors
def _cli_register(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.clock import utc_now_iso
    from ml.registry.promote import register_and_promote
    from ml.registry.register import load_evaluation

    context = _context(settings)
    evaluation = load_evaluation(args.evaluation, context.s3_client)
    return register_and_promote(
        evaluation,
        context,
        dag_id=args.dag_id,
        dag_run_id=args.dag_run_id or f"manual__{utc_now_iso()}",
        code_version=args.code_version,
        metric=args.metric,
        margin=args.margin,
        is_backfill=args.backfill,
        allow_backfill_promotion=args.allow_backfill_promotion,
    )


@_mlflow_errors_as_runtime_errors
def _cli_promote(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from ml.registry.promote import rollback

    return rollback(_context(settings), args.model, args.version, reason=args.reason)


def register_cli(subparsers: Any) -> None:
    register = subparsers.add_parser("register", help="register an evaluated model and run the promotion gate")
    register.add_argument("--evaluation", required=True, help="evaluation result JSON: a file or an s3:// URI")
    register.add_argument("--dag-id", default="manual", help="lineage: the DAG (default: manual)")
    register.add_argument(
        "--dag-run-id",
        default=None,
        help="lineage and idempotency key: a second call with the same id returns the same version "
        "(default: manual__<now>)",
    )
    register.add_argument(
        "--code-version", default=None, help="lineage: code version (default: ml.lineage.code_version(), a source hash)"
    )
    register.add_argument("--metric", default=None, help="gate metric (default: the evaluation's metric)")
    register.add_argument("--margin", type=float, default=0.0, help="how much better than the champion (absolute)")
    register.add_argument("--backfill", action="store_true", help="this run is a backfill: never moves the champion")
    register.add_argument("--allow-backfill-promotion", action="store_true", help="let a backfill move the champion")
    register.set_defaults(handler=_cli_register)
    promote_parser = subparsers.add_parser("promote", help="move the champion alias to a version (rollback)")
    promote_parser.add_argument("--model", required=True, help="registered model name, e.g. DATASET-classification")
    promote_parser.add_argument("--version", required=True, help="the version that becomes champion")
    promote_parser.add_argument("--reason", default="manual rollback", help="recorded on the version and the event")
    promote_parser.set_defaults(handler=_cli_promote)
