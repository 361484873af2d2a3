"""Theorem 4.1 solver: optimality, limits, streaming, the hard variant and the errors."""

import pytest
import torch

from mlsafe import solver
from mlsafe.solver import EditGram, build_gram

torch.set_num_threads(1)
F64 = torch.float64


def problem(seed=0, n_h=30, n_s=20, d=12, m=7, scales=None, signal=0.0):
    """Random X_low, X_safe; D = signal * X_low W_true (rank 2) + unit noise."""
    g = torch.Generator().manual_seed(seed)
    x_low = torch.randn(n_h, d, generator=g, dtype=F64)
    if scales is not None:
        x_low = x_low * torch.as_tensor(scales, dtype=F64)
    w_true = torch.randn(d, 2, generator=g, dtype=F64) @ torch.randn(2, m, generator=g, dtype=F64)
    d_gap = signal * x_low @ w_true + torch.randn(n_h, m, generator=g, dtype=F64)
    x_safe = torch.randn(n_s, d, generator=g, dtype=F64)
    return x_low, d_gap, x_safe


def direct_objective(dw, x_low, d_gap, x_safe, gamma, lam):
    return float(((x_low @ dw - d_gap) ** 2).sum() + gamma * ((x_safe @ dw) ** 2).sum()
                 + lam * (dw ** 2).sum())


KW = dict(gamma=0.5, lam=0.1)


def test_objective_matches_the_matrix_form():
    x_low, d_gap, x_safe = problem()
    dw = torch.randn(12, 7, generator=torch.Generator().manual_seed(9), dtype=F64)
    g = build_gram(x_low, d_gap, x_safe)
    assert solver.objective(dw, g, **KW) == pytest.approx(direct_objective(dw, x_low, d_gap, x_safe, **KW),
                                                          rel=1e-12)


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_rank_is_at_most_r_and_factors_multiply_out(rank):
    x_low, d_gap, x_safe = problem()
    g = build_gram(x_low, d_gap, x_safe)
    dw = solver.solve_from_gram(g, rank=rank, **KW)
    assert dw.shape == (12, 7) and dw.dtype == F64
    assert torch.linalg.matrix_rank(dw).item() == rank
    a, b = solver.low_rank_factors(g, rank=rank, **KW)
    assert a.shape == (12, rank) and b.shape == (rank, 7)
    torch.testing.assert_close(a @ b, dw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b @ b.T, torch.eye(rank, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("d, m", [(12, 7), (6, 10)])
def test_gram_and_svd_methods_agree_for_tall_and_wide_problems(d, m):
    x_low, d_gap, x_safe = problem(8, d=d, m=m, signal=1.0)
    g = build_gram(x_low, d_gap, x_safe)
    for rank in (1, 3, min(d, m)):
        a1, b1 = solver.low_rank_factors(g, rank=rank, **KW)
        a2, b2 = solver.low_rank_factors(g, rank=rank, method="svd", **KW)
        torch.testing.assert_close(a1, a2, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b1, b2, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b1 @ b1.T, torch.eye(rank, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='method must be "auto", "gram" or "svd"'):
        solver.low_rank_factors(g, rank=1, method="qr", **KW)


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "wide"])
def test_partial_eigh_fast_path_matches_the_full_svd(case):
    # "gram" computes only r eigenvectors of the smaller Gram of R M; "svd" is the exact reference
    kw = dict(gamma=0.3, lam=1e-6)
    if case == "random":
        x_low, d_gap, x_safe = problem(11, n_h=80, n_s=50, d=40, m=24, signal=1.0)
    elif case == "ill_conditioned":  # X_low columns scaled over 6 decades: cond(Q) ~ 1e12
        x_low, d_gap, x_safe = problem(12, n_h=80, n_s=50, d=40, m=24, signal=1.0,
                                       scales=torch.logspace(3, -3, 40).tolist())
    else:  # m > d: the d x d Gram side
        x_low, d_gap, x_safe = problem(13, n_h=80, n_s=50, d=20, m=36, signal=1.0)
    g = build_gram(x_low, d_gap, x_safe)
    for rank in (1, 4, 9):
        fast = solver.solve_from_gram(g, rank=rank, **kw)
        exact = solver.solve_from_gram(g, rank=rank, method="svd", **kw)
        j_fast, j_exact = solver.objective(fast, g, **kw), solver.objective(exact, g, **kw)
        assert abs(j_fast - j_exact) <= 1e-10 * abs(j_exact)
        assert float(torch.linalg.norm(fast - exact) / torch.linalg.norm(exact)) < 1e-7


def decaying_problem(seed, d=480, m=320, n_h=600, n_s=300, decay=0.6, noise=1e-3, scales=None):
    """D = X_low W + noise with W's singular values decay**i: the whitened R M then has a
    decaying spectrum, as an edit with a few dominant gap directions would."""
    g = torch.Generator().manual_seed(seed)
    x_low = torch.randn(n_h, d, generator=g, dtype=F64)
    if scales is not None:
        x_low = x_low * torch.as_tensor(scales, dtype=F64)
    k = min(d, m)
    u = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64)).Q
    v = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=F64)).Q
    w = (u * decay ** torch.arange(k, dtype=F64)) @ v.T
    d_gap = x_low @ w + noise * torch.randn(n_h, m, generator=g, dtype=F64)
    return x_low, d_gap, torch.randn(n_s, d, generator=g, dtype=F64)


def whitened(g, kw):
    chol = solver._cholesky(g, kw["gamma"], kw["lam"])
    return torch.linalg.solve_triangular(chol, g.xtd, upper=False)


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "wide"])
def test_lanczos_path_matches_the_full_svd(case):
    # the default ("auto") takes block Lanczos here (asserted); "svd" is the exact reference
    kw = dict(gamma=0.3, lam=1e-6)
    if case == "random":
        x_low, d_gap, x_safe = decaying_problem(21)
    elif case == "ill_conditioned":  # X_low columns over 6 decades: cond(Q) ~ 1e12
        x_low, d_gap, x_safe = decaying_problem(22, scales=torch.logspace(3, -3, 480).tolist())
    else:  # m > d: Lanczos on R M^T, the left singular vectors of R M
        x_low, d_gap, x_safe = decaying_problem(23, d=320, m=480)
    g = build_gram(x_low, d_gap, x_safe)
    rm = whitened(g, kw)
    side = rm if g.m <= g.d_in else rm.T
    for rank in (1, 4, 8, 12):
        vecs = solver._top_right_singular(side, rank)
        assert vecs is not None, f"Lanczos gave up at rank {rank}"
        a1, b1 = solver.low_rank_factors(g, rank=rank, **kw)
        a2, b2 = solver.low_rank_factors(g, rank=rank, method="svd", **kw)
        torch.testing.assert_close(b1, b2, rtol=0, atol=1e-9)
        torch.testing.assert_close(a1, a2, rtol=1e-9, atol=1e-9 * float(a2.abs().max()))
        torch.testing.assert_close(b1 @ b1.T, torch.eye(rank, dtype=F64), rtol=0, atol=1e-12)
        j_fast = solver.objective(a1 @ b1, g, **kw)
        j_exact = solver.objective(a2 @ b2, g, **kw)
        assert abs(j_fast - j_exact) <= 1e-10 * abs(j_exact)


def test_lanczos_gives_up_on_a_flat_spectrum_and_auto_falls_back_exactly():
    x_low, d_gap, x_safe = problem(24, n_h=400, n_s=200, d=200, m=120)  # D pure noise
    g = build_gram(x_low, d_gap, x_safe)
    assert solver._top_right_singular(whitened(g, KW), 8) is None
    auto = solver.solve_from_gram(g, rank=8, **KW)
    assert torch.equal(auto, solver.solve_from_gram(g, rank=8, method="gram", **KW))
    exact = solver.solve_from_gram(g, rank=8, method="svd", **KW)
    j_auto, j_exact = solver.objective(auto, g, **KW), solver.objective(exact, g, **KW)
    assert abs(j_auto - j_exact) <= 1e-10 * abs(j_exact)


def test_lanczos_on_a_low_rank_matrix_and_its_determinism():
    # rank(a) = 5 < block size 8: the Krylov space is invariant after one step
    gen = torch.Generator().manual_seed(25)
    a = torch.randn(300, 5, generator=gen, dtype=F64) @ torch.randn(5, 160, generator=gen, dtype=F64)
    v = solver._top_right_singular(a, 3)
    assert v is not None and v.shape == (160, 3)
    ref = torch.linalg.svd(a, full_matrices=False).Vh[:3].T
    torch.testing.assert_close((v * ref).sum(0).abs(), torch.ones(3, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(v.T @ v, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(v, solver._top_right_singular(a, 3))
    assert solver._top_right_singular(a[:, :40], 3) is None  # too small to beat the Gram path
    z = solver._top_right_singular(torch.zeros(300, 160, dtype=F64), 3)  # D = 0: any orthonormal basis
    assert z is not None and torch.allclose(z.T @ z, torch.eye(3, dtype=F64), atol=1e-12)


def test_top_eigvecs_are_the_leading_eigenvectors_in_order():
    a = torch.randn(50, 30, generator=torch.Generator().manual_seed(14), dtype=F64)
    c = a.T @ a
    ref = torch.linalg.eigh(c).eigenvectors[:, -5:].flip(1)
    got = solver._top_eigvecs(c, 5)
    assert got.shape == (30, 5) and got.dtype == F64
    torch.testing.assert_close((got * ref).sum(0).abs(), torch.ones(5, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(solver._top_eigvecs(c, 30).abs(), torch.linalg.eigh(c).eigenvectors.flip(1).abs(),
                               rtol=0, atol=1e-10)


def test_full_rank_equals_ridge_solution():
    x_low, d_gap, x_safe = problem()
    g = build_gram(x_low, d_gap, x_safe)
    q = x_low.T @ x_low + KW["gamma"] * x_safe.T @ x_safe + KW["lam"] * torch.eye(12, dtype=F64)
    m_ridge = torch.linalg.solve(q, x_low.T @ d_gap)
    torch.testing.assert_close(solver.solve_from_gram(g, rank=7, **KW), m_ridge, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(solver.ridge(g, **KW), m_ridge, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimum_beats_every_other_rank_r_candidate(seed):
    rank = 2
    x_low, d_gap, x_safe = problem(seed, scales=torch.logspace(1, -1, 12).tolist())
    g = build_gram(x_low, d_gap, x_safe)
    a, b = solver.low_rank_factors(g, rank=rank, **KW)
    best = solver.objective(a @ b, g, **KW)
    assert best <= solver.objective(solver.naive_truncation(g, rank=rank, **KW), g, **KW)
    gen = torch.Generator().manual_seed(100 + seed)
    scale = (a @ b).abs().max()
    for _ in range(200):  # random rank-r candidates
        cand = torch.randn(12, rank, generator=gen, dtype=F64) @ torch.randn(rank, 7, generator=gen, dtype=F64)
        assert best <= solver.objective(cand * scale, g, **KW)
    for eps in (1e-1, 1e-3, 1e-5):  # local rank-r perturbations of the optimum
        for _ in range(50):
            da = torch.randn(a.shape, generator=gen, dtype=F64)
            db = torch.randn(b.shape, generator=gen, dtype=F64)
            pert = (a + eps * da) @ (b + eps * db)
            assert best <= solver.objective(pert, g, **KW) + 1e-12 * abs(best)


def test_strictly_better_than_naive_truncation_on_anisotropic_problem():
    # Q ~ diag(100, 1e-2): the ridge solution's largest singular direction lives where Q is
    # tiny, so truncating M unwhitened keeps the wrong direction.
    x_low = torch.diag(torch.tensor([10.0, 0.1], dtype=F64))
    d_gap = torch.tensor([[1.0, 0.0], [0.0, 0.05]], dtype=F64)
    g = build_gram(x_low, d_gap, torch.zeros(1, 2, dtype=F64))
    kw = dict(gamma=0.0, lam=1e-6)
    opt = solver.objective(solver.solve_from_gram(g, rank=1, **kw), g, **kw)
    naive = solver.objective(solver.naive_truncation(g, rank=1, **kw), g, **kw)
    assert opt == pytest.approx(0.05 ** 2, rel=1e-3)  # keeps the first gap, drops the small one
    assert naive == pytest.approx(1.0, rel=1e-3)      # keeps the second, loses the big one
    assert opt < 0.01 * naive


def test_safe_leak_decreases_monotonically_to_zero_with_gamma():
    x_low, d_gap, x_safe = problem(3, n_s=6)
    g = build_gram(x_low, d_gap, x_safe)
    gammas = [0.0, 0.1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e6]
    leaks = [float(torch.linalg.norm(x_safe @ solver.solve_from_gram(g, rank=3, gamma=gm, lam=0.1)))
             for gm in gammas]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(leaks, leaks[1:])), leaks
    assert leaks[-1] < 1e-4 * leaks[0]


def test_streamed_gram_in_two_halves_gives_the_same_edit():
    x_low, d_gap, x_safe = problem(4)
    whole = build_gram(x_low, d_gap, x_safe)
    first = EditGram.zeros(12, 7).add_low(x_low[:11], d_gap[:11]).add_safe(x_safe[:5])
    second = EditGram.zeros(12, 7).add_low(x_low[11:], d_gap[11:]).add_safe(x_safe[5:])
    streamed = first + second
    assert (streamed.n_low, streamed.n_safe) == (30, 20)
    for name in ("xtx_low", "xtd", "xtx_safe", "dtd"):
        torch.testing.assert_close(getattr(streamed, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    via_solve = solver.solve(x_low, d_gap, x_safe, rank=3, **KW)
    torch.testing.assert_close(solver.solve_from_gram(streamed, rank=3, **KW), via_solve,
                               rtol=1e-9, atol=1e-11)


def test_solve_is_deterministic_and_honours_dtype():
    x_low, d_gap, x_safe = problem(5)
    a = solver.solve(x_low.float(), d_gap.float(), x_safe.float(), rank=2, **KW)
    b = solver.solve(x_low.float(), d_gap.float(), x_safe.float(), rank=2, **KW)
    assert torch.equal(a, b) and a.dtype == F64
    c = solver.solve(x_low, d_gap, x_safe, rank=2, dtype=torch.float32, **KW)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c, a.float(), rtol=1e-4, atol=1e-5)


def test_nullspace_variant_is_exactly_safe_and_still_reduces_the_loss():
    x_low, d_gap, x_safe = problem(6, n_s=5, signal=1.0)  # rank(X_safe) = 5 < d = 12: a 7-dim null space
    g = build_gram(x_low, d_gap, x_safe)
    dw = solver.solve_nullspace(g, rank=3, lam=0.1)
    assert torch.linalg.matrix_rank(dw).item() == 3
    rel_leak = torch.linalg.norm(x_safe @ dw) / (torch.linalg.norm(x_safe) * torch.linalg.norm(dw))
    assert rel_leak < 1e-8
    loss = float(((x_low @ dw - d_gap) ** 2).sum())
    assert loss < 0.5 * float((d_gap ** 2).sum())
    # the same from the matrices, and the soft variant converges to it as gamma -> infinity
    torch.testing.assert_close(solver.solve_nullspace((x_low, d_gap, x_safe), rank=3, lam=0.1), dw)
    soft = solver.solve_from_gram(g, rank=3, gamma=1e9, lam=0.1)
    assert float(torch.linalg.norm(soft - dw) / torch.linalg.norm(dw)) < 1e-5


def test_nullspace_threshold_absolute_and_relative():
    x_safe = torch.diag(torch.tensor([1.0, 1e-2, 1e-4, 0.0], dtype=F64))
    c = x_safe.T @ x_safe  # eigenvalues 1, 1e-4, 1e-8, 0
    assert solver.nullspace_basis(c, threshold=1e-6).shape == (4, 2)
    assert solver.nullspace_basis(c, threshold=1e-3, relative=True).shape == (4, 3)
    assert solver.nullspace_basis(c * 100, threshold=1e-3, relative=False).shape == (4, 2)
    with pytest.raises(ValueError, match="null space is empty; raise threshold"):
        solver.nullspace_basis(torch.eye(4, dtype=F64), threshold=1e-6)


def test_errors_name_the_fix():
    x_low, d_gap, x_safe = problem(7)
    g = build_gram(x_low, d_gap, x_safe)
    with pytest.raises(ValueError, match=r"rank too large: at most min\(d_in, m\) = min\(12, 7\) = 7"):
        solver.solve_from_gram(g, rank=8, **KW)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            solver.solve_from_gram(g, rank=bad, **KW)
    with pytest.raises(ValueError, match=r"shape mismatch: X_low \(30, 12\) and D \(29, 7\)"):
        solver.solve(x_low, d_gap[:29], x_safe, rank=2, **KW)
    with pytest.raises(ValueError, match=r"X_safe \(20, 11\) must be \[n, 12\]"):
        solver.solve(x_low, d_gap, x_safe[:, :11], rank=2, **KW)
    with pytest.raises(ValueError, match=r"dW \(7, 12\) must be \[d_in, m\]"):
        solver.objective(torch.zeros(7, 12), g, **KW)
    with pytest.raises(ValueError, match="not positive definite.*raise lam"):  # 4 rows, d = 12
        solver.solve(x_low[:4], d_gap[:4], x_safe[:0], rank=2, gamma=0.0, lam=0.0)
    with pytest.raises(ValueError, match="gamma and lam must be >= 0"):
        solver.solve_from_gram(g, rank=2, gamma=1.0, lam=-1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solver.solve(x_low * float("nan"), d_gap, x_safe, rank=2, **KW)
    with pytest.raises(ValueError, match="same shape"):
        _ = g + EditGram.zeros(12, 6)


# ----------------------------------------------------------------------------- the bench's helpers
def _bench_modules():
    import sys
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import bench
    import bench_solver
    return bench, bench_solver


def test_bench_spectra_take_the_two_rank_r_paths_and_time_against_the_floor():
    _, bench_solver = _bench_modules()
    noise = bench_solver.solve_vs_floor(480, 320, 8, rows=600, runs=2, threads=1, spectrum="noise")
    decaying = bench_solver.solve_vs_floor(480, 320, 8, rows=600, runs=2, threads=1, spectrum="decaying")
    assert (noise["path"], decaying["path"]) == ("gram", "lanczos")
    for res in (noise, decaying):
        assert len(res["solve_runs"]) == len(res["floor_runs"]) == 2
        assert res["solve_over_floor"] == pytest.approx(res["solve_seconds"] / res["floor_seconds"])
    with pytest.raises(ValueError, match="spectrum must be one of"):
        bench_solver.random_rows(4, 3, 2, spectrum="flat")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_bench_peak_rss_sees_an_allocation_and_compares_within_tolerance():
    bench, _ = _bench_modules()
    total, mem = bench.peak_during(lambda: float(torch.ones(16 * 2 ** 20, dtype=F64).sum()))  # 128 MiB
    assert total == 16 * 2 ** 20
    if mem["peak_reset"]:
        assert mem["peak_above_before_mib"] >= 100
    assert bench.same_peak(100.0, 108.0) and bench.same_peak(5.0, 20.0)
    assert not bench.same_peak(100.0, 130.0) and not bench.same_peak(5.0, 30.0)


def test_bench_small_anchor_set_keeps_whole_parallel_ids():
    bench, bench_solver = _bench_modules()
    harmful, harmless = bench_solver.synthetic_anchors(5, langs=("en", "th", "bn"))
    harmful = [p for p in harmful if not (p.parallel_id == "h1" and p.lang == "th")]  # h1 lacks th
    h, s = bench.small_anchor_set(harmful, harmless, 3, ("en", "th"))
    assert sorted({p.parallel_id for p in h}) == ["h0", "h2", "h3"]
    assert {p.lang for p in h} == {p.lang for p in s} == {"en", "th"} and len(h) == len(s) == 6
    with pytest.raises(ValueError, match="need 9 parallel ids"):
        bench.small_anchor_set(harmful, harmless, 9, ("en", "th"))


def test_bench_fit_vs_forward_reports_the_whole_fit_over_one_forward_pass():
    from mlsafe import tiny, transfer

    _, bench_solver = _bench_modules()
    tok = tiny.build_tokenizer("llama")
    model = tiny.build_model("llama", tok, seed=0, hidden=32, layers=2, d_ff=64)
    harmful, harmless = bench_solver.synthetic_anchors(8)
    cfg = transfer.EditConfig(targets=["th", "bn"], rank=2, tau_mag=1.0, tau_stat=0.5, val_fraction=0.25)
    (fit,) = bench_solver.fit_vs_forward(model, tok, harmful, harmless, cfg, bench_solver.token_margin(tok, batch_size=5),
                                         variants=(("fused", "predicted"),))
    assert (fit["stats_pass"], fit["layer_selection"]) == ("fused", "predicted")
    assert fit["fit_over_forward"] == pytest.approx(fit["fit_seconds"] / fit["forward_seconds"])
    st = fit["stage_seconds"]
    assert fit["with_selection_over_forward"] == pytest.approx(
        (st["statistics"] + st["predict"] + st["margins"]) / fit["forward_seconds"])


def test_bench_real_section_prints_a_child_result_and_skips_with_the_reason(monkeypatch, capsys):
    bench, _ = _bench_modules()
    stages = {"neurons": 0.1, "solve": 2.0, "predict": 0.5, "margins": 1.0, "statistics": 3.0}
    fake = {"load_seconds": 1.0, "harmful_anchors": 8, "harmless_anchors": 8,
            "fits": [{"forward_seconds": 4.0, "fit_seconds": 7.0, "layer": 2, "statistics_over_forward": 0.75,
                      "with_selection_over_forward": 1.125, "fit_over_forward": 1.75, "stage_seconds": stages}],
            "memory": {"peak_mib": 10.0, "peak_above_before_mib": 4.0, "rss_before_mib": 6.0}}
    monkeypatch.setattr(bench, "real_model_status", lambda spec=bench.REAL_MODEL: None)
    monkeypatch.setattr(bench, "run_child", lambda args, timeout: fake)
    assert bench.section_real(True) is fake
    out = capsys.readouterr().out
    assert "whole fit 1.75 (goal <= 1.5: NOT met)" in out and "solve 2.0" in out
    assert bench.section_real(False) == {"skipped": "--no-real given"}


def test_bench_generation_section_prints_the_speedups_and_skips_with_the_reason(monkeypatch, capsys):
    bench, _ = _bench_modules()
    fake = {"max_new_tokens": 32, "batch_size": 64, "batch_tokens": 8192, "margin_max_abs_diff": 1e-5,
            "margin_seconds": {"plain": 50.0, "by_length": 35.0, "by_length_prefix": 20.0},
            "generation": {"before": {"seconds": 80.0, "tokens_per_second": 50.0},
                           "suite": {"seconds": 50.0, "tokens_per_second": 80.0}},
            "same_responses": 1.0, "first_logp_max_abs_diff": 2e-5,
            "edited": {"all": {"decoded_seconds": 60.0, "draft_seconds": 48.0, "drafted": 128, "draft_done": 120,
                               "unchanged_by_edit": 0.95, "same_responses": 1.0, "first_logp_max_abs_diff": 1e-5},
                       "all-best": {"skipped": "no results/x/all-best/edit.safetensors"}}}
    monkeypatch.setattr(bench, "real_model_status", lambda spec=bench.REAL_MODEL: None)
    monkeypatch.setattr(bench, "run_child", lambda args, timeout: fake)
    assert bench.section_generation(True) is fake
    out = capsys.readouterr().out
    assert "+ shared prefix 20.0 s (2.50x)" in out and ": 1.60x; identical responses 100.0%" in out
    assert "drafts 48.0 s (1.25x; 120 of 128 verified rows finished by their draft)" in out
    assert "edited (all-best): skipped, no results/x/all-best/edit.safetensors" in out
    monkeypatch.setattr(bench, "run_child", lambda args, timeout: {"error": "exit 1: boom"})
    assert bench.section_generation(True) == {"skipped": "failed: exit 1: boom"}
    assert bench.section_generation(False) == {"skipped": "--no-real given"}
