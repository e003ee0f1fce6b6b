"""Hyper-parameter search with Ray Tune over the PyTorch models of ml.models.

  space      search spaces as data: validation, hashing, Ray Tune domains
  config     SearchConfig (what to search) and SearchResult (what was found, stored in S3)
  search     run_search: start, resume or return a completed search
  state      what a search keeps in S3 besides Tune's state: its manifest and stored result
  signing    the search's storage filesystem: signs every file it writes, checks every file it reads (the stack's key)
  runtime    Ray for a search (local or a cluster) and its logs
  callbacks  Tune callbacks: metrics to Kafka, nested MLflow runs, progress in the log
  tracking   the search's MLflow parent run
  cli        `python -m ml tune`

Importing this package imports neither Ray nor torch.
"""

from __future__ import annotations

from ml.moved import moved_names

# Tune pickles a search's callbacks and its trial-name function into the experiment state it stores in S3. State
# written before ml.tune became a package names them here (the callbacks were then classes made at run time under
# these names); a retried task restores such state, so the names still resolve, to today's definitions
# (tests/integration/ml/tune/test_legacy_state.py restores a state written by that code).
_PICKLED_NAMES = {
    "KafkaMetricsCallback": "ml.tune.callbacks",
    "MlflowTrialCallback": "ml.tune.callbacks",
    "ProgressLogCallback": "ml.tune.callbacks",
    "trial_name": "ml.tune.search",
}


__getattr__ = moved_names(__name__, _PICKLED_NAMES)
