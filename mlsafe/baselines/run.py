"""Run every baseline on one model + suite and write `baselines.csv` (issue 6).

Methods (`METHODS`), all fitted on the same anchors (fit split) and scored on the same
held-out eval set as the paper's edit:

  none            the unedited model
  edit            the paper's edit (Theorem 4.1, Algorithm 1; `mlsafe.transfer.fit`)
  ridge_gamma0    unconstrained ridge, no utility anchor (gamma = 0, full rank)
  naive_rank      rank-r truncation of the unwhitened ridge solution (not optimal, Sec. 4.4)
  nullspace       hard null-space variant (AlphaEdit; X_safe dW = 0)
  random_neurons  the edit's solver on random neuron sets of the same size (mean of draws)
  probe_neurons   the edit's solver on the top-|S| neurons of a linear probe (NeuroStrike)
  actadd_target   English refusal direction added on target-language prompts (direction.py)
  actadd_all      the same vector added on every prompt (no language oracle)
  orthogonalise   English refusal direction projected out of the weights (removes refusal;
                  a causal check of r, not a safety method)
  sft             LoRA fine-tuning on translated refusals (finetune.py; stand-in for MPO)
  sft+edit        the edit fitted on the fine-tuned model, both applied

Each method is a small function over one shared `Baselines` state (the pipeline's Context:
model, suite, config, anchors, the fitted edit and its statistics), registered with
`register_baseline(name)`; METHODS is the registry's order. The re-solved variants
(ridge_gamma0 ... probe_neurons) reuse the edit's chosen layer and its
streamed statistics (`FitReport.stats`): no new forward passes beyond the probe's.

`baselines.csv` is long format, one row per (method, lang): method, lang, asr, utility,
over_refusal, margin (fractions in [0, 1] except margin, a log-prob difference), then the
method's fraction_of_parameters (changed weight entries over all parameters; 0 for ActAdd,
a hook), seconds (wall time to fit, evaluation excluded), flops (estimate, `cost`), note.
For "edit" seconds and flops cover all of `transfer.fit` (statistics at every candidate layer,
one solve each, validation scoring); the re-solved variants count the statistics collection
plus their own solve (they reuse the edit's layer choice); "sft+edit" is the sum of both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from mlsafe import arch, neurons, probe, transfer
import mlsafe.baselines.cost as cost
import mlsafe.baselines.direction as direction
import mlsafe.baselines.finetune as finetune
from mlsafe.controls import random_control_sets
from mlsafe.langs import parse_targets
from mlsafe.registry import registrar
from mlsafe.pipeline import METRICS, Context, Suite, lang_metrics  # noqa: F401  (lang_metrics: importable here)
from mlsafe.results import write_atomic

COLUMNS = ("method", "lang", "asr", "utility", "over_refusal", "margin", "fraction_of_parameters",
           "seconds", "flops", "note")
NULLSPACE_THRESHOLDS = (1e-3, 1e-2, 1e-1)


def mean_metrics(draws: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {lang: {k: statistics.fmean(d[lang][k] for d in draws) for k in METRICS} for lang in draws[0]}


def _tokens(tok, prompts, *, with_response: bool = False) -> int:
    return cost.count_tokens(tok, transfer.chat_texts(tok, prompts, with_response=with_response)) if prompts else 0


def collect_flops(model, tok, anchors: transfer.Anchors, cfg: transfer.EditConfig, n_layers: int) -> float:
    """Estimated forward passes and Gram accumulation of `transfer.collect_stats` over n_layers
    candidates: each prompt group read once by the whole model (one pass serves every layer;
    the fused pass reads each English harmful prompt once, the separate one twice)."""
    src_harm = [p for p in anchors.fit_harmful if p.lang == cfg.source]
    src_safe = [p for p in anchors.fit_harmless if p.lang == cfg.source]
    low, src = transfer.parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
    prompts = src_safe + low + src_harm + ([] if cfg.stats_pass == "fused" else src)
    tokens = _tokens(tok, prompts) + _tokens(tok, anchors.fit_harmless + src_harm, with_response=True)
    return cost.forward_flops(cost.matmul_params(model), tokens) + gram_flops(model, tok, anchors, cfg, n_layers)


def gram_flops(model, tok, anchors: transfer.Anchors, cfg: transfer.EditConfig, n_layers: int) -> float:
    """The Grams `transfer.collect_stats` streams at each of n_layers candidates: X_safe^T X_safe
    over every conversation token, X_low^T X_low and X_low^T X_en over the fit pairs (and
    X_en^T X_en with the fused pass)."""
    src_harm = [p for p in anchors.fit_harmful if p.lang == cfg.source]
    t_conv = _tokens(tok, anchors.fit_harmless + src_harm, with_response=True)
    low, _ = transfer.parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
    per_pair = 3 if cfg.stats_pass == "fused" else 2
    d = arch.d_model(model)
    return n_layers * (cost.gram_flops(t_conv, d) + per_pair * cost.gram_flops(len(low), d))


def fit_solve_flops(model, cfg: transfer.EditConfig, report: transfer.FitReport) -> float:
    """One Theorem 4.1 solve per candidate layer and module."""
    d = arch.d_model(model)
    return sum(len(cfg.modules) * cost.solve_flops(d, c["n_neurons"], min(cfg.rank, d, c["n_neurons"]))
               for c in report.candidates if c["n_neurons"] > 0)


def edit_flops(model, tok, anchors: transfer.Anchors, cfg: transfer.EditConfig, report: transfer.FitReport) -> float:
    """Estimated: collection + one solve per candidate layer and module + the validation scoring
    passes: one whole pass unedited, then one per scored candidate through the layers from the
    lowest scored one up (the trunk below it is replayed, mlsafe.trunk). `cost.MatmulCounter`
    counts the forward part as fed instead (mlsafe.baselines.bench)."""
    scored = [c["layer"] for c in report.candidates if "val_gain_harmful" in c]
    val = [p for p in anchors.val_harmful if p.lang in cfg.targets or p.lang == cfg.source] + anchors.val_harmless
    scoring = 0.0
    if scored:
        params, tokens = cost.matmul_params(model), _tokens(tok, val)
        below = sum(m.weight.numel() for block in arch.blocks(model)[:min(scored)] for m in block.modules()
                    if isinstance(m, torch.nn.Linear))
        scoring = cost.forward_flops(params, tokens) + len(scored) * cost.forward_flops(params - below, tokens)
    return collect_flops(model, tok, anchors, cfg, len(report.candidates)) + fit_solve_flops(model, cfg, report) + scoring


def _activations(model, tok, prompts, layer: int, batch_size: int = 16) -> torch.Tensor:
    """Neuron activations a(x) at the last prompt token, float64 [N, d_ff] (for the probe)."""
    texts = transfer.chat_texts(tok, prompts)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = probe.encode_batch(tok, texts[start:start + batch_size], next(model.parameters()).device)
            with probe.capture(model, [layer], mlp_inputs=False, activations=True, stop_after_last=True) as cap:
                cap.forward(**enc, use_cache=False)
            rows.append(probe.select_positions(cap.activations[layer], enc["attention_mask"], "last").double().cpu())
    return torch.cat(rows)


@dataclass
class Baselines:
    """The shared state of one `run_baselines` call: the Context (model, suite, config, anchors,
    fitted edit and its report), the rows and meta written so far, the options, and the costs
    every re-solved variant adds to (the edit's statistics collection and one solve)."""

    ctx: Context
    sft: finetune.SFTConfig | None = None
    n_random: int = 3
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def add(self, method: str, metrics: dict, frac: float, seconds: float, flops: float, note: str = "") -> None:
        for lang, m in metrics.items():
            self.rows.append({"method": method, "lang": lang, **{k: m[k] for k in METRICS},
                              "fraction_of_parameters": frac, "seconds": seconds, "flops": flops, "note": note})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    @property
    def m(self) -> int:
        return int(self.ctx.edit.neurons.numel())

    @property
    def at(self) -> str:
        return f"layer {self.ctx.report.layer}, |S|={self.m}"

    @property
    def base_seconds(self) -> float:
        return self.ctx.report.collect_seconds

    @property
    def base_flops(self) -> float:
        c = self.ctx
        return collect_flops(c.model, c.tokenizer, c.anchors, c.cfg, len(c.report.candidates))

    @property
    def solve_flops(self) -> float:
        d, m = arch.d_model(self.ctx.model), self.m
        return len(self.ctx.cfg.modules) * cost.solve_flops(d, m, min(self.ctx.cfg.rank, d, m))

    def base_metrics(self) -> dict:
        """The unedited model's metrics (evaluated once)."""
        return self.ctx.once("base", self.ctx.metrics)

    def solve_variant(self, idx, **changes):
        """Re-solve at the edit's layer (its statistics) for another neuron set / solver; evaluate."""
        c = self.ctx
        t0 = time.perf_counter()
        edit = transfer.build_edit(c.model, c.report.layer, idx, c.report.stats, dataclasses.replace(c.cfg, **changes))
        solve_s = time.perf_counter() - t0
        with edit.applied(c.model):
            metrics = c.metrics()
        return metrics, edit, solve_s


#: method name -> function(b: Baselines) that adds the method's rows; filled by
#: `register_baseline`, run in this order (= the order of METHODS and of baselines.csv).
BASELINES: dict[str, Callable[[Baselines], None]] = {}


#: Decorator: register `fn(b: Baselines)` as the baseline `name` (once).
register_baseline = registrar(BASELINES, "baseline")


@register_baseline("none")
def _none(b: Baselines) -> None:
    b.add("none", b.base_metrics(), 0.0, 0.0, 0.0)


@register_baseline("edit")
def _edit(b: Baselines) -> None:
    c = b.ctx
    with c.edit.applied(c.model):
        b.add("edit", c.metrics(), c.edit.fraction_of_parameters(c.model), c.fit_seconds,
              b.meta["edit"]["flops"], f"{b.at}, rank {c.cfg.rank}")


def _resolved(name: str, **changes) -> None:
    """Register a variant re-solved on the edit's own neurons with other solver settings."""
    @register_baseline(name)
    def run(b: Baselines) -> None:
        metrics, e, s = b.solve_variant(b.ctx.edit.neurons, **changes)
        b.add(name, metrics, e.fraction_of_parameters(b.ctx.model), b.base_seconds + s,
              b.base_flops + b.solve_flops, f"{b.at}, {changes}")


_resolved("ridge_gamma0", solver="ridge", gamma=0.0)
_resolved("naive_rank", solver="naive")


@register_baseline("nullspace")
def _nullspace(b: Baselines) -> None:
    d = arch.d_model(b.ctx.model)
    for thr in NULLSPACE_THRESHOLDS:
        try:
            metrics, e, s = b.solve_variant(b.ctx.edit.neurons, solver="nullspace", nullspace_threshold=thr)
        except ValueError as err:
            note = f"no null space at threshold {thr}: {err}"
            continue
        b.add("nullspace", metrics, e.fraction_of_parameters(b.ctx.model), b.base_seconds + s,
              b.base_flops + b.solve_flops + len(b.ctx.cfg.modules) * 9.0 * d ** 3,
              f"{b.at}, threshold {thr} (relative)")
        return
    b.meta["nullspace_error"] = note


@register_baseline("random_neurons")
def _random_neurons(b: Baselines) -> None:
    c = b.ctx
    if b.n_random <= 0:
        return
    draws, secs = [], []
    for idx in random_control_sets(c.edit.neurons, arch.d_ff(c.model), c.seed, b.n_random, disjoint=False):
        metrics, e, s = b.solve_variant(idx)
        draws.append(metrics)
        secs.append(s)
    b.add("random_neurons", mean_metrics(draws), e.fraction_of_parameters(c.model),
          b.base_seconds + statistics.fmean(secs), b.base_flops + b.solve_flops,
          f"{b.at}, mean of {b.n_random} random sets")


@register_baseline("probe_neurons")
def _probe_neurons(b: Baselines) -> None:
    c = b.ctx
    model, tok, layer = c.model, c.tokenizer, c.report.layer
    t1 = time.perf_counter()
    src_h = [p for p in c.anchors.fit_harmful if p.lang == c.cfg.source]
    src_s = [p for p in c.anchors.fit_harmless if p.lang == c.cfg.source]
    idx, _ = neurons.probe_neurons(_activations(model, tok, src_h, layer), _activations(model, tok, src_s, layer), b.m)
    probe_s = time.perf_counter() - t1
    metrics, e, s = b.solve_variant(idx)
    overlap = neurons.jaccard(idx, c.edit.neurons)
    b.add("probe_neurons", metrics, e.fraction_of_parameters(model), b.base_seconds + probe_s + s,
          b.base_flops + b.solve_flops + cost.forward_flops(cost.matmul_params(model), _tokens(tok, src_h + src_s)),
          f"{b.at}, top-{b.m} logistic-probe neurons, Jaccard with S = {overlap:.2f}")


def _direction(b: Baselines) -> tuple:
    """The English refusal direction (direction.fit_direction), fitted once: (fitd, seconds,
    flops, note); meta["direction"] records it."""
    def make():
        c = b.ctx
        t1 = time.perf_counter()
        fitd = direction.fit_direction(c.model, c.tokenizer, c.anchors, c.targets, c.margin)
        dir_s = time.perf_counter() - t1
        dir_f = cost.forward_flops(cost.matmul_params(c.model), fitd.forward_tokens)
        b.meta["direction"] = {"layer": fitd.layer, "alpha": fitd.alpha, "norm": float(fitd.direction.norm()),
                               "seconds": dir_s, "grid": fitd.candidates}
        note = f"layer {fitd.layer}, alpha {fitd.alpha:g} x |r| = {float(fitd.direction.norm()):.3g}"
        return fitd, dir_s, dir_f, note
    return b.ctx.once("direction", make)


def _steered(b: Baselines) -> dict:
    """The metrics with the ActAdd hook on every prompt (evaluated once)."""
    def make():
        fitd = _direction(b)[0]
        with direction.actadd(b.ctx.model, fitd.layer, fitd.vector):
            return b.ctx.metrics()
    return b.ctx.once("steered", make)


@register_baseline("actadd_target")
def _actadd_target(b: Baselines) -> None:
    _, dir_s, dir_f, note = _direction(b)
    steered, base = _steered(b), b.base_metrics()
    b.add("actadd_target", {x: steered[x] if x in b.ctx.targets else base[x] for x in steered}, 0.0,
          dir_s, dir_f, note + "; hook on target-language prompts only")


@register_baseline("actadd_all")
def _actadd_all(b: Baselines) -> None:
    _, dir_s, dir_f, note = _direction(b)
    b.add("actadd_all", _steered(b), 0.0, dir_s, dir_f, note + "; hook on every prompt")


@register_baseline("orthogonalise")
def _orthogonalise(b: Baselines) -> None:
    fitd, dir_s, dir_f, _ = _direction(b)
    model = b.ctx.model
    try:
        writers = direction.residual_writers(model)
    except ValueError as err:
        b.meta["orthogonalise_error"] = str(err)
        return
    with direction.orthogonalised(model, fitd.direction):
        metrics = b.ctx.metrics()
    frac = sum(w.numel() for w, _ in writers) / sum(p.numel() for p in model.parameters())
    b.add("orthogonalise", metrics, frac, dir_s, dir_f,
          f"r of layer {fitd.layer} projected out of all residual writers (removes refusal)")


def _sft(b: Baselines) -> tuple:
    """The LoRA fine-tune on translated refusals, trained once: (scfg, trainer, delta, flops,
    note); meta["sft"] records it."""
    def make():
        c = b.ctx
        scfg = b.sft or finetune.default_sft(c.lm, c.seed)
        trainer = finetune.train_sft(c.model, c.tokenizer, c.anchors.fit_harmful, c.anchors.fit_harmless,
                                     c.targets, scfg, source=c.cfg.source)
        b.meta["sft"] = {"config": dataclasses.asdict(scfg), "losses": trainer.losses, "seconds": trainer.seconds,
                         "tokens": trainer.tokens, "trainable_parameters": trainer.trainable_parameters()}
        note = f"LoRA r={scfg.rank} on {'/'.join(scfg.modules)}, {scfg.steps} steps, lr {scfg.lr:g}"
        return scfg, trainer, trainer.delta(), cost.train_flops(cost.matmul_params(c.model), trainer.tokens), note
    return b.ctx.once("sft", make)


@register_baseline("sft")
def _sft_only(b: Baselines) -> None:
    _, trainer, delta, sft_f, note = _sft(b)
    with delta.applied(b.ctx.model):
        b.add("sft", b.ctx.metrics(), delta.fraction_of_parameters(b.ctx.model), trainer.seconds, sft_f, note)


@register_baseline("sft+edit")
def _sft_edit(b: Baselines) -> None:
    c = b.ctx
    scfg, trainer, delta, sft_f, note = _sft(b)
    model, cfg = c.model, c.cfg
    with delta.applied(model):
        t1 = time.perf_counter()
        edit2, report2 = transfer.fit(model, c.tokenizer, c.suite.anchors_harmful, c.suite.anchors_harmless, cfg,
                                      margin=c.margin)
        fit2_s = time.perf_counter() - t1
        with edit2.applied(model):
            metrics = c.metrics()
        inside = set(cfg.modules) <= set(scfg.modules) and (scfg.layers is None or report2.layer in scfg.layers)
        frac = delta.fraction_of_parameters(model) + (0.0 if inside else edit2.fraction_of_parameters(model))
    b.add("sft+edit", metrics, frac, trainer.seconds + fit2_s,
          sft_f + edit_flops(model, c.tokenizer, c.anchors, cfg, report2),
          f"{note}; edit at layer {report2.layer}, |S|={report2.n_neurons}")


METHODS = tuple(BASELINES)


def run_baselines(lm, suite: Suite, targets: str | Sequence[str], seed: int = 0,
                  out_dir: Path | None = None, *, methods: Sequence[str] = METHODS, n_random: int = 3,
                  sft: finetune.SFTConfig | None = None, progress: bool = False,
                  context: Context | None = None) -> pd.DataFrame:
    """Every method in `methods` (module docstring; run in METHODS order) -> long DataFrame;
    writes out_dir/baselines.csv (and baselines_meta.json: chosen layers, ActAdd grid, SFT
    losses) when out_dir is given. `context`: a Context.fit of the same model, suite, targets
    and seed when the caller holds one (the edit is then not fitted again)."""
    targets = parse_targets(targets)
    bad = [x for x in methods if x not in BASELINES]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    ctx = context or Context.fit(lm, suite, targets, seed, progress=progress)
    b = Baselines(ctx, sft=sft, n_random=n_random, meta={"targets": targets, "seed": seed})
    m = b.m
    b.meta["edit"] = {"layer": ctx.report.layer, "n_neurons": m, "rank": ctx.cfg.rank, "gamma": ctx.cfg.gamma,
                      "lam": ctx.cfg.lam, "seconds": ctx.fit_seconds,
                      "flops": edit_flops(ctx.model, ctx.tokenizer, ctx.anchors, ctx.cfg, ctx.report)}
    for name, fn in BASELINES.items():
        if name in methods:
            fn(b)
    df = b.frame()
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_atomic(out_dir / "baselines.csv", df.to_csv(index=False))
        write_atomic(out_dir / "baselines_meta.json", json.dumps(_jsonable(b.meta), indent=2) + "\n")
    return df


def pareto_front(df: pd.DataFrame, langs: Sequence[str]) -> pd.DataFrame:
    """Per method: mean ASR, utility and over-refusal over `langs` (the targets); on_front: no
    other method has lower-or-equal ASR and higher-or-equal utility with one strictly better;
    with an "edit" row also lower_asr_than_edit and dominates_edit (the same test against it)."""
    sub = df[df.lang.isin(list(langs))]
    if sub.empty:
        raise ValueError(f"no rows for languages {list(langs)}; pass the targets the run used")
    pts = sub.groupby("method", sort=False)[["asr", "utility", "over_refusal"]].mean().reset_index()
    a, u = pts.asr.to_numpy(), pts.utility.to_numpy()
    pts["on_front"] = [not any((a[j] <= a[i] and u[j] >= u[i]) and (a[j] < a[i] or u[j] > u[i])
                               for j in range(len(pts)) if j != i) for i in range(len(pts))]
    if "edit" in set(pts.method):
        e = pts.set_index("method").loc["edit"]
        pts["lower_asr_than_edit"] = pts.asr < e.asr
        pts["dominates_edit"] = (pts.asr <= e.asr) & (pts.utility >= e.utility) & \
            ((pts.asr < e.asr) | (pts.utility > e.utility))
    return pts


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
