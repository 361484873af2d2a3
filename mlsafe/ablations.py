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

Each ablation is a small function over one shared `_Table` (the pipeline's Context: model,
suite, config, anchors, the fitted edit and its statistics; the grid options; the rows),
registered with `register_ablation(name)`; ABLATIONS is the registry's order.

`ablations.csv` is long format, one row per (ablation, value, lang): ablation, value, lang,
asr, utility, over_refusal, margin, layer, n_neurons, rank, note.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mlsafe import arch, neurons, transfer
from mlsafe.langs import parse_targets
from mlsafe.registry import registrar
from mlsafe.pipeline import METRICS, Context, Suite
from mlsafe.results import write_atomic

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


@dataclass
class _Table:
    """The shared state of one `run_ablations` call: the Context, the grid options, the rows."""

    ctx: Context
    ranks: Sequence[int] = RANKS
    taus: Sequence[tuple[float, float]] = TAUS
    fractions: Sequence[float] = ANCHOR_FRACTIONS
    max_layers: int = 3
    rows: list[dict] = field(default_factory=list)

    def add(self, ablation: str, value, metrics: dict, layer: int, n: int, rank: int | None, note: str = ""):
        for lang, m in metrics.items():
            self.rows.append({"ablation": ablation, "value": value, "lang": lang, **{k: m[k] for k in METRICS},
                              "layer": layer, "n_neurons": n, "rank": rank, "note": note})

    def evaluate(self, edit) -> dict:
        with edit.applied(self.ctx.model):
            return self.ctx.metrics()

    def nan(self) -> dict:
        """NaN metrics for every evaluated language, in the suite's order (a row with no edit)."""
        langs = dict.fromkeys(p.lang for p in self.ctx.suite.eval_harmful)
        return {lang: {k: float("nan") for k in METRICS} for lang in langs}

    def solve(self, cfg: transfer.EditConfig, at: int | None = None, ix=None, stats=None):
        """The edit re-solved with `cfg` at layer `at` on neurons `ix` from `stats` (default: the
        fitted edit's layer, neurons and statistics)."""
        r = self.ctx.report
        return transfer.build_edit(self.ctx.model, r.layer if at is None else at,
                                   self.ctx.edit.neurons if ix is None else ix, r.stats if stats is None else stats,
                                   cfg)

    @property
    def m(self) -> int:
        return int(self.ctx.edit.neurons.numel())


def _gamma_only_lam(model, layer, idx, st, cfg) -> float:
    for lam in LAM_FLOORS:
        try:
            transfer.build_edit(model, layer, idx, st, dataclasses.replace(cfg, lam=lam))
            return lam
        except ValueError:
            continue
    raise ValueError(f"Q is not positive definite for gamma={cfg.gamma} and any lambda in {LAM_FLOORS}")


#: ablation name -> function(t: _Table) that adds its rows; filled by `register_ablation`, run
#: in this order (= ABLATIONS, the order of ablations.csv).
REGISTRY: dict[str, Callable[[_Table], None]] = {}


#: Decorator: register `fn(t: _Table)` as the ablation `name` (once).
register_ablation = registrar(REGISTRY, "ablation")


@register_ablation("rank")
def _rank(t: _Table) -> None:
    cfg, layer, m = t.ctx.cfg, t.ctx.report.layer, t.m
    d = arch.d_model(t.ctx.model)
    done: dict[int, dict] = {}
    for r in t.ranks:
        eff, note = clip_rank(r, d, m)
        if eff not in done:
            done[eff] = t.evaluate(t.solve(dataclasses.replace(cfg, rank=eff)))
        t.add("rank", r, done[eff], layer, m, eff, note)


@register_ablation("anchor_terms")
def _anchor_terms(t: _Table) -> None:
    c = t.ctx
    cfg, layer = c.cfg, c.report.layer
    lam0 = _gamma_only_lam(c.model, layer, c.edit.neurons, c.report.stats, cfg)
    terms = {"both": (cfg.gamma, cfg.lam), "gamma_only": (cfg.gamma, lam0), "lambda_only": (0.0, cfg.lam)}
    for name, (g, lam) in terms.items():
        t.add("anchor_terms", name, t.evaluate(t.solve(dataclasses.replace(cfg, gamma=g, lam=lam))), layer, t.m,
              cfg.rank, f"gamma={g:g}, lambda={lam:g}")


@register_ablation("tau")
def _tau(t: _Table) -> None:
    c = t.ctx
    cfg, layer, st = c.cfg, c.report.layer, c.report.stats
    d = arch.d_model(c.model)
    for tm, ts in t.taus:
        sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=tm, tau_stat=ts)
        n = int(sets.s_safety.numel())
        metrics = t.evaluate(t.solve(cfg, ix=sets.s_safety)) if n else t.nan()
        t.add("tau", f"{tm:g}/{ts:g}", metrics, layer, n, min(cfg.rank, d, n) if n else None,
              "" if n else "empty neuron set: no edit")


@register_ablation("layer")
def _layer(t: _Table) -> None:
    c = t.ctx
    layers = [x["layer"] for x in c.report.candidates]
    stats = transfer.collect_stats(c.model, c.tokenizer, c.anchors, c.cfg, layers)
    for x in layers:
        sets = c.report.neuron_sets[x]
        n = int(sets.s_safety.numel())
        metrics = t.evaluate(t.solve(c.cfg, at=x, ix=sets.s_safety, stats=stats[x])) if n else t.nan()
        t.add("layer", x, metrics, x, n, c.cfg.rank, ("chosen" if x == c.report.layer else "") if n else "empty neuron set")


@register_ablation("n_anchors")
def _n_anchors(t: _Table) -> None:
    c = t.ctx
    cfg, layer, anchors = c.cfg, c.report.layer, c.anchors
    for f in t.fractions:
        sub = transfer.Anchors(subsample(anchors.fit_harmful, f, c.seed), subsample(anchors.fit_harmless, f, c.seed),
                               anchors.val_harmful, anchors.val_harmless)
        n_groups = len({p.parallel_id for p in sub.fit_harmful})
        try:
            s2 = transfer.collect_stats(c.model, c.tokenizer, sub, cfg, [layer])[layer]
            sets = neurons.safety_neurons_from_moments(s2.acts_harm, s2.acts_safe, tau_mag=cfg.tau_mag,
                                                       tau_stat=cfg.tau_stat)
            n = int(sets.s_safety.numel())
            metrics = t.evaluate(t.solve(cfg, ix=sets.s_safety, stats=s2)) if n else t.nan()
            note = "" if n else "empty neuron set"
        except ValueError as err:
            n, metrics, note = 0, t.nan(), f"no edit: {err}"
        t.add("n_anchors", n_groups, metrics, layer, n, cfg.rank, note)


@register_ablation("multi_layer")
def _multi_layer(t: _Table) -> None:
    c = t.ctx
    cfg, model = c.cfg, c.model
    order = [x["layer"] for x in sorted(c.report.candidates, key=lambda x: -x["score"]) if x["n_neurons"] > 0]
    for k in range(1, min(t.max_layers, len(order)) + 1):
        chosen = order[:k]
        patches, sizes = [], []
        try:
            for x in chosen:
                s2 = transfer.collect_stats(model, c.tokenizer, c.anchors, cfg, [x])[x]
                sets = neurons.safety_neurons_from_moments(s2.acts_harm, s2.acts_safe, tau_mag=cfg.tau_mag,
                                                           tau_stat=cfg.tau_stat)
                sizes.append(int(sets.s_safety.numel()))
                if sizes[-1]:
                    patches.append(t.solve(cfg, at=x, ix=sets.s_safety, stats=s2).apply(model))
            metrics = c.metrics()
        finally:
            for patch in reversed(patches):
                patch.revert()
        t.add("multi_layer", k, metrics, chosen[0], sum(sizes), cfg.rank,
              "layers " + ",".join(map(str, chosen)) + " (|S| " + ",".join(map(str, sizes)) + ")")


ABLATIONS = tuple(REGISTRY)


def run_ablations(lm, suite: Suite, targets: str | Sequence[str], seed: int = 0,
                  out_dir: Path | None = None, *, ablations: Sequence[str] = ABLATIONS,
                  ranks: Sequence[int] = RANKS, taus: Sequence[tuple[float, float]] = TAUS,
                  fractions: Sequence[float] = ANCHOR_FRACTIONS, max_layers: int = 3,
                  context: Context | None = None) -> pd.DataFrame:
    """Every ablation in `ablations` (module docstring; run in ABLATIONS order) -> long
    DataFrame; writes out_dir/ablations.csv. `context`: a Context.fit of the same model,
    suite, targets and seed when the caller holds one (the edit is then not fitted again)."""
    targets = parse_targets(targets)
    bad = [a for a in ablations if a not in REGISTRY]
    if bad:
        raise ValueError(f"unknown ablations {bad}; choose from {ABLATIONS}")
    ctx = context or Context.fit(lm, suite, targets, seed)
    t = _Table(ctx, ranks=ranks, taus=taus, fractions=fractions, max_layers=max_layers)
    for name, fn in REGISTRY.items():
        if name in ablations:
            fn(t)
    df = pd.DataFrame(t.rows, columns=list(COLUMNS))
    if out_dir is not None:
        write_atomic(Path(out_dir) / "ablations.csv", df.to_csv(index=False))
    return df
