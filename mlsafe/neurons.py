"""Safety-neuron sets (paper Sec. 3.1, App. B, eq. 13-16; after SafeNeuron, arXiv 2602.12158).

For one language and one layer, from per-neuron activation statistics on harmful (h) and
harmless (s) prompts:

    Delta_j = mean_h(a_j) - mean_s(a_j)
    z_j     = (Delta_j - mean_k Delta_k) / std_k Delta_k            (eq. 13; population std)
    d_j     = Delta_j / s_pooled_j,                                  (eq. 14-15; Cohen's d)
              s_pooled_j^2 = ((n_h-1) s_h,j^2 + (n_s-1) s_s,j^2) / (n_h + n_s - 2)
    S_mag = {j : z_j > tau_mag},  S_stat = {j : d_j > tau_stat},  S_safety = S_mag | S_stat  (eq. 16)

Both tests are one-sided, as in the paper: a safety neuron fires more on harmful prompts.
`var_*` are unbiased sample variances (divisor n - 1). Zero variance: if std_k Delta_k = 0
every z_j is 0 (no neuron stands out); if s_pooled_j = 0, d_j = 0 when Delta_j = 0 (a dead or
constant neuron) and +-inf otherwise (perfect separation, so it enters S_stat when positive).
Statistics are float64. Also: Jaccard overlaps (eq. 2), a random control set of the same
size, and a linear-probe alternative (NeuroStrike-style) for the ablation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch
from torch import Tensor

_F64 = torch.float64


class MomentsLike(Protocol):
    """Anything with per-neuron .mean and .var [d_ff] (unbiased) and a row count .n."""

    mean: Tensor
    var: Tensor
    n: int


@dataclass
class NeuronSets:
    """One layer's statistics [d_ff] and its sets (sorted LongTensors of neuron indices)."""

    delta: Tensor
    z: Tensor
    cohens_d: Tensor
    s_mag: Tensor
    s_stat: Tensor
    s_safety: Tensor
    tau_mag: float
    tau_stat: float


def safety_neurons(mean_h: Tensor, var_h: Tensor, n_h: int, mean_s: Tensor, var_s: Tensor, n_s: int,
                   *, tau_mag: float = 2.0, tau_stat: float = 1.0) -> NeuronSets:
    """S_safety = S_mag | S_stat of one layer (eq. 13-16) from per-neuron moments."""
    mh, vh, ms, vs = (_vec(t, name) for t, name in
                      ((mean_h, "mean_h"), (var_h, "var_h"), (mean_s, "mean_s"), (var_s, "var_s")))
    if not (mh.shape == vh.shape == ms.shape == vs.shape):
        raise ValueError(f"shape mismatch: mean_h {tuple(mh.shape)}, var_h {tuple(vh.shape)}, "
                         f"mean_s {tuple(ms.shape)}, var_s {tuple(vs.shape)} must all be [d_ff]")
    if bool((vh < 0).any() or (vs < 0).any()):
        raise ValueError("variances must be >= 0")
    if n_h < 1 or n_s < 1 or n_h + n_s < 3:
        raise ValueError(f"need n_h >= 1, n_s >= 1 and n_h + n_s >= 3 prompts, got n_h={n_h}, n_s={n_s}")
    delta = mh - ms
    z = _zscore(delta)
    d = cohens_d(delta, vh, n_h, vs, n_s)
    s_mag = torch.nonzero(z > tau_mag).flatten()
    s_stat = torch.nonzero(d > tau_stat).flatten()
    s_safety = torch.nonzero((z > tau_mag) | (d > tau_stat)).flatten()
    return NeuronSets(delta, z, d, s_mag, s_stat, s_safety, float(tau_mag), float(tau_stat))


def safety_neurons_from_moments(harmful: MomentsLike, harmless: MomentsLike, **taus: float) -> NeuronSets:
    """`safety_neurons` from two streamed-moment objects (.mean, .var unbiased, .n)."""
    return safety_neurons(harmful.mean, harmful.var, int(harmful.n),
                          harmless.mean, harmless.var, int(harmless.n), **taus)


def cohens_d(delta: Tensor, var_h: Tensor, n_h: int, var_s: Tensor, n_s: int) -> Tensor:
    """Cohen's d with the pooled standard deviation (eq. 14-15); zero-variance rule in the module doc."""
    pooled = torch.sqrt(((n_h - 1) * var_h.to(_F64) + (n_s - 1) * var_s.to(_F64)) / (n_h + n_s - 2))
    delta = delta.to(_F64)
    degenerate = torch.where(delta == 0, torch.zeros_like(delta), torch.sign(delta) * torch.inf)
    return torch.where(pooled > 0, delta / pooled.where(pooled > 0, torch.ones_like(pooled)), degenerate)


def jaccard(a: Iterable[int] | Tensor, b: Iterable[int] | Tensor) -> float:
    """|A & B| / |A | B| (eq. 2). Two empty sets give NaN (nothing to compare; shown blank)."""
    sa, sb = _as_set(a), _as_set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else float("nan")


def overlap_matrix(sets: dict[str, Tensor]) -> tuple[list[str], Tensor]:
    """Pairwise Jaccard overlaps [L, L] (float64) in the dict's order of languages."""
    langs = list(sets)
    out = torch.empty(len(langs), len(langs), dtype=_F64)
    for i, li in enumerate(langs):
        for j, lj in enumerate(langs):
            out[i, j] = jaccard(sets[li], sets[lj])
    return langs, out


def contrast_overlap(sets_a: NeuronSets, sets_b: NeuronSets, harmful: MomentsLike, harmless_a: MomentsLike,
                     harmless_b: MomentsLike) -> dict:
    """How much of one safety set survives a change of the harmless contrast (issue 13's lead 3).

    sets_a = S(harmful vs harmless_a), sets_b = S(harmful vs harmless_b), the same harmful
    moments. Returns the sizes of S_a, S_b and S_a & S_b, ``format_share`` = |S_a - S_b| / |S_a|
    (the part of S_a that separates harmful prompts from harmless_a's kind but not from
    harmless_b's), their Jaccard overlap, the share of the layer with Cohen's d > 1 under each
    contrast, and ``near_position``: per neuron of S_a, (mean_b - mean_a) / (mean_harmful - mean_a),
    where harmless_b's mean sits between harmless_a's (0) and the harmful mean (1); its median,
    its mean (clamped to [-5, 5]) and the share above 1/2."""
    s_a, s_b = sets_a.s_safety, sets_b.s_safety
    both = set(s_a.tolist()) & set(s_b.tolist())
    row = {"d_ff": int(sets_a.delta.numel()), "s_std": int(s_a.numel()), "s_near": int(s_b.numel()),
           "s_both": len(both), "format_share": 1.0 - len(both) / s_a.numel() if s_a.numel() else None,
           "jaccard": jaccard(s_a, s_b),
           "cohens_d_gt1_share": {"std": float((sets_a.cohens_d > 1).double().mean()),
                                  "near": float((sets_b.cohens_d > 1).double().mean())}}
    if s_a.numel():
        mh, ma, mb = (_vec(m.mean, name)[s_a] for m, name in
                      ((harmful, "harmful"), (harmless_a, "harmless_a"), (harmless_b, "harmless_b")))
        pos = (mb - ma) / (mh - ma)
        row["near_position"] = {"median": float(pos.median()), "mean": float(pos.clamp(-5, 5).mean()),
                                "share_above_half": float((pos > 0.5).double().mean())}
    return row


def random_like(s: Tensor, d_ff: int, generator: torch.Generator | int, *,
                disjoint: bool = False) -> Tensor:
    """A random sorted set of len(s) distinct neurons in [0, d_ff) (the random-neuron control).

    `generator` is a torch.Generator or an int seed; `disjoint=True` avoids the neurons in s.
    """
    gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    chosen = _as_set(s)
    if any(not 0 <= j < d_ff for j in chosen):
        raise ValueError(f"neuron indices must lie in [0, d_ff) = [0, {d_ff})")
    pool = torch.tensor(sorted(set(range(d_ff)) - chosen), dtype=torch.long) if disjoint \
        else torch.arange(d_ff)
    if len(chosen) > len(pool):
        raise ValueError(f"cannot draw {len(chosen)} neurons from {len(pool)} candidates; "
                         "use disjoint=False or a smaller set")
    return pool[torch.randperm(len(pool), generator=gen)[:len(chosen)]].sort().values


def probe_neurons(acts_h: Tensor, acts_s: Tensor, k: int, *, l2: float = 1e-2,
                  max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Linear-probe neuron selection (NeuroStrike-style ablation): returns (top-k indices sorted,
    probe weights [d_ff]).

    Fits an L2-regularised logistic regression harmful (1) vs harmless (0) on standardised
    activations [n, d_ff] (full-batch L-BFGS, float64, deterministic), and keeps the k neurons
    with the largest positive weight (those that push towards "harmful", as S_safety does).
    For streamed statistics only, use `probe_neurons_diagonal`.
    """
    h, s = acts_h.to(_F64), acts_s.to(_F64)
    if h.ndim != 2 or s.ndim != 2 or h.shape[1] != s.shape[1]:
        raise ValueError(f"shape mismatch: acts_h {tuple(h.shape)} and acts_s {tuple(s.shape)} "
                         "must be [n_h, d_ff] and [n_s, d_ff]")
    _check_k(k, h.shape[1])
    x = torch.cat([h, s])
    y = torch.cat([torch.ones(len(h), dtype=_F64), torch.zeros(len(s), dtype=_F64)])
    std = x.std(dim=0)
    x = (x - x.mean(dim=0)) / std.where(std > 0, torch.ones_like(std))
    w = torch.zeros(x.shape[1] + 1, dtype=_F64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) \
            + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = w.detach()[:-1]
    return weights.topk(k).indices.sort().values, weights


def probe_neurons_diagonal(mean_h: Tensor, var_h: Tensor, n_h: int, mean_s: Tensor, var_s: Tensor,
                           n_s: int, k: int) -> Tensor:
    """The linear probe under a diagonal-Gaussian model (LDA with diagonal pooled covariance),
    computable from streamed moments: its weights on standardised activations are exactly
    Cohen's d (eq. 14-15), so this is the top-k by d (sorted indices)."""
    sets = safety_neurons(mean_h, var_h, n_h, mean_s, var_s, n_s)
    _check_k(k, sets.cohens_d.numel())
    return sets.cohens_d.topk(k).indices.sort().values


def _check_k(k: int, d_ff: int) -> None:
    if not 1 <= k <= d_ff:
        raise ValueError(f"k must be in [1, d_ff] = [1, {d_ff}], got {k}")


def _zscore(delta: Tensor) -> Tensor:
    std = delta.std(correction=0)
    return (delta - delta.mean()) / std if std > 0 else torch.zeros_like(delta)


def _vec(t: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(t).to(_F64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor [d_ff] (one layer), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _as_set(s: Iterable[int] | Tensor) -> set[int]:
    return set(s.flatten().tolist()) if isinstance(s, Tensor) else {int(j) for j in s}
