"""Drift between live request values and the training distributions (ml.features.distributions).

stats  binning of a window's values and the statistics that compare them with training: PSI, chi-square, KS
"""

from __future__ import annotations

from ml.drift.stats import DEFAULT_EPSILON, bin_counts, category_counts, chi_square, ks, psi, with_missing

__all__ = ["DEFAULT_EPSILON", "bin_counts", "category_counts", "chi_square", "ks", "psi", "with_missing"]
