"""Drift between live request values and the training distributions (ml.features.distributions).

stats    binning of a window's values and the statistics that compare them with training: PSI, chi-square, KS
window   one window's live values read as the job read training values, and its verdict per feature (drift.v1)
stream   the Spark Structured Streaming query over the serving topic (windows, watermark, S3 checkpoint)
monitor  that query against the configured services (`python -m ml monitor`, cli)
"""

from __future__ import annotations

from ml.drift.stats import DEFAULT_EPSILON, bin_counts, category_counts, chi_square, ks, psi, with_missing

__all__ = ["DEFAULT_EPSILON", "bin_counts", "category_counts", "chi_square", "ks", "psi", "with_missing"]
