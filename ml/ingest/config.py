"""What an ingest is asked to do and what it produced."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IngestConfig:
    raw_uri: str
    dataset: str
    target: str
    task: str | None = None  # inferred from the target when None
    max_bad_share: float = 0.01  # share of unparseable values a numeric column may have (they become missing)
    allow_schema_drift: bool = False


@dataclass
class IngestResult:
    dataset: str
    snapshot_id: str
    snapshot_uri: str
    manifest_uri: str
    rows: int
    task: str
    target: str
    created: bool  # False when the same content was already snapshotted
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
