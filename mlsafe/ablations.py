"""Ablations of the paper's edit (Tables 2-4 and the OPEN choices); writes `ablations.csv`.

Each ablation changes one thing of the edit fitted by `transfer.fit` (its layer, neurons
and streamed statistics are the reference) and evaluates on the held-out eval set:

  rank         r in 4 ... 512 (Table 4); r is clipped to min(d_in, |S|), the most the layer
               allows, and the row's note says so (identical clipped ranks are solved once).
  anchor_terms both terms, the utility anchor only (gamma, lambda -> 0) and the ridge term
               only (gamma = 0) (Table 3). "gamma only" uses lambda = 0 when Q is positive
               definite without it, else the smallest of `LAM_FLOORS` that makes it so.
  tau          (tau_mag, tau_stat) pairs of eq. 13-16, i.e. the neuron count |S|.
  layer        each candidate layer, with its own English safety set (the layer is OPEN).
  n_anchors    a seeded subset of the fit anchors' parallel groups (data efficiency); value =
               harmful anchor requests kept (each with all its translations).
  multi_layer  the k best-scoring layers edited in sequence (the paper's future work): layer
               i's statistics are collected on the model with layers < i already edited.

`ablations.csv` is long format, one row per (ablation, value, lang): ablation, value, lang,
asr, utility, over_refusal, margin, layer, n_neurons, rank, note.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mlsafe import arch, neurons, pipeline, transfer
from mlsafe.baselines.run import METRICS, lang_metrics
from mlsafe.langs import parse_targets
from mlsafe.results import write_atomic

ABLATIONS = ("rank", "anchor_terms", "tau", "layer", "n_anchors", "multi_layer")
RANKS = (4, 8, 16, 32, 64, 128, 256, 512)
TAUS = ((1.0, 0.5), (1.5, 0.75), (2.0, 1.0), (3.0, 1.5), (4.0, 2.0))
ANCHOR_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
LAM_FLOORS = (0.0, 1e-8, 1e-6, 1e-4)
COLUMNS = ("ablation", "value", "lang", *METRICS, "layer", "n_neurons", "rank", "note")
#: Our (ablation, value) for each row of the paper's Tables 2-3 (`mlsafe.paper.ABLATIONS`);
#: the probe row is the `probe_neurons` baseline of baselines.csv.
PAPER_ROWS = {
    "both anchor terms (gamma and lambda)": ("anchor_terms", "both"),
    "utility anchor (gamma) only": ("anchor_terms", "gamma_only"),
    "ridge (lambda) only": ("anchor_terms", "lambda_only"),
    "linear-probe neurons (NeuroStrike)": ("baseline", "probe_neurons"),
}


def clip_rank(rank: int, d_in: int, m: int) -> tuple[int, str]:
    """(effective rank, note): rank clipped to min(d_in, m) = the most a d_in x m update has."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    top = min(d_in, m)
    return (rank, "") if rank <= top else (top, f"clipped to {top} = min(d_in={d_in}, |S|={m})")


def subsample(prompts: Sequence, fraction: float, seed: int) -> list:
    """A seeded subset of whole parallel groups (at least one group)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    ids = sorted({p.parallel_id for p in prompts})
    keep = set(random.Random(seed).sample(ids, max(1, round(len(ids) * fraction))))
    return [p for p in prompts if p.parallel_id in keep]


class _Table:
    def __init__(self, lm, suite):
        self.lm, self.suite, self.rows = lm, suite, []

    def add(self, ablation: str, value, metrics: dict, layer: int, n: int, rank: int | None, note: str = ""):
        for lang, m in metrics.items():
            self.rows.append({"ablation": ablation, "value": value, "lang": lang, **{k: m[k] for k in METRICS},
                              "layer": layer, "n_neurons": n, "rank": rank, "note": note})

    def evaluate(self, edit) -> dict:
        with edit.applied(self.lm.model):
            return lang_metrics(self.lm, self.suite)

    def nan(self) -> dict:
        return {lang: {k: float("nan") for k in METRICS} for lang in {p.lang for p in self.suite.eval_harmful}}


def _gamma_only_lam(model, layer, idx, st, cfg) -> float:
    for lam in LAM_FLOORS:
        try:
            transfer.build_edit(model, layer, idx, st, dataclasses.replace(cfg, lam=lam))
            return lam
        except ValueError:
            continue
    raise ValueError(f"Q is not positive definite for gamma={cfg.gamma} and any lambda in {LAM_FLOORS}")


def run_ablations(lm, suite: pipeline.Suite, targets: str | Sequence[str], seed: int = 0,
                  out_dir: Path | None = None, *, ablations: Sequence[str] = ABLATIONS,
                  ranks: Sequence[int] = RANKS, taus: Sequence[tuple[float, float]] = TAUS,
                  fractions: Sequence[float] = ANCHOR_FRACTIONS, max_layers: int = 3) -> pd.DataFrame:
    """Every ablation in `ablations` (module docstring) -> long DataFrame; writes out_dir/ablations.csv."""
    targets = parse_targets(targets)
    cfg, margin, anchors = pipeline.experiment_setup(lm, suite, targets, seed, chosen=ablations, known=ABLATIONS,
                                                    what="ablations")
    model, tok = lm.model, lm.tokenizer
    edit, report = transfer.fit(model, tok, suite.anchors_harmful, suite.anchors_harmless, cfg, margin=margin)
    layer, st, idx = report.layer, report.stats, edit.neurons
    d, m = arch.d_model(model), int(idx.numel())
    t = _Table(lm, suite)

    def solve(c, at=layer, ix=idx, stats=st):
        return transfer.build_edit(model, at, ix, stats, c)

    if "rank" in ablations:
        done: dict[int, dict] = {}
        for r in ranks:
            eff, note = clip_rank(r, d, m)
            if eff not in done:
                done[eff] = t.evaluate(solve(dataclasses.replace(cfg, rank=eff)))
            t.add("rank", r, done[eff], layer, m, eff, note)

    if "anchor_terms" in ablations:
        lam0 = _gamma_only_lam(model, layer, idx, st, cfg)
        terms = {"both": (cfg.gamma, cfg.lam), "gamma_only": (cfg.gamma, lam0), "lambda_only": (0.0, cfg.lam)}
        for name, (g, lam) in terms.items():
            t.add("anchor_terms", name, t.evaluate(solve(dataclasses.replace(cfg, gamma=g, lam=lam))), layer, m,
                  cfg.rank, f"gamma={g:g}, lambda={lam:g}")

    if "tau" in ablations:
        for tm, ts in taus:
            sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=tm, tau_stat=ts)
            n = int(sets.s_safety.numel())
            metrics = t.evaluate(solve(cfg, ix=sets.s_safety)) if n else t.nan()
            t.add("tau", f"{tm:g}/{ts:g}", metrics, layer, n, min(cfg.rank, d, n) if n else None,
                  "" if n else "empty neuron set: no edit")

    if "layer" in ablations:
        layers = [c["layer"] for c in report.candidates]
        stats = transfer.collect_stats(model, tok, anchors, cfg, layers)
        for x in layers:
            sets = report.neuron_sets[x]
            n = int(sets.s_safety.numel())
            metrics = t.evaluate(solve(cfg, at=x, ix=sets.s_safety, stats=stats[x])) if n else t.nan()
            t.add("layer", x, metrics, x, n, cfg.rank, ("chosen" if x == layer else "") if n else "empty neuron set")

    if "n_anchors" in ablations:
        for f in fractions:
            sub = transfer.Anchors(subsample(anchors.fit_harmful, f, seed), subsample(anchors.fit_harmless, f, seed),
                                   anchors.val_harmful, anchors.val_harmless)
            n_groups = len({p.parallel_id for p in sub.fit_harmful})
            try:
                s2 = transfer.collect_stats(model, tok, sub, cfg, [layer])[layer]
                sets = neurons.safety_neurons_from_moments(s2.acts_harm, s2.acts_safe, tau_mag=cfg.tau_mag,
                                                           tau_stat=cfg.tau_stat)
                n = int(sets.s_safety.numel())
                metrics = t.evaluate(solve(cfg, ix=sets.s_safety, stats=s2)) if n else t.nan()
                note = "" if n else "empty neuron set"
            except ValueError as err:
                n, metrics, note = 0, t.nan(), f"no edit: {err}"
            t.add("n_anchors", n_groups, metrics, layer, n, cfg.rank, note)

    if "multi_layer" in ablations:
        order = [c["layer"] for c in sorted(report.candidates, key=lambda c: -c["score"]) if c["n_neurons"] > 0]
        for k in range(1, min(max_layers, len(order)) + 1):
            chosen = order[:k]
            patches, sizes = [], []
            try:
                for x in chosen:
                    s2 = transfer.collect_stats(model, tok, anchors, cfg, [x])[x]
                    sets = neurons.safety_neurons_from_moments(s2.acts_harm, s2.acts_safe, tau_mag=cfg.tau_mag,
                                                               tau_stat=cfg.tau_stat)
                    sizes.append(int(sets.s_safety.numel()))
                    if sizes[-1]:
                        patches.append(solve(cfg, at=x, ix=sets.s_safety, stats=s2).apply(model))
                metrics = lang_metrics(lm, suite)
            finally:
                for p in reversed(patches):
                    p.revert()
            t.add("multi_layer", k, metrics, chosen[0], sum(sizes), cfg.rank,
                  "layers " + ",".join(map(str, chosen)) + " (|S| " + ",".join(map(str, sizes)) + ")")

    df = pd.DataFrame(t.rows, columns=list(COLUMNS))
    if out_dir is not None:
        write_atomic(Path(out_dir) / "ablations.csv", df.to_csv(index=False))
    return df
