"""Cluster-aware statistics for 0/1 outcomes (arrays in, numbers out; knows nothing of models).

Prompts are not independent draws: templated prompts share a template (one template
decides 5 of 40 Thai prompts), translated sets pair languages through their source
prompt. A Wilson interval (metrics.wilson) treats the n prompts as n independent
trials and is then too narrow; the functions here resample the units the prompts were
drawn by ("clusters").

Notation: prompts i = 1..N with outcome y_i, cluster g(i) in 1..G; cluster sums
Y_g = sum_{g(i)=g} y_i and sizes m_g; the mean is p = sum_g Y_g / sum_g m_g = sum_i y_i / N.

- cluster_bootstrap_ci: draw G clusters with replacement (g*_1..g*_G), recompute
  p* = sum_k Y_{g*_k} / sum_k m_{g*_k}, and take the (1-level)/2 and (1+level)/2
  percentiles of p* over n_boot draws. With singleton clusters this is exactly the
  ordinary (iid) bootstrap of the mean, draw for draw under the same seed.
- design_effect: deff = v_cluster / v_iid with the linearised (ratio-estimator)
  cluster variance v_cluster = G/(G-1) * sum_g (Y_g - p m_g)^2 / N^2 and
  v_iid = sum_i (y_i - p)^2 / (N (N-1)); deff = 1 for singletons and (N-1)/(G-1)
  when every cluster of equal size m is all-0 or all-1 (about m). effective_n = N / deff.
- mcnemar_exact: exact two-sided McNemar test for paired 0/1 outcomes.
- paired_bootstrap_diff: mean(b - a) with a cluster bootstrap interval and p-value.

Cluster labels: any hashable per item; None marks an item that is its own cluster.
Everything is float64; randomness comes only from numpy.random.default_rng(seed).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Hashable, Sequence

import numpy as np

#: Bootstrap draws per chunk of work: n_boot x G index matrices are built in pieces of
#: at most this many entries, so memory stays bounded for large G.
_CHUNK = 4_000_000


def cluster_codes(clusters: Sequence[Hashable | None] | None, n: int) -> np.ndarray:
    """Integer cluster ids 0..G-1 in order of first appearance; None (or clusters=None
    for all items) gives the item a cluster of its own."""
    if clusters is None:
        return np.arange(n, dtype=np.int64)
    if len(clusters) != n:
        raise ValueError(f"{n} values but {len(clusters)} cluster labels")
    ids: dict = {}
    out = np.empty(n, dtype=np.int64)
    for i, c in enumerate(clusters):
        key = ("__singleton__", i) if c is None else ("label", c)
        out[i] = ids.setdefault(key, len(ids))
    return out


def _values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name} is empty; need at least one outcome")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds NaN or infinite entries")
    return v


def _cluster_totals(v: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums Y_g and sizes m_g (float64)."""
    g = int(codes.max()) + 1
    return (np.bincount(codes, weights=v, minlength=g).astype(np.float64),
            np.bincount(codes, minlength=g).astype(np.float64))


def _boot_means(sums: np.ndarray, sizes: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot cluster-bootstrap means p* = sum_k Y_{g*_k} / sum_k m_{g*_k} (G clusters drawn
    uniformly with replacement per draw, via rng.integers(0, G, (rows, G)))."""
    g = sums.size
    rows = max(1, _CHUNK // g)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, g, size=(stop - start, g))
        out[start:stop] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return out


def _check_boot(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def cluster_bootstrap_ci(values, clusters=None, *, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile cluster-bootstrap interval for the mean of `values` (0/1 or real).

    Each of n_boot draws takes G clusters with replacement and recomputes the pooled mean
    p* = sum Y_{g*} / sum m_{g*}; the interval is the ((1-level)/2, (1+level)/2) quantiles
    of p*. With all clusters singletons (clusters=None or all labels None) it is the
    ordinary bootstrap. A single cluster, or all-equal values, gives a zero-width interval
    (the bootstrap cannot see variation that is not in the sample; Wilson stays the
    reference at ASR 0 or 1).
    """
    _check_boot(n_boot, level)
    v = _values(values)
    sums, sizes = _cluster_totals(v, cluster_codes(clusters, v.size))
    return _percentiles(_boot_means(sums, sizes, n_boot, np.random.default_rng(seed)), level)


def design_effect(values, clusters=None) -> float:
    """deff = v_cluster / v_iid (module docstring); NaN when the values do not vary or
    there is only one cluster (the ratio is undefined)."""
    v = _values(values)
    codes = cluster_codes(clusters, v.size)
    sums, sizes = _cluster_totals(v, codes)
    n, g = v.size, sums.size
    p = v.mean()
    ss_iid = float(((v - p) ** 2).sum())
    if g < 2 or n < 2 or ss_iid == 0.0:
        return math.nan
    v_iid = ss_iid / (n * (n - 1))
    v_cl = g / (g - 1) * float(((sums - p * sizes) ** 2).sum()) / (n * n)
    return v_cl / v_iid


def effective_n(values, clusters=None) -> float:
    """N / deff: the number of independent prompts worth the same precision (NaN where deff is)."""
    v = _values(values)
    return v.size / design_effect(v, clusters)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {x.size} and {y.size}")
    return x, y


def mcnemar_exact(a, b) -> dict:
    """Exact two-sided McNemar test for paired 0/1 outcomes a_i, b_i on the same prompts.

    n01 = #{a=0, b=1}, n10 = #{a=1, b=0}, n = n01 + n10. Under H0 (no change) the
    discordant pairs split as X ~ Binomial(n, 1/2); p = min(1, 2 * P(X <= min(n01, n10)))
    = min(1, 2 * sum_{k<=min} C(n, k) / 2^n), computed in exact rational arithmetic.
    p = 1 when there are no discordant pairs. Treats pairs as independent (no clusters).
    """
    x, y = _paired(a, b)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("mcnemar_exact needs 0/1 outcomes")
    n01 = int(((x == 0) & (y == 1)).sum())
    n10 = int(((x == 1) & (y == 0)).sum())
    n = n01 + n10
    tail = sum(math.comb(n, k) for k in range(min(n01, n10) + 1))
    p = min(Fraction(1), Fraction(2 * tail, 2 ** n))
    return {"n01": n01, "n10": n10, "p_value": float(p)}


def paired_bootstrap_diff(a, b, clusters=None, *, n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """diff = mean(b - a) over paired outcomes, with a cluster bootstrap of d_i = b_i - a_i.

    ci: percentile interval of the bootstrap means d* (as cluster_bootstrap_ci, pairs kept
    together and clusters resampled whole). p_value: two-sided, from the bootstrap
    distribution centred at the estimate (Hall & Wilson 1991):
        p = (1 + #{b : |d*_b - diff| >= |diff|}) / (1 + n_boot),
    so p is never exactly 0 and is 1 when every d_i is 0.
    """
    _check_boot(n_boot, level)
    x, y = _paired(a, b)
    d = y - x
    diff = float(d.mean())
    sums, sizes = _cluster_totals(d, cluster_codes(clusters, d.size))
    draws = _boot_means(sums, sizes, n_boot, np.random.default_rng(seed))
    # Tolerance: |d* - diff| and |diff| are means of the same few values; round-off must not
    # decide ties (e.g. identical vectors, or draws that reproduce the sample).
    extreme = np.abs(draws - diff) >= abs(diff) - 1e-12
    p = (1 + int(extreme.sum())) / (1 + n_boot)
    lo, hi = _percentiles(draws, level)
    return {"diff": diff, "ci": [lo, hi], "p_value": float(p)}
