"""mlsafe.evaluate.stats: exact McNemar, cluster bootstrap, paired bootstrap, design effect."""

import math

import numpy as np
import pytest

from mlsafe.evaluate import metrics
from mlsafe.evaluate.stats import (cluster_bootstrap_ci, cluster_codes, design_effect, effective_n,
                                   mcnemar_exact, paired_bootstrap_diff)


def pairs(n01, n10, n00=3, n11=2):
    """Paired 0/1 vectors with the given counts of (a, b) = (0,1), (1,0), (0,0), (1,1)."""
    a = [0] * n01 + [1] * n10 + [0] * n00 + [1] * n11
    b = [1] * n01 + [0] * n10 + [0] * n00 + [1] * n11
    return np.array(a), np.array(b)


@pytest.mark.parametrize("n01, n10, p", [
    (0, 5, 2 / 32),                           # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    (1, 9, 2 * (1 + 10) / 1024),              # 2 * (C(10,0) + C(10,1)) / 2^10 = 0.021484375
    (3, 12, 2 * (1 + 15 + 105 + 455) / 2 ** 15),  # 0.03515625
    (6, 0, 2 / 64),
])
def test_mcnemar_exact_hand_computed(n01, n10, p):
    out = mcnemar_exact(*pairs(n01, n10))
    assert (out["n01"], out["n10"]) == (n01, n10)
    assert out["p_value"] == pytest.approx(p, rel=1e-15)


def test_mcnemar_matches_float_binomial_sum_and_is_symmetric():
    n01, n10 = 7, 20
    expected = 2 * sum(math.comb(27, k) for k in range(8)) * 0.5 ** 27
    a, b = pairs(n01, n10)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(expected, rel=1e-12)
    swapped = mcnemar_exact(b, a)
    assert (swapped["n01"], swapped["n10"]) == (n10, n01) and swapped["p_value"] == mcnemar_exact(a, b)["p_value"]


@pytest.mark.parametrize("k", [0, 1, 4, 50])
def test_mcnemar_symmetric_or_no_discordant_gives_one(k):
    assert mcnemar_exact(*pairs(k, k))["p_value"] == 1.0


def test_mcnemar_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0, 0.5], [1, 0])
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([0, 1], [1])


def test_cluster_codes_first_appearance_and_none_singletons():
    assert cluster_codes(["t2", None, "t1", "t2", None], 5).tolist() == [0, 1, 2, 0, 3]
    assert cluster_codes(None, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_codes(["a"], 2)


def test_singleton_clusters_equal_the_ordinary_bootstrap():
    """Singletons: draw for draw the iid bootstrap of the mean under the same seed."""
    v = (np.random.default_rng(5).random(60) < 0.3).astype(float)
    idx = np.random.default_rng(11).integers(0, v.size, size=(500, v.size))
    iid = tuple(np.quantile(v[idx].mean(axis=1), [0.025, 0.975]))
    assert cluster_bootstrap_ci(v, None, n_boot=500, seed=11) == pytest.approx(iid, abs=1e-12)
    assert cluster_bootstrap_ci(v, [None] * v.size, n_boot=500, seed=11) == pytest.approx(iid, abs=1e-12)
    assert cluster_bootstrap_ci(v, [f"c{i}" for i in range(v.size)], n_boot=500, seed=11) == pytest.approx(iid)


def template_outcomes(values_per_template, fillers=5):
    """8 templates x 5 fillers where the template decides every outcome (perfect correlation)."""
    v = np.repeat(np.asarray(values_per_template, dtype=float), fillers)
    return v, [f"t{i // fillers}" for i in range(v.size)]


def test_cluster_interval_wider_when_clusters_perfectly_correlated():
    v, clusters = template_outcomes([1, 0, 0, 1, 0, 0, 0, 1])
    lo_c, hi_c = cluster_bootstrap_ci(v, clusters, n_boot=4000, seed=0)
    lo_i, hi_i = cluster_bootstrap_ci(v, None, n_boot=4000, seed=0)
    assert lo_c <= v.mean() <= hi_c
    # sd ratio is sqrt(deff) = sqrt(39/7) ~ 2.36 here; percentiles of 8 clusters are coarse.
    assert (hi_c - lo_c) > 1.8 * (hi_i - lo_i)
    assert design_effect(v, clusters) == pytest.approx(39 / 7, rel=1e-12)  # (N-1)/(G-1)
    assert effective_n(v, clusters) == pytest.approx(40 * 7 / 39, rel=1e-12)


def test_design_effect_singletons_and_undefined_cases():
    v = (np.random.default_rng(2).random(50) < 0.4).astype(float)
    assert design_effect(v) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(design_effect(np.ones(10)))           # no variation
    assert math.isnan(design_effect(v, ["one"] * v.size))   # a single cluster


def test_cluster_interval_about_iid_width_for_singletons_and_zero_width_when_constant():
    v = (np.random.default_rng(3).random(313) < 0.3).astype(float)
    lo, hi = cluster_bootstrap_ci(v, None, n_boot=2000, seed=1)
    wl, wh = metrics.wilson(int(v.sum()), v.size)
    assert (hi - lo) == pytest.approx(wh - wl, rel=0.1)
    assert cluster_bootstrap_ci(np.zeros(20), None, n_boot=100) == (0.0, 0.0)


def test_seeded_results_repeat_and_differ_across_seeds():
    v, clusters = template_outcomes([1, 0, 1, 1, 0, 0, 0, 1])
    clusters = clusters[:20] + [None] * 20
    first = cluster_bootstrap_ci(v, clusters, n_boot=300, seed=7)
    assert cluster_bootstrap_ci(v, clusters, n_boot=300, seed=7) == first
    assert cluster_bootstrap_ci(v, clusters, n_boot=300, seed=8) != first
    b = np.roll(v, 3)
    assert paired_bootstrap_diff(v, b, clusters, n_boot=300, seed=7) == \
        paired_bootstrap_diff(v, b, clusters, n_boot=300, seed=7)


def test_paired_diff_identical_vectors_cover_zero():
    v, clusters = template_outcomes([1, 0, 0, 1, 0, 1, 0, 1])
    out = paired_bootstrap_diff(v, v.copy(), clusters, n_boot=500, seed=0)
    assert out["diff"] == 0.0 and out["ci"][0] <= 0.0 <= out["ci"][1] and out["p_value"] == 1.0


def test_paired_diff_sign_interval_and_p():
    rng = np.random.default_rng(4)
    a = (rng.random(200) < 0.6).astype(float)
    b = a * (rng.random(200) < 0.3)  # most unsafe answers become safe
    down = paired_bootstrap_diff(a, b, None, n_boot=1000, seed=0)
    assert down["diff"] == pytest.approx(b.mean() - a.mean()) and down["diff"] < 0
    assert down["ci"][1] < 0 and down["p_value"] == pytest.approx(1 / 1001)
    up = paired_bootstrap_diff(b, a, None, n_boot=1000, seed=0)
    assert up["diff"] == -down["diff"] and up["ci"][0] > 0
    assert up["ci"] == pytest.approx([-down["ci"][1], -down["ci"][0]])  # same draws, mirrored


def test_paired_p_value_is_not_significant_for_a_small_noisy_difference():
    a, b = pairs(5, 4, n00=30, n11=10)  # five prompts turn unsafe, four turn safe
    out = paired_bootstrap_diff(a, b, None, n_boot=2000, seed=0)
    assert out["diff"] == pytest.approx(1 / 49) and 0.5 < out["p_value"] <= 1.0
    assert out["ci"][0] < 0 < out["ci"][1]


def test_bad_bootstrap_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        cluster_bootstrap_ci([0, 1], n_boot=0)
    with pytest.raises(ValueError, match="level"):
        cluster_bootstrap_ci([0, 1], level=1.0)
    with pytest.raises(ValueError, match="empty"):
        cluster_bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap_diff([0, math.nan], [0, 1])


def test_cluster_interval_keeps_coverage_where_wilson_loses_it():
    """Thai-shaped set (8 templates x 5 fillers), the template decides each outcome (P(unsafe) 0.3):
    Wilson treats 40 prompts as independent and covers the true 0.3 far less than 95 %; the
    cluster bootstrap stays near it (it undercovers a little with only 8 clusters)."""
    rng = np.random.default_rng(2026)
    clusters = [f"t{i // 5}" for i in range(40)]
    cover_w = cover_c = 0
    for r in range(200):
        y = np.repeat(rng.random(8) < 0.3, 5).astype(float)
        lo, hi = metrics.wilson(int(y.sum()), y.size)
        clo, chi = cluster_bootstrap_ci(y, clusters, n_boot=1000, seed=r)
        cover_w += lo <= 0.3 <= hi
        cover_c += clo <= 0.3 <= chi
    assert cover_w / 200 < 0.7 and cover_c / 200 > 0.85
