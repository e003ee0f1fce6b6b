"""The drift statistics of one window of live values against a training distribution (ml.features.distributions):
binning (numpy, vectorised) and the population stability index, chi-square and Kolmogorov-Smirnov statistics over
the bins. Plain functions of arrays, for the streaming monitor and for tests; scipy only for p-values.

Bins are those of the training distribution: a numeric value v falls in bin `searchsorted(edges, v, "left")`, i.e.
(-inf, e0], (e0, e1], ..., (e_last, +inf), as the preprocessing job counted the training values; a categorical value
in its category's bin or the last, `__other__`. Missing values are in no bin: count them apart and compare their share
with the training `missing` (or append a bin for them with `with_missing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_EPSILON = 1e-4  # an empty bin's share, for the logarithm (the usual 1e-4 .. 1e-6; smaller weighs it more)


def bin_counts(values: Any, edges: Sequence[float], weights: Any = None) -> np.ndarray:
    """How many of `values` fall in each of the len(edges) + 1 bins (each value counted `weights[i]` times when
    given: the monitor counts each distinct live value once, with how often it came). NaN and +-inf are missing and
    not counted: the job read non-finite training values as missing, and serving imputes them like missing ones."""
    array = np.asarray(values, dtype=np.float64)
    present = np.isfinite(array)
    counted = None if weights is None else np.asarray(weights, dtype=np.int64)[present]
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), array[present], side="left")
    return np.bincount(bins, weights=counted, minlength=len(edges) + 1).astype(np.int64)


def category_counts(
    keys: Sequence[str | None], categories: Sequence[str], weights: Sequence[int] | None = None
) -> np.ndarray:
    """How many of `keys` (categories keyed like `normalise_category`; None is missing and not counted) fall in each
    category's bin, the last bin (`__other__`) taking every other key; each key counted `weights[i]` times when
    given."""
    index = {category: position for position, category in enumerate(categories)}
    other = len(categories)
    counted = [1] * len(keys) if weights is None else weights
    present = [(index.get(key, other), weight) for key, weight in zip(keys, counted, strict=True) if key is not None]
    positions = np.fromiter((position for position, _ in present), dtype=np.intp, count=len(present))
    weighted = np.fromiter((weight for _, weight in present), dtype=np.int64, count=len(present))
    return np.bincount(positions, weights=weighted, minlength=other + 1).astype(np.int64)


def with_missing(fractions: Sequence[float], missing: float) -> np.ndarray:
    """Training bin fractions of present values -> fractions of all rows with a last bin for missing values (to
    compare with live counts that end with the window's missing count)."""
    return np.append(np.asarray(fractions, dtype=np.float64) * (1.0 - missing), missing)


def _observed(expected_fractions: Sequence[float], observed_counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    expected = np.asarray(expected_fractions, dtype=np.float64)
    observed = np.asarray(observed_counts, dtype=np.float64)
    if expected.shape != observed.shape or expected.ndim != 1:
        raise ValueError(f"{len(expected)} expected bins but {len(observed)} observed")
    if observed.sum() <= 0:
        raise ValueError("no observed values: nothing to compare")
    return expected, observed


def psi(
    expected_fractions: Sequence[float], observed_counts: Sequence[float], epsilon: float = DEFAULT_EPSILON
) -> float:
    """Population stability index: sum over bins of (o - e) * ln(o / e), o and e the observed and expected shares,
    each at least `epsilon` (an empty bin would make it infinite). Rules of thumb: < 0.1 stable, 0.1-0.25 a
    moderate shift, > 0.25 a large one."""
    expected, observed = _observed(expected_fractions, observed_counts)
    e = np.maximum(expected, epsilon)
    o = np.maximum(observed / observed.sum(), epsilon)
    return float(np.sum((o - e) * np.log(o / e)))


def chi_square(
    expected_fractions: Sequence[float], observed_counts: Sequence[float], epsilon: float = DEFAULT_EPSILON
) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's goodness-of-fit test of the observed counts against the training fractions:
    sum of (O - E)^2 / E with E = n * max(e, epsilon), bins - 1 degrees of freedom. For categorical features (and
    binned numerics); with few values per bin (E < 5) the p-value is rough."""
    from scipy.stats import chi2

    expected, observed = _observed(expected_fractions, observed_counts)
    counts = observed.sum() * np.maximum(expected, epsilon)
    statistic = float(np.sum((observed - counts) ** 2 / counts))
    freedom = len(expected) - 1
    return statistic, (float(chi2.sf(statistic, freedom)) if freedom > 0 else 1.0)


def ks(expected_fractions: Sequence[float], observed_counts: Sequence[float]) -> tuple[float, float]:
    """(statistic, p-value) of a one-sample Kolmogorov-Smirnov test over ordered bins (numerics): the largest gap
    between the observed and the training cumulative shares at the bin edges, against the distribution of the
    statistic for n observed values. Only the edges are seen, so the statistic is at most the exact one and the
    p-value at least the exact one (conservative)."""
    from scipy.stats import kstwo

    expected, observed = _observed(expected_fractions, observed_counts)
    n = observed.sum()
    gaps = np.abs(np.cumsum(observed / n) - np.cumsum(expected))
    statistic = float(gaps[:-1].max()) if len(gaps) > 1 else 0.0  # the last cumulative shares are both 1
    return statistic, float(kstwo.sf(statistic, int(n)))
