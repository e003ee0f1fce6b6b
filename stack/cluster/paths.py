"""What the cluster's services share: the virtualenv's programs, the stack folder of a service's environment and the
classpath files that `make tools` writes."""

from __future__ import annotations

from pathlib import Path

from stack.config import REPO_ROOT, StackPaths
from stack.process import StackError

VENV_BIN = REPO_ROOT / ".venv" / "bin"


def env_paths(env: dict[str, str]) -> StackPaths:
    return StackPaths(Path(env["MLOPS_STACK_DIR"]))


def classpath_file(path: Path, what: str) -> str:
    if not path.exists():
        raise StackError(f"{what}: {path} is missing; run `make tools` (needs Maven) first")
    return path.read_text().strip()
