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

The re-solved variants (ridge_gamma0 ... probe_neurons) reuse the edit's chosen layer and its
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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from mlsafe import arch, neurons, pipeline, probe, transfer
from mlsafe import evaluate as ev
import mlsafe.baselines.cost as cost
import mlsafe.baselines.direction as direction
import mlsafe.baselines.finetune as finetune
from mlsafe.langs import LANGS, parse_targets
from mlsafe.results import write_atomic

METHODS = ("none", "edit", "ridge_gamma0", "naive_rank", "nullspace", "random_neurons", "probe_neurons",
           "actadd_target", "actadd_all", "orthogonalise", "sft", "sft+edit")
COLUMNS = ("method", "lang", "asr", "utility", "over_refusal", "margin", "fraction_of_parameters",
           "seconds", "flops", "note")
METRICS = ("asr", "utility", "over_refusal", "margin")
NULLSPACE_THRESHOLDS = (1e-3, 1e-2, 1e-1)


def lang_metrics(lm, suite: pipeline.Suite, langs: Sequence[str] = LANGS) -> dict[str, dict[str, float]]:
    """{lang: {asr, utility, over_refusal, margin}} from `pipeline.evaluate` (greedy + judge)."""
    e = pipeline.evaluate(lm, suite, langs=langs, progress=False)
    asr, _ = ev.summary_blocks(e.table)
    margin = ev.mean_by_lang([p for p in suite.eval_harmful if p.lang in langs], e.margins)
    nan = float("nan")
    return {lang: {"asr": asr.get(lang, nan), "utility": e.utility.get(lang, nan),
                   "over_refusal": e.over_refusal.get(lang, nan), "margin": margin.get(lang, nan)}
            for lang in langs if lang in asr or lang in e.utility}


def mean_metrics(draws: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {lang: {k: statistics.fmean(d[lang][k] for d in draws) for k in METRICS} for lang in draws[0]}


def _tokens(tok, prompts, *, with_response: bool = False) -> int:
    return cost.count_tokens(tok, transfer.chat_texts(tok, prompts, with_response=with_response)) if prompts else 0


def collect_flops(model, tok, anchors: transfer.Anchors, cfg: transfer.EditConfig, n_layers: int) -> float:
    """Forward passes and Gram accumulation of `transfer.collect_stats` over n_layers candidates."""
    n = cost.matmul_params(model)
    src_harm = [p for p in anchors.fit_harmful if p.lang == cfg.source]
    src_safe = [p for p in anchors.fit_harmless if p.lang == cfg.source]
    by_id = {p.parallel_id: p for p in src_harm}
    low = [p for p in anchors.fit_harmful if p.lang in cfg.targets and p.parallel_id in by_id]
    t_conv = _tokens(tok, anchors.fit_harmless + src_harm, with_response=True)
    t_pair = _tokens(tok, low) + _tokens(tok, [by_id[p.parallel_id] for p in low])
    fwd = cost.forward_flops(n, _tokens(tok, src_harm) + _tokens(tok, src_safe) + t_conv + n_layers * t_pair)
    d = arch.d_model(model)
    return fwd + n_layers * (cost.gram_flops(t_conv, d) + 2 * cost.gram_flops(len(low), d))


def edit_flops(model, tok, anchors: transfer.Anchors, cfg: transfer.EditConfig, report: transfer.FitReport) -> float:
    """Collection + one solve per candidate layer and module + the validation scoring passes."""
    d, rank = arch.d_model(model), cfg.rank
    solves = sum(len(cfg.modules) * cost.solve_flops(d, c["n_neurons"], min(rank, d, c["n_neurons"]))
                 for c in report.candidates if c["n_neurons"] > 0)
    scored = sum(1 for c in report.candidates if "val_gain_harmful" in c)
    val = [p for p in anchors.val_harmful if p.lang in cfg.targets or p.lang == cfg.source] + anchors.val_harmless
    scoring = cost.forward_flops(cost.matmul_params(model), 2 * scored * _tokens(tok, val))
    return collect_flops(model, tok, anchors, cfg, len(report.candidates)) + solves + scoring


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


class _Rows:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, method: str, metrics: dict, frac: float, seconds: float, flops: float, note: str = "") -> None:
        for lang, m in metrics.items():
            self.rows.append({"method": method, "lang": lang, **{k: m[k] for k in METRICS},
                              "fraction_of_parameters": frac, "seconds": seconds, "flops": flops, "note": note})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))


def _solve_variant(lm, suite, report, cfg, idx, **changes):
    """Re-solve at the edit's layer (its statistics) for another neuron set / solver; evaluate."""
    t0 = time.perf_counter()
    edit = transfer.build_edit(lm.model, report.layer, idx, report.stats, dataclasses.replace(cfg, **changes))
    solve_s = time.perf_counter() - t0
    with edit.applied(lm.model):
        metrics = lang_metrics(lm, suite)
    return metrics, edit, solve_s


def run_baselines(lm, suite: pipeline.Suite, targets: str | Sequence[str], seed: int = 0,
                  out_dir: Path | None = None, *, methods: Sequence[str] = METHODS, n_random: int = 3,
                  sft: finetune.SFTConfig | None = None, progress: bool = False) -> pd.DataFrame:
    """Every method in `methods` (module docstring) -> long DataFrame; writes out_dir/baselines.csv
    (and baselines_meta.json: chosen layers, ActAdd grid, SFT losses) when out_dir is given."""
    targets = parse_targets(targets)
    cfg, margin, anchors = pipeline.experiment_setup(lm, suite, targets, seed, chosen=methods, known=METHODS,
                                                    what="methods")
    model, tok = lm.model, lm.tokenizer
    n_par = cost.matmul_params(model)
    d = arch.d_model(model)
    out, meta = _Rows(), {"targets": targets, "seed": seed}

    base = lang_metrics(lm, suite)
    if "none" in methods:
        out.add("none", base, 0.0, 0.0, 0.0)

    t0 = time.perf_counter()
    edit, report = transfer.fit(model, tok, suite.anchors_harmful, suite.anchors_harmless, cfg, margin=margin,
                                progress=progress)
    edit_s = time.perf_counter() - t0
    m = int(edit.neurons.numel())
    meta["edit"] = {"layer": report.layer, "n_neurons": m, "rank": cfg.rank, "gamma": cfg.gamma, "lam": cfg.lam,
                    "seconds": edit_s, "flops": edit_flops(model, tok, anchors, cfg, report)}
    base_s = report.collect_seconds
    base_f = collect_flops(model, tok, anchors, cfg, len(report.candidates))
    solve_f = len(cfg.modules) * cost.solve_flops(d, m, min(cfg.rank, d, m))
    at = f"layer {report.layer}, |S|={m}"
    if "edit" in methods:
        with edit.applied(model):
            out.add("edit", lang_metrics(lm, suite), edit.fraction_of_parameters(model), edit_s,
                    meta["edit"]["flops"], f"{at}, rank {cfg.rank}")

    variants = {"ridge_gamma0": dict(solver="ridge", gamma=0.0), "naive_rank": dict(solver="naive")}
    for name, changes in variants.items():
        if name in methods:
            metrics, e, s = _solve_variant(lm, suite, report, cfg, edit.neurons, **changes)
            out.add(name, metrics, e.fraction_of_parameters(model), base_s + s, base_f + solve_f,
                    f"{at}, {changes}")

    if "nullspace" in methods:
        for thr in NULLSPACE_THRESHOLDS:
            try:
                metrics, e, s = _solve_variant(lm, suite, report, cfg, edit.neurons, solver="nullspace",
                                               nullspace_threshold=thr)
            except ValueError as err:
                note = f"no null space at threshold {thr}: {err}"
                continue
            out.add("nullspace", metrics, e.fraction_of_parameters(model), base_s + s,
                    base_f + solve_f + len(cfg.modules) * 9.0 * d ** 3, f"{at}, threshold {thr} (relative)")
            break
        else:
            meta["nullspace_error"] = note

    if "random_neurons" in methods and n_random > 0:
        draws, secs = [], []
        for k in range(n_random):
            idx = neurons.random_like(edit.neurons, arch.d_ff(model), torch.Generator().manual_seed(10_000 * seed + k))
            metrics, e, s = _solve_variant(lm, suite, report, cfg, idx)
            draws.append(metrics)
            secs.append(s)
        out.add("random_neurons", mean_metrics(draws), e.fraction_of_parameters(model), base_s + statistics.fmean(secs),
                base_f + solve_f, f"{at}, mean of {n_random} random sets")

    if "probe_neurons" in methods:
        t1 = time.perf_counter()
        src_h = [p for p in anchors.fit_harmful if p.lang == cfg.source]
        src_s = [p for p in anchors.fit_harmless if p.lang == cfg.source]
        idx, _ = neurons.probe_neurons(_activations(model, tok, src_h, report.layer),
                                       _activations(model, tok, src_s, report.layer), m)
        probe_s = time.perf_counter() - t1
        metrics, e, s = _solve_variant(lm, suite, report, cfg, idx)
        overlap = neurons.jaccard(idx, edit.neurons)
        out.add("probe_neurons", metrics, e.fraction_of_parameters(model), base_s + probe_s + s,
                base_f + solve_f + cost.forward_flops(n_par, _tokens(tok, src_h + src_s)),
                f"{at}, top-{m} logistic-probe neurons, Jaccard with S = {overlap:.2f}")

    if {"actadd_target", "actadd_all", "orthogonalise"} & set(methods):
        t1 = time.perf_counter()
        fitd = direction.fit_direction(model, tok, anchors, targets, margin)
        dir_s = time.perf_counter() - t1
        dir_f = cost.forward_flops(n_par, fitd.forward_tokens)
        meta["direction"] = {"layer": fitd.layer, "alpha": fitd.alpha, "norm": float(fitd.direction.norm()),
                             "seconds": dir_s, "grid": fitd.candidates}
        note = f"layer {fitd.layer}, alpha {fitd.alpha:g} x |r| = {float(fitd.direction.norm()):.3g}"
        if "actadd_target" in methods or "actadd_all" in methods:
            with direction.actadd(model, fitd.layer, fitd.vector):
                steered = lang_metrics(lm, suite)
            if "actadd_target" in methods:
                out.add("actadd_target", {x: steered[x] if x in targets else base[x] for x in steered}, 0.0,
                        dir_s, dir_f, note + "; hook on target-language prompts only")
            if "actadd_all" in methods:
                out.add("actadd_all", steered, 0.0, dir_s, dir_f, note + "; hook on every prompt")
        if "orthogonalise" in methods:
            try:
                writers = direction.residual_writers(model)
            except ValueError as err:
                meta["orthogonalise_error"] = str(err)
            else:
                with direction.orthogonalised(model, fitd.direction):
                    metrics = lang_metrics(lm, suite)
                frac = sum(w.numel() for w, _ in writers) / sum(p.numel() for p in model.parameters())
                out.add("orthogonalise", metrics, frac, dir_s, dir_f,
                        f"r of layer {fitd.layer} projected out of all residual writers (removes refusal)")

    if "sft" in methods or "sft+edit" in methods:
        scfg = sft or finetune.default_sft(lm.kind, seed)
        trainer = finetune.train_sft(model, tok, anchors.fit_harmful, anchors.fit_harmless, targets, scfg,
                                    source=cfg.source)
        delta = trainer.delta()
        sft_f = cost.train_flops(n_par, trainer.tokens)
        meta["sft"] = {"config": dataclasses.asdict(scfg), "losses": trainer.losses, "seconds": trainer.seconds,
                       "tokens": trainer.tokens, "trainable_parameters": trainer.trainable_parameters()}
        sft_note = f"LoRA r={scfg.rank} on {'/'.join(scfg.modules)}, {scfg.steps} steps, lr {scfg.lr:g}"
        with delta.applied(model):
            if "sft" in methods:
                out.add("sft", lang_metrics(lm, suite), delta.fraction_of_parameters(model), trainer.seconds,
                        sft_f, sft_note)
            if "sft+edit" in methods:
                t1 = time.perf_counter()
                edit2, report2 = transfer.fit(model, tok, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                              margin=margin)
                fit2_s = time.perf_counter() - t1
                with edit2.applied(model):
                    metrics = lang_metrics(lm, suite)
                inside = set(cfg.modules) <= set(scfg.modules) and (scfg.layers is None or report2.layer in scfg.layers)
                frac = delta.fraction_of_parameters(model) + (0.0 if inside else edit2.fraction_of_parameters(model))
                out.add("sft+edit", metrics, frac, trainer.seconds + fit2_s,
                        sft_f + edit_flops(model, tok, anchors, cfg, report2),
                        f"{sft_note}; edit at layer {report2.layer}, |S|={report2.n_neurons}")

    df = out.frame()
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_atomic(out_dir / "baselines.csv", df.to_csv(index=False))
        write_atomic(out_dir / "baselines_meta.json", json.dumps(_jsonable(meta), indent=2) + "\n")
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
