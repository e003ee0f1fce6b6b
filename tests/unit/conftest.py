"""Unit tests run without the stack and outside its environment (`make test` runs them first, as they are).

Airflow, which the plugin and DAG tests import, reads its home folder when it is first imported and writes its
configuration there: point it at a throwaway folder (never the user's ~/airflow) unless one is set.
"""

from __future__ import annotations

import os
import tempfile

if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mlops-unit-airflow-")
