"""Safety-neuron sets (eq. 13-16), Jaccard overlaps (eq. 2), random control and probe selection."""

import math
import statistics
from types import SimpleNamespace

import pytest
import torch

from mlsafe import neurons

torch.set_num_threads(1)
F64 = torch.float64

# A hand-made layer of 9 neurons, n_h = 3, n_s = 5, so s_pooled^2 = (2 var_h + 4 var_s) / 6.
DELTA = [6.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, 0.0, 0.5]
VAR_H = [9.0, 0.25, 10.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
VAR_S = [9.0, 0.25, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
D_EXPECTED = [2.0, 2.0, 0.5, -2.0, -2.0, -2.0, -math.inf, 0.0, math.inf]


def hand_layer(**taus):
    mean_s = torch.linspace(-1, 1, 9, dtype=F64)  # arbitrary baseline: only Delta matters
    return neurons.safety_neurons(mean_s + torch.tensor(DELTA, dtype=F64), torch.tensor(VAR_H), 3,
                                  mean_s, torch.tensor(VAR_S), 5, **taus)


def test_hand_computed_z_and_cohens_d():
    sets = hand_layer()
    mu, sd = statistics.fmean(DELTA), statistics.pstdev(DELTA)
    torch.testing.assert_close(sets.delta, torch.tensor(DELTA, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(sets.z, torch.tensor([(x - mu) / sd for x in DELTA], dtype=F64),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sets.cohens_d, torch.tensor(D_EXPECTED, dtype=F64), rtol=1e-12, atol=1e-12)
    assert sets.z[0] == pytest.approx(2.4218, abs=1e-4)  # 5.944 / 2.4545
    assert sets.s_mag.tolist() == [0]
    assert sets.s_stat.tolist() == [0, 1, 8]        # d > 1; +inf (zero variance, Delta > 0) counts
    assert sets.s_safety.tolist() == [0, 1, 8]
    assert sets.s_safety.dtype == torch.long and (sets.tau_mag, sets.tau_stat) == (2.0, 1.0)


def test_thresholds_are_strict_and_the_union_is_taken():
    sets = hand_layer(tau_mag=0.3, tau_stat=2.0)      # z: neuron 0 (2.42), 1 and 2 (0.38), 8 (0.18)
    assert sets.s_mag.tolist() == [0, 1, 2]
    assert sets.s_stat.tolist() == [8]              # d = 2.0 is not > 2.0
    assert sets.s_safety.tolist() == [0, 1, 2, 8]


def test_sets_are_exactly_the_thresholded_indices_on_random_data():
    g = torch.Generator().manual_seed(0)
    mh, ms = torch.randn(500, generator=g, dtype=F64), torch.randn(500, generator=g, dtype=F64)
    vh, vs = torch.rand(500, generator=g, dtype=F64) * 2, torch.rand(500, generator=g, dtype=F64) * 2
    sets = neurons.safety_neurons(mh, vh, 40, ms, vs, 60, tau_mag=1.5, tau_stat=0.8)
    z, d = sets.z.tolist(), sets.cohens_d.tolist()
    mag = [j for j in range(500) if z[j] > 1.5]
    stat = [j for j in range(500) if d[j] > 0.8]
    assert sets.s_mag.tolist() == mag and sets.s_stat.tolist() == stat
    assert sets.s_safety.tolist() == sorted(set(mag) | set(stat))
    assert 0 < len(mag) < 500 and len(set(stat) - set(mag)) > 0
    via_moments = neurons.safety_neurons_from_moments(SimpleNamespace(mean=mh, var=vh, n=40),
                                                      SimpleNamespace(mean=ms, var=vs, n=60),
                                                      tau_mag=1.5, tau_stat=0.8)
    assert torch.equal(via_moments.s_safety, sets.s_safety)


def test_constant_delta_gives_no_magnitude_neurons():
    ones = torch.ones(4, dtype=F64)
    sets = neurons.safety_neurons(2 * ones, ones, 10, ones, ones, 10)   # Delta = 1, s_pooled = 1
    assert torch.equal(sets.z, torch.zeros(4, dtype=F64)) and sets.s_mag.numel() == 0
    assert torch.equal(sets.cohens_d, ones) and sets.s_stat.numel() == 0     # d = 1 is not > 1
    assert neurons.safety_neurons(2 * ones, ones, 10, ones, ones, 10, tau_stat=0.99).s_stat.tolist() \
        == [0, 1, 2, 3]


def test_errors():
    v = torch.ones(3)
    with pytest.raises(ValueError, match=r"shape mismatch: mean_h \(3,\), var_h \(2,\)"):
        neurons.safety_neurons(v, v[:2], 3, v, v, 3)
    with pytest.raises(ValueError, match="1-D tensor"):
        neurons.safety_neurons(torch.ones(2, 3), v, 3, v, v, 3)
    with pytest.raises(ValueError, match="variances must be >= 0"):
        neurons.safety_neurons(v, -v, 3, v, v, 3)
    with pytest.raises(ValueError, match="n_h \\+ n_s >= 3"):
        neurons.safety_neurons(v, v, 1, v, v, 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        neurons.safety_neurons(v * math.nan, v, 3, v, v, 3)


def test_jaccard_values_and_empty_case():
    assert neurons.jaccard(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])) == 0.5
    assert neurons.jaccard([1, 2], [1, 2]) == 1.0
    assert neurons.jaccard([1, 2], torch.tensor([3])) == 0.0
    assert neurons.jaccard([], [5]) == 0.0
    assert math.isnan(neurons.jaccard(torch.tensor([], dtype=torch.long), []))


def test_overlap_matrix():
    langs, mat = neurons.overlap_matrix({"en": torch.tensor([0, 1, 2, 3]), "zh": torch.tensor([1, 2, 3, 4]),
                                         "bn": torch.tensor([9])})
    assert langs == ["en", "zh", "bn"] and mat.dtype == F64
    expected = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(mat, expected, rtol=0, atol=1e-15)


def test_random_like_size_uniqueness_seed_and_disjoint():
    s = torch.tensor([3, 10, 11, 50, 99])
    r1, r2 = neurons.random_like(s, 100, 7), neurons.random_like(s, 100, torch.Generator().manual_seed(7))
    assert torch.equal(r1, r2) and r1.dtype == torch.long
    assert len(r1) == 5 and len(set(r1.tolist())) == 5 and r1.tolist() == sorted(r1.tolist())
    assert all(0 <= j < 100 for j in r1.tolist())
    assert not torch.equal(r1, neurons.random_like(s, 100, 8))
    for seed in range(20):
        dis = neurons.random_like(torch.tensor([0, 1, 2, 3, 4]), 10, seed, disjoint=True)
        assert set(dis.tolist()) == {5, 6, 7, 8, 9}
    with pytest.raises(ValueError, match="cannot draw 5 neurons from 4"):
        neurons.random_like(torch.arange(5), 9, 0, disjoint=True)
    with pytest.raises(ValueError, match=r"\[0, d_ff\) = \[0, 50\)"):
        neurons.random_like(s, 50, 0)


def test_probe_neurons_find_the_informative_neurons():
    g = torch.Generator().manual_seed(1)
    harm, safe = torch.randn(80, 30, generator=g), torch.randn(80, 30, generator=g)
    harm[:, 4] += 1.5
    harm[:, 17] += 1.5
    harm[:, 9] -= 2.0                      # fires *less* on harmful: not a safety neuron
    idx, w = neurons.probe_neurons(harm, safe, 2)
    assert idx.tolist() == [4, 17] and w.shape == (30,) and w.dtype == F64
    assert w[9] < 0 and w[4] > 3 * w.abs()[[j for j in range(30) if j not in (4, 9, 17)]].max()
    idx2, w2 = neurons.probe_neurons(harm, safe, 2)
    assert torch.equal(w, w2)              # deterministic
    diag = neurons.probe_neurons_diagonal(harm.mean(0), harm.var(0), 80, safe.mean(0), safe.var(0), 80, 2)
    assert diag.tolist() == [4, 17]
    with pytest.raises(ValueError, match=r"k must be in \[1, d_ff\] = \[1, 30\]"):
        neurons.probe_neurons(harm, safe, 31)
    with pytest.raises(ValueError, match="shape mismatch"):
        neurons.probe_neurons(harm, safe[:, :29], 2)


def test_contrast_overlap_on_hand_made_moments():
    mom = lambda mean: SimpleNamespace(mean=torch.tensor(mean, dtype=torch.float64),  # noqa: E731
                                       var=torch.ones(len(mean), dtype=torch.float64), n=20)
    harm = mom([3.0, 3.0, 0.0, 0.0])
    safe_a = mom([0.0, 0.0, 0.0, 0.0])       # neurons 0, 1 separate harmful from these (d = 3)
    safe_b = mom([3.0, 0.0, 0.0, 0.0])       # neuron 0 fires on the near-misses as on harmful prompts
    a = neurons.safety_neurons_from_moments(harm, safe_a, tau_mag=10.0, tau_stat=1.0)
    b = neurons.safety_neurons_from_moments(harm, safe_b, tau_mag=10.0, tau_stat=1.0)
    assert a.s_safety.tolist() == [0, 1] and b.s_safety.tolist() == [1]
    row = neurons.contrast_overlap(a, b, harm, safe_a, safe_b)
    assert (row["s_std"], row["s_near"], row["s_both"]) == (2, 1, 1)
    assert row["format_share"] == pytest.approx(0.5) and row["jaccard"] == pytest.approx(0.5)
    assert row["near_position"]["median"] in (0.0, 1.0) and row["near_position"]["mean"] == pytest.approx(0.5)
    assert row["near_position"]["share_above_half"] == pytest.approx(0.5)
    assert row["cohens_d_gt1_share"] == {"std": 0.5, "near": 0.25}
