"""ml.drift.stats against values computed by hand, and on samples: the training distribution itself is stable, a
shifted one is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ml.drift import DEFAULT_EPSILON, bin_counts, category_counts, chi_square, ks, psi, with_missing

# bin_counts / category_counts / with_missing


def test_bin_counts_are_right_closed_with_open_ends_and_skip_missing() -> None:
    edges = [0.0, 1.0, 2.0]  # (-inf, 0], (0, 1], (1, 2], (2, inf)
    values = [-5.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0001, 1e300, -1e300]
    assert bin_counts(values, edges).tolist() == [3, 2, 2, 2]
    assert bin_counts([np.nan, np.inf, -np.inf, 1.0], edges).tolist() == [0, 1, 0, 0]  # non-finite: missing
    assert bin_counts(np.array([], dtype=float), edges).tolist() == [0, 0, 0, 0]
    assert bin_counts([3.0, np.nan], []).tolist() == [1]  # no edges: one bin


def test_bin_counts_agree_with_a_loop() -> None:
    rng = np.random.default_rng(1)
    edges = np.quantile(rng.normal(size=500), np.linspace(0.1, 0.9, 9)).tolist()
    values = np.round(rng.normal(size=2000), 1)  # many values on an edge's neighbourhood, some equal to each other
    values[::7] = edges[3]  # and some exactly on an edge: they belong to the bin the edge closes
    expected = [0] * (len(edges) + 1)
    for value in values:
        expected[sum(value > edge for edge in edges)] += 1
    assert bin_counts(values, edges).tolist() == expected


def test_weighted_counts_equal_the_counts_of_the_repeated_values() -> None:
    edges = [0.0, 1.0]
    values, weights = [0.5, np.nan, 2.0, -1.0], [3, 5, 2, 1]
    repeated = np.repeat(values, weights)
    assert bin_counts(values, edges, weights).tolist() == bin_counts(repeated, edges).tolist() == [1, 3, 2]
    keys, key_weights = ["a", None, "zzz", "b"], [4, 7, 2, 1]
    repeated_keys = [key for key, weight in zip(keys, key_weights, strict=True) for _ in range(weight)]
    assert category_counts(keys, ["a", "b"], key_weights).tolist() == [4, 1, 2]
    assert category_counts(repeated_keys, ["a", "b"]).tolist() == [4, 1, 2]


def test_category_counts_put_unknown_keys_in_other_and_skip_missing() -> None:
    keys = ["a", "b", "a", "zzz", None, "", "__other__"]
    assert category_counts(keys, ["a", "b"]).tolist() == [2, 1, 3]
    assert category_counts([], ["a"]).tolist() == [0, 0]
    assert category_counts(["x"], []).tolist() == [1]


def test_with_missing_appends_the_missing_share() -> None:
    assert with_missing([0.5, 0.5], 0.2).tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert with_missing([0.25, 0.75], 0.0).tolist() == [0.25, 0.75, 0.0]


# psi


def test_psi_by_hand() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    assert psi([0.5, 0.5], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    assert psi([0.5, 0.5], [50, 50]) == 0.0
    # three bins: observed shares 0.2, 0.3, 0.5 against 0.3, 0.3, 0.4
    by_hand = (0.2 - 0.3) * math.log(0.2 / 0.3) + (0.5 - 0.4) * math.log(0.5 / 0.4)
    assert psi([0.3, 0.3, 0.4], [2, 3, 5]) == pytest.approx(by_hand)


def test_psi_smooths_empty_bins_with_epsilon() -> None:
    # an empty observed bin counts as epsilon, not as 0 (which would make the index infinite)
    e = DEFAULT_EPSILON
    by_hand = (1 - 0.5) * math.log(1 / 0.5) + (e - 0.5) * math.log(e / 0.5)
    assert psi([0.5, 0.5], [10, 0]) == pytest.approx(by_hand)
    by_hand = (0.5 - 1) * math.log(0.5 / 1) + (0.5 - 0.01) * math.log(0.5 / 0.01)
    assert psi([1.0, 0.0], [5, 5], epsilon=0.01) == pytest.approx(by_hand)


def test_psi_refuses_mismatched_or_empty_counts() -> None:
    with pytest.raises(ValueError, match="2 expected bins but 3 observed"):
        psi([0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError, match="no observed values"):
        psi([0.5, 0.5], [0, 0])


def test_the_training_distribution_is_stable_and_a_shifted_one_is_not() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(10.0, 2.0, size=20_000)
    edges = sorted(set(np.quantile(train, np.arange(1, 10) / 10).tolist()))
    expected = bin_counts(train, edges) / len(train)
    assert psi(expected, bin_counts(train, edges)) == pytest.approx(0.0, abs=1e-12)
    same = rng.normal(10.0, 2.0, size=5_000)
    assert psi(expected, bin_counts(same, edges)) < 0.02
    assert ks(expected, bin_counts(same, edges))[1] > 0.01
    shifted = rng.normal(11.0, 2.0, size=5_000)  # half a standard deviation
    assert psi(expected, bin_counts(shifted, edges)) > 0.2
    assert ks(expected, bin_counts(shifted, edges))[1] < 1e-6
    wider = rng.normal(10.0, 4.0, size=5_000)
    assert psi(expected, bin_counts(wider, edges)) > 0.25


# chi_square / ks


def test_chi_square_by_hand() -> None:
    # n = 100, expected 50 / 50, observed 60 / 40: (10^2 + 10^2) / 50 = 4, 1 degree of freedom
    statistic, p = chi_square([0.5, 0.5], [60, 40])
    assert statistic == pytest.approx(4.0)
    assert p == pytest.approx(scipy_stats.chisquare([60, 40], [50, 50]).pvalue)
    assert p == pytest.approx(0.0455, abs=1e-4)
    statistic, p = chi_square([0.2, 0.3, 0.5], [20, 30, 50])
    assert (statistic, p) == (0.0, 1.0)
    assert chi_square([1.0], [7]) == (0.0, 1.0)  # one bin: nothing to test


def test_chi_square_of_categories_against_scipy() -> None:
    expected = [0.5, 0.3, 0.15, 0.05]
    observed = [40, 35, 20, 5]
    statistic, p = chi_square(expected, observed)
    reference = scipy_stats.chisquare(observed, [100 * e for e in expected])
    assert statistic == pytest.approx(reference.statistic)
    assert p == pytest.approx(reference.pvalue)


def test_ks_by_hand() -> None:
    # cumulative shares: training 0.25, 0.5, 1; observed 0.5, 0.5, 1 -> largest gap 0.25
    statistic, p = ks([0.25, 0.25, 0.5], [50, 0, 50])
    assert statistic == pytest.approx(0.25)
    assert p == pytest.approx(scipy_stats.kstwo.sf(0.25, 100))
    assert ks([0.5, 0.5], [5, 5]) == (0.0, 1.0)
    assert ks([1.0], [3]) == (0.0, 1.0)


def test_binned_ks_is_at_most_the_exact_statistic() -> None:
    rng = np.random.default_rng(3)
    train, live = rng.normal(size=4_000), rng.normal(0.3, 1.0, size=800)
    edges = np.quantile(train, np.arange(1, 10) / 10).tolist()
    binned, _ = ks(bin_counts(train, edges) / len(train), bin_counts(live, edges))
    exact = scipy_stats.ks_2samp(train, live).statistic
    assert 0.5 * exact < binned <= exact + 1e-12
