"""Closed-form low-rank weight edit (paper eq. 4-8, Theorem 4.1). Tensors in, tensors out.

Row-vector convention y = x W. For one layer and one neuron set S (|S| = m):

    J(dW) = ||X_low dW - D_S||_F^2 + gamma ||X_safe dW||_F^2 + lam ||dW||_F^2,  rank(dW) <= r

with X_low [N_h, d_in] (keys to move), D_S [N_h, m] (safety gap), X_safe [N_s, d_in]
(harmless inputs to preserve). Expanding,

    J(dW) = ||dW - M||_Q^2 + const,  Q = X_low^T X_low + gamma X_safe^T X_safe + lam I,
    M = Q^{-1} X_low^T D_S  (the unconstrained ridge solution),

so with the Cholesky factor Q = R^T R the problem is Eckart-Young in the whitened
variable R dW: dW* = R^{-1} U_r S_r V_r^T from the top-r SVD of R M (Theorem 4.1).
Truncating M itself (`naive_truncation`) is not optimal; it is kept as an ablation.

Everything depends on the data only through `EditGram` (X_low^T X_low, X_low^T D,
X_safe^T X_safe, ||D||^2), which can be accumulated in chunks, so anchor sets of any
size stream. All arithmetic is float64; results are returned as float64 unless a
`dtype` is passed (the edit casts to the weight's dtype when it applies them).

`solve_nullspace` is the hard variant (AlphaEdit, arXiv 2410.02355; not in the paper):
dW is confined to the (near-)null space of X_safe^T X_safe, so X_safe dW = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

_F64 = torch.float64


@dataclass
class EditGram:
    """Sufficient statistics of the edit problem (eq. 4-8); add chunks with `add_low`/`add_safe`.

    xtx_low = X_low^T X_low [d, d]; xtd = X_low^T D [d, m]; xtx_safe = X_safe^T X_safe [d, d];
    dtd = ||D||_F^2 (a 0-dim tensor; it makes `objective` exact; left at 0, `objective` is
    J - ||D||^2, which ranks candidates identically); n_low, n_safe count rows.
    Any common scaling (e.g. dividing each block by its row count) is allowed: it only
    re-weights gamma and lam.
    """

    xtx_low: Tensor
    xtd: Tensor
    xtx_safe: Tensor
    dtd: Tensor = field(default_factory=lambda: torch.zeros((), dtype=_F64))
    n_low: int = 0
    n_safe: int = 0

    def __post_init__(self) -> None:
        dev = self.xtd.device
        for name in ("xtx_low", "xtd", "xtx_safe", "dtd"):
            setattr(self, name, torch.as_tensor(getattr(self, name)).to(device=dev, dtype=_F64))

    @classmethod
    def zeros(cls, d_in: int, m: int, device: torch.device | str | None = None) -> "EditGram":
        z = dict(dtype=_F64, device=device)
        return cls(torch.zeros(d_in, d_in, **z), torch.zeros(d_in, m, **z),
                   torch.zeros(d_in, d_in, **z), torch.zeros((), **z))

    @property
    def d_in(self) -> int:
        return self.xtd.shape[0]

    @property
    def m(self) -> int:
        return self.xtd.shape[1]

    def add_low(self, x_low: Tensor, d: Tensor) -> "EditGram":
        """Accumulate a chunk of harmful keys X_low [n, d_in] and their gaps D [n, m] (in place)."""
        x, dd = _f64(x_low, "X_low"), _f64(d, "D")
        if x.ndim != 2 or dd.ndim != 2 or x.shape[0] != dd.shape[0] or x.shape[1] != self.d_in \
                or dd.shape[1] != self.m:
            raise ValueError(f"shape mismatch: X_low {tuple(x.shape)} and D {tuple(dd.shape)} must be "
                             f"[n, {self.d_in}] and [n, {self.m}]")
        x, dd = x.to(self.xtd.device), dd.to(self.xtd.device)
        self.xtx_low += x.T @ x
        self.xtd += x.T @ dd
        self.dtd = self.dtd + (dd * dd).sum()
        self.n_low += x.shape[0]
        return self

    def add_safe(self, x_safe: Tensor) -> "EditGram":
        """Accumulate a chunk of harmless inputs X_safe [n, d_in] (in place)."""
        x = _f64(x_safe, "X_safe")
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"shape mismatch: X_safe {tuple(x.shape)} must be [n, {self.d_in}]")
        x = x.to(self.xtd.device)
        self.xtx_safe += x.T @ x
        self.n_safe += x.shape[0]
        return self

    def __add__(self, other: "EditGram") -> "EditGram":
        if not isinstance(other, EditGram) or other.xtd.shape != self.xtd.shape:
            raise ValueError("can only add EditGram objects of the same shape [d_in, m]")
        return EditGram(self.xtx_low + other.xtx_low, self.xtd + other.xtd,
                        self.xtx_safe + other.xtx_safe, self.dtd + other.dtd,
                        self.n_low + other.n_low, self.n_safe + other.n_safe)


def build_gram(x_low: Tensor, d: Tensor, x_safe: Tensor) -> EditGram:
    """EditGram of full matrices X_low [N_h, d_in], D [N_h, m], X_safe [N_s, d_in]."""
    if x_low.ndim != 2 or d.ndim != 2:
        raise ValueError(f"X_low and D must be 2-D, got {tuple(x_low.shape)} and {tuple(d.shape)}")
    g = EditGram.zeros(x_low.shape[1], d.shape[1], device=x_low.device)
    return g.add_low(x_low, d).add_safe(x_safe)


def ridge(g: EditGram, *, gamma: float, lam: float) -> Tensor:
    """The unconstrained minimiser M = Q^{-1} X_low^T D of eq. 4-8 (float64)."""
    chol = _cholesky(g, gamma, lam)
    return torch.cholesky_solve(g.xtd, chol)


def low_rank_factors(g: EditGram, *, rank: int, gamma: float, lam: float, method: str = "auto",
                     dtype: torch.dtype = _F64) -> tuple[Tensor, Tensor]:
    """Theorem 4.1 as factors (A [d_in, r], B [r, m]) with dW* = A @ B.

    Q = L L^T (R = L^T), R M = L^{-1} X_low^T D = U S V^T, A = R^{-1} U_r S_r, B = V_r^T
    (orthonormal rows; signs fixed so the largest |entry| of each row of B is positive).
    The top-r singular triplets of R M come from the top-r eigenvectors of its smaller Gram
    matrix C ((R M)^T R M if m <= d_in, else R M (R M)^T), found by one of:

    * "auto" (default): block Lanczos on C without forming it (`_top_right_singular`: a
      seeded random start block, full reorthogonalisation, Ritz triplets from the SVD of
      R M V), accepted only when every triplet's residual ||(R M)^T u - sigma v|| is
      <= 1e-12 sigma_1, checked explicitly; it costs a few products of R M with thin
      blocks where the spectrum decays past sigma_r, and gives up early (falling back to
      "gram") where it is flat there, e.g. on pure noise;
    * "gram": C formed, its top-r eigenvectors by `_top_eigvecs` (LAPACK dsyevx on CPU);
    * "svd": the exact reference (a full `torch.linalg.svd` of R M).

    Squaring R M costs accuracy only where sigma_r and sigma_{r+1} nearly tie (then the
    top-r subspace is itself ill-determined); on random and ill-conditioned problems all
    methods agree with "svd" to ~1e-9 and their objectives (eq. 4) to 1e-10 relative
    (tests/test_solver.py). All arithmetic is float64. The floor this is measured against
    (one Cholesky of Q + one triangular solve with m right-hand sides) is the first two
    steps of the body; scripts/bench.py times the whole against it at Qwen2.5-7B shapes
    (results/bench/bench.json, 2 threads on a 2-core machine: 1.7x the floor where Lanczos
    converges, 2.6-3.0x on pure noise, where C and its tridiagonalisation dominate).
    """
    _check_rank(rank, g.d_in, g.m)
    if method not in ("auto", "gram", "svd"):
        raise ValueError(f'method must be "auto", "gram" or "svd", got {method!r}')
    chol = _cholesky(g, gamma, lam)
    rm = torch.linalg.solve_triangular(chol, g.xtd, upper=False)  # R M
    if method == "svd":
        u, s, vh = torch.linalg.svd(rm, full_matrices=False)
        us, vh = u[:, :rank] * s[:rank], vh[:rank]
    else:
        side = rm if g.m <= g.d_in else rm.T          # [p, n], n = min(d_in, m)
        vecs = _top_right_singular(side, rank) if method == "auto" else None
        if vecs is None:
            vecs = _top_eigvecs(side.T @ side, rank)
        if g.m <= g.d_in:
            vh = vecs.T                                                      # V_r^T
            us = rm @ vecs                                                   # U_r S_r
        else:
            svh = vecs.T @ rm                                                # S_r V_r^T
            s = torch.linalg.vector_norm(svh, dim=1)
            vh = svh / s.where(s > 0, torch.ones_like(s)).unsqueeze(1)
            us = vecs * s
    sign = torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)))
    sign[sign == 0] = 1.0
    a = torch.linalg.solve_triangular(chol.T, us * sign.T, upper=True)
    return a.to(dtype), (vh * sign).to(dtype)


def _block_size(rank: int) -> int:
    """Lanczos block size for rank r: r, at least 8 (thinner blocks waste the matrix products)."""
    return max(rank, 8)


def _top_right_singular(a: Tensor, rank: int, *, tol: float = 1e-12, seed: int = 0,
                        max_basis: int | None = None) -> Tensor | None:
    """Top-`rank` right singular vectors [n, rank] of a [p, n], largest first (the leading
    eigenvectors of C = a^T a), by block Lanczos on C without forming it; None when that would
    not beat the exact Gram eigensolver (the caller then uses `_top_eigvecs`).

    Start: an orthonormalised Gaussian block [n, b] from a generator seeded with `seed`
    (b = `_block_size`), so the result is deterministic. Step j: W = a^T (a V_j), orthogonalised
    twice against all blocks so far (classical Gram-Schmidt), W = V_{j+1} H_{j+1} by QR, and
    V_{j+1} once more against V (so V stays orthonormal to round-off even where W lies almost
    in span V). A direction that adds nothing (the Krylov space became invariant, e.g.
    rank(a) < b) is replaced by a fresh random one. At sizes 2b, 3b, 4b, then every 1.5x, the
    Ritz triplets come from the SVD of a V = U S Y^T (no squaring: sigma_i and v_i = V y_i
    to round-off relative to sigma_1) and are tested: first with the Lanczos estimate
    ||a^T u_i - sigma_i v_i|| = ||H_{j+1} y_i,last block|| / sigma_i, then, if that passes,
    explicitly: max_i ||a^T u_i - sigma_i v_i|| <= tol * sigma_1. By Davis-Kahan each returned
    vector is then within tol * sigma_1 / gap_i of the exact one (gap_i: distance of sigma_i
    to the other singular values), as a full SVD is within eps * sigma_1 / gap_i.

    Budget: at most `max_basis` basis vectors, by default K = n/4 + n^2/(2p), where the
    Lanczos products (4pn flops per basis vector, thin and so about half as fast per flop)
    cost what the exact path does (C: 2pn^2 flops, its tridiagonalisation ~4n^3 flop
    equivalents, being half memory-bound). From 4b on, the residual's decay rate per basis
    vector so far is extrapolated; if it predicts more than the budget (a flat spectrum near
    sigma_r, e.g. pure noise), it gives up at once rather than at the budget.
    """
    p, n = a.shape
    b = _block_size(rank)
    kmax = min(n // 4 + n * n // (2 * p), n) if max_basis is None else min(max_basis, n)
    if 2 * b > kmax:
        return None
    opts = dict(dtype=_F64, device=a.device)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    a_t = a.T.contiguous()  # BLAS runs a^T @ X several times faster from a contiguous copy
    basis = torch.empty(n, kmax, **opts)                            # V = [V_0, V_1, ...]
    abasis = torch.empty(p, kmax, **opts)                           # a V
    basis[:, :b] = torch.linalg.qr(torch.randn(n, b, generator=gen, **opts)).Q
    abasis[:, :b] = a @ basis[:, :b]
    k, check_at, last = b, 2 * b, None
    while True:
        v_old = basis[:, :k]
        w = a_t @ abasis[:, k - b:k]                                # C V_j
        w_norm = torch.linalg.vector_norm(w, dim=0).max()
        for _ in range(2):
            w = w - v_old @ (v_old.T @ w)
        q, h_next = torch.linalg.qr(w)
        lost = h_next.diagonal().abs() <= n * torch.finfo(_F64).eps * w_norm
        if bool(lost.any()):
            q[:, lost] = torch.randn(n, int(lost.sum()), generator=gen, **opts)
            q = q - v_old @ (v_old.T @ q)
        q, fix = torch.linalg.qr(q - v_old @ (v_old.T @ q))
        h_next = fix @ h_next
        if k >= check_at or k + b > kmax:
            check_at = k + b if k < 4 * b else max(k + b, int(1.5 * k))
            u, sig, yh = torch.linalg.svd(abasis[:, :k], full_matrices=False)
            u, sig, y = u[:, :rank], sig[:rank], yh[:rank].T
            floor = torch.finfo(_F64).tiny
            target = tol * float(sig[0].clamp_min(floor))
            est = float((torch.linalg.vector_norm(h_next @ y[k - b:], dim=0) / sig.clamp_min(floor)).max())
            if est <= target:
                v = v_old @ y
                res = a_t @ u - v * sig
                if float(torch.linalg.vector_norm(res, dim=0).max()) <= target:
                    return v
            if k + b > kmax:
                return None
            est = max(est, target)   # passed the estimate but not the explicit check: no progress
            if last is not None and k >= 4 * b:
                rate = (math.log(est) - math.log(last[1])) / (k - last[0])
                if rate >= 0 or k + math.log(target / est) / rate > kmax:
                    return None
            last = (k, est)
        basis[:, k:k + b] = q
        abasis[:, k:k + b] = a @ q
        k += b


def _top_eigvecs(c: Tensor, rank: int) -> Tensor:
    """Eigenvectors [n, rank] of the symmetric c [n, n] for its `rank` largest eigenvalues,
    largest first. On CPU with scipy installed only those are computed (dsyevx: Householder
    tridiagonalisation, bisection, inverse iteration); else (GPU tensors, or no scipy) a
    full `torch.linalg.eigh`."""
    n = c.shape[0]
    if c.device.type == "cpu" and rank < n:
        try:
            from scipy.linalg import eigh as scipy_eigh
        except ImportError:
            scipy_eigh = None
        if scipy_eigh is not None:
            vecs = scipy_eigh(c.numpy(), subset_by_index=[n - rank, n - 1], driver="evx",
                              check_finite=False, overwrite_a=False)[1]
            return torch.from_numpy(vecs[:, ::-1].copy())
    return torch.linalg.eigh(c).eigenvectors[:, -rank:].flip(1)


def solve_from_gram(g: EditGram, *, rank: int, gamma: float, lam: float, method: str = "auto",
                    dtype: torch.dtype = _F64) -> Tensor:
    """The rank-r minimiser dW* [d_in, m] of eq. 4-8 (Theorem 4.1) from the Gram form."""
    a, b = low_rank_factors(g, rank=rank, gamma=gamma, lam=lam, method=method)
    return (a @ b).to(dtype)


def solve(x_low: Tensor, d: Tensor, x_safe: Tensor, *, rank: int, gamma: float, lam: float,
          dtype: torch.dtype = _F64) -> Tensor:
    """Theorem 4.1 from the matrices X_low [N_h, d_in], D [N_h, m], X_safe [N_s, d_in]."""
    return solve_from_gram(build_gram(x_low, d, x_safe), rank=rank, gamma=gamma, lam=lam,
                           dtype=dtype)


def naive_truncation(g: EditGram, *, rank: int, gamma: float, lam: float,
                     dtype: torch.dtype = _F64) -> Tensor:
    """Ablation baseline: rank-r SVD truncation of the unwhitened ridge solution M (not optimal)."""
    _check_rank(rank, g.d_in, g.m)
    u, s, vh = torch.linalg.svd(ridge(g, gamma=gamma, lam=lam), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(dtype)


def objective(dw: Tensor, g: EditGram, *, gamma: float, lam: float) -> float:
    """J(dW) of eq. 4-8, exactly (||D||^2 is kept in the Gram), in float64.

    J = tr(dW^T Q dW) - 2 tr(dW^T X_low^T D) + ||D||_F^2.
    """
    w = _f64(dw, "dW").to(g.xtd.device)
    if w.shape != g.xtd.shape:
        raise ValueError(f"shape mismatch: dW {tuple(w.shape)} must be [d_in, m] = {tuple(g.xtd.shape)}")
    _check_weights(gamma, lam)
    qw = g.xtx_low @ w + gamma * (g.xtx_safe @ w) + lam * w
    return float((w * qw).sum() - 2.0 * (w * g.xtd).sum() + g.dtd)


def nullspace_basis(xtx_safe: Tensor, *, threshold: float = 1e-6, relative: bool = True) -> Tensor:
    """Orthonormal basis U0 [d_in, k] of the eigenvectors of X_safe^T X_safe with eigenvalue
    <= threshold (times the largest eigenvalue when `relative`, the default).

    Any dW = U0 Y then leaks ||X_safe dW||_F <= sqrt(threshold * lambda_max) ||dW||_F
    (relative: sqrt(threshold) ||X_safe||_2 ||dW||_F).
    """
    c = _f64(xtx_safe, "X_safe^T X_safe")
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"X_safe^T X_safe must be square, got {tuple(c.shape)}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    evals, evecs = torch.linalg.eigh(0.5 * (c + c.T))
    cut = threshold * evals[-1].clamp_min(0).item() if relative else threshold
    keep = evals <= cut
    if not bool(keep.any()):
        raise ValueError(f"X_safe^T X_safe has no eigenvalue <= {cut:.3g}: the null space is empty; "
                         "raise threshold, or use fewer/lower-dimensional anchors (or the soft gamma "
                         "variant, solve_from_gram)")
    return evecs[:, keep]


def solve_nullspace(g: EditGram | tuple[Tensor, Tensor, Tensor], *, rank: int, lam: float,
                    threshold: float = 1e-6, relative: bool = True,
                    dtype: torch.dtype = _F64) -> Tensor:
    """Hard null-space variant (AlphaEdit-style): dW = P Z with P = U0 U0^T (`nullspace_basis`),
    so X_safe dW = 0 up to the threshold's leak.

    With dW = U0 Y the problem min ||X_low U0 Y - D||^2 + lam ||Y||^2, rank(Y) <= r is again
    Theorem 4.1 in k = dim(U0) coordinates (Gram U0^T X_low^T X_low U0, U0^T X_low^T D).
    `g` may be an EditGram or the tuple (X_low, D, X_safe). The effective rank is at most k.
    """
    if isinstance(g, tuple):
        g = build_gram(*g)
    _check_rank(rank, g.d_in, g.m)
    u0 = nullspace_basis(g.xtx_safe, threshold=threshold, relative=relative)
    k = u0.shape[1]
    sub = EditGram(u0.T @ g.xtx_low @ u0, u0.T @ g.xtd, torch.zeros(k, k, dtype=_F64,
                   device=u0.device), g.dtd, g.n_low, g.n_safe)
    a, b = low_rank_factors(sub, rank=min(rank, k, g.m), gamma=0.0, lam=lam)
    return ((u0 @ a) @ b).to(dtype)


def _f64(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    t = t.to(_F64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _check_rank(rank: int, d_in: int, m: int) -> None:
    top = min(d_in, m)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1 (at most min(d_in, m) = {top}), got {rank!r}")
    if rank > top:
        raise ValueError(f"rank too large: at most min(d_in, m) = min({d_in}, {m}) = {top}, got {rank}")


def _check_weights(gamma: float, lam: float) -> None:
    if not (gamma >= 0 and lam >= 0):
        raise ValueError(f"gamma and lam must be >= 0 (finite), got gamma={gamma}, lam={lam}")


def _cholesky(g: EditGram, gamma: float, lam: float) -> Tensor:
    """Lower Cholesky factor L of Q = X_low^T X_low + gamma X_safe^T X_safe + lam I (Q = L L^T)."""
    _check_weights(gamma, lam)
    d = g.d_in
    if g.xtx_low.shape != (d, d) or g.xtx_safe.shape != (d, d):
        raise ValueError(f"shape mismatch: xtx_low {tuple(g.xtx_low.shape)}, xtx_safe "
                         f"{tuple(g.xtx_safe.shape)} must both be [d_in, d_in] = [{d}, {d}]")
    q = g.xtx_low + gamma * g.xtx_safe
    q = q + q.T                      # symmetrised: 0.5 (q + q^T) + lam I, with no d x d identity built
    q.mul_(0.5).diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(q)
    # numerically singular Q can still factor with round-off pivots: treat those as failures too
    tiny = d * torch.finfo(_F64).eps * q.diagonal().abs().max()
    if int(info) != 0 or bool((chol.diagonal() ** 2 <= tiny).any()):
        raise ValueError(f"Q = X_low^T X_low + gamma X_safe^T X_safe + lam I is not positive definite "
                         f"(lam={lam}, gamma={gamma}); raise lam (e.g. lam=1e-3 * trace(Q)/d_in)")
    return chol
