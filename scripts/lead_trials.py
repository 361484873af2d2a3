"""Issue 13's untested leads at one layer, each trial one factor changed from the `best` recipe,
scored on validation anchors only (mlsafe.trials, as scripts/kl_sweep.py scores its trials).

The `best` recipe (mlsafe.presets): the 1,024 top pair-gap-energy neurons (neuron_set "gap"),
gate and up rows, rank 8, gamma 1, lam 0.01, statistics of the fused pass, here at --layer.
Statistics come from scripts/edit_search.py's scratch cache (--stats-cache). Trials:

a. ``gamma50``: gamma 50 (the preservation weight of Theorem 4.1, eq. 4-8) for gap1024 and for
   every neuron (between kl_sweep.json's 30 and 100);
b. lead 4 (is D_S mostly a language shift?): first a measurement on the fit anchors at --layer:
   per target language, the mean English-minus-target MLP-input shift of HARMFUL parallel pairs
   (the gap the edit closes) and of the HARMLESS fit anchors (prompt with the generation prompt,
   last token, as the statistics pass reads them; paired where the harmless anchors are parallel,
   ja and th; for zh, whose harmless anchors are another sample, the difference of the two
   samples' means), projected on gap1024's gate and up rows:
   norms, cosine, and the share of the harmful pairs' gap energy ||(X_en - X_low) W_S||^2 that
   subtracting the harmless shift removes (``measurement`` in the json). Then the trial
   ``minus_harmless_shift``: the target D_S' = (X_en - X_low - O) W_S with row i of O the harmless
   shift of pair i's language (transfer.build_edit(pair_offset=...)), at each --lead-gammas;
c. lead 5 (a neuron is up * act(gate); the paper fits gate and up independently): the trial
   ``up_given_gate``: gate's rows as in the recipe, up's fitted after gate's edit against the
   English activations given the edited gate (transfer.up_factors_given_gate: per-neuron
   weighted ridge, rank-8 truncation in the neuron-averaged metric), at each --lead-gammas;
   the activation fit residual on the fit pairs (transfer.activation_residual) of both edits
   is recorded beside it.

Each trial row: kl_sweep.json's fields (validation gains: target harmful, harmless, English;
score; share_of_gap; margins after; first-token KL on every harmless validation anchor, per
language and mean; objective = score - mean KL; |S|, parameter share), plus ``lead`` and
``change`` (the one factor changed). No evaluation prompt (suite.eval_*) is read.

Writes results/<model>/search/leads.json atomically after every trial. Rerun:
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/lead_trials.py qwen2.5-coder-0.5b \\
        --data /work/shared/data --stats-cache /tmp/search_stats.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mlsafe import arch, neurons, presets, transfer, trials
from mlsafe.edit import fingerprint

ROOT = Path(__file__).resolve().parents[1]
LEADS = ("lead4", "lead5", "gamma50")


def harmless_shifts(model, tokenizer, harmless, targets, source, layer, cfg) -> tuple[dict, dict]:
    """Per target language, the mean source-minus-target MLP input at `layer` over the harmless fit
    anchors: mean over the source language's prompts minus mean over the target's. Where the
    target's prompts translate the source's (same parallel_id, here ja and th) this is the mean
    pair shift; where they are another sample of the same pool (zh: not parallel) it is the
    difference of the two samples' means, an estimate of the same language shift. Returns
    (shifts, {lang: {"n", "n_source", "parallel"}})."""
    src = [p for p in harmless if p.lang == source]
    x_src = transfer.prompt_inputs(model, tokenizer, src, layer, cfg)
    src_ids = {p.parallel_id for p in src}
    shifts, info = {}, {}
    for lang in targets:
        low = [p for p in harmless if p.lang == lang]
        if not low:
            continue
        shifts[lang] = x_src.mean(0) - transfer.prompt_inputs(model, tokenizer, low, layer, cfg).mean(0)
        info[lang] = {"n": len(low), "n_source": len(src),
                      "parallel": sorted(src_ids) == sorted(p.parallel_id for p in low)}
    return shifts, info


def shift_measurement(model, layer: int, idx: torch.Tensor, harm: tuple, safe_shifts: dict, safe_info: dict) -> dict:
    """Lead 4's numbers per language: harm = (X_low, X_en, langs) of the harmful fit pairs,
    safe_shifts the harmless language shifts (harmless_shifts).

    For module m in gate, up (W_S: its rows of `idx`), h = mean (x_en - x_low) W_S over the
    harmful pairs of a language, s = (harmless shift) W_S; reports |h|, |s|, cos(h, s),
    |h - s| / |h|, the harmful pairs' mean gap energy E = mean ||(x_en - x_low) W_S||^2, the share
    of E in the mean shift (|h|^2 / E) and the share the harmless shift removes
    (1 - mean ||(x_en - x_low) W_S - s||^2 / E); and the same cosine and norms in the input space."""
    x_low, x_src, langs = harm
    harm_shift = transfer.mean_pair_shifts(x_low, x_src, langs)
    w = {m: arch.neuron_weight(model, layer, m).detach()[idx].T.to(torch.float64).cpu() for m in ("gate", "up")}
    out = {}
    for lang in harm_shift:
        if lang not in safe_shifts:
            continue
        rows = [i for i, l in enumerate(langs) if l == lang]
        d_in = x_src[rows] - x_low[rows]
        hs, ss = harm_shift[lang], safe_shifts[lang]
        block = {"n_harmful_pairs": len(rows), "harmless": safe_info[lang],
                 "input_space": {"harmful_norm": float(hs.norm()), "harmless_norm": float(ss.norm()),
                                 "cosine": float(torch.nn.functional.cosine_similarity(hs, ss, dim=0))}}
        for m, w_s in w.items():
            d, h, s = d_in @ w_s, hs @ w_s, ss @ w_s
            energy = float((d ** 2).sum(-1).mean())
            block[m] = {"harmful_norm": float(h.norm()), "harmless_norm": float(s.norm()),
                        "cosine": float(torch.nn.functional.cosine_similarity(h, s, dim=0)),
                        "relative_difference": float((h - s).norm() / h.norm()),
                        "gap_energy": energy, "share_in_mean_shift": float(h.norm() ** 2) / energy,
                        "share_removed_by_harmless_shift": 1.0 - float(((d - s) ** 2).sum(-1).mean()) / energy}
        out[lang] = block
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="leads.json")
    ap.add_argument("--lead-gammas", default="1,10", help="gammas of the lead-4 and lead-5 trials")
    ap.add_argument("--leads", default=",".join(LEADS), help=f"which of {', '.join(LEADS)}, in that order")
    args = ap.parse_args()
    try:
        lead_gammas = [float(v) for v in args.lead_gammas.split(",")]
    except ValueError:
        raise SystemExit(f"--lead-gammas: give comma-separated numbers, got {args.lead_gammas!r}") from None
    leads = args.leads.split(",")
    if not leads or set(leads) - set(LEADS):
        raise SystemExit(f"--leads: choose from {', '.join(LEADS)}, got {args.leads!r}")
    t0 = time.perf_counter()
    st, search = trials.layer_search(args)
    targets = args.lang.split(",")
    lm, anchors = search.lm, search.anchors
    recipe = {k: v for k, v in presets.resolve("best", lm.model).items() if k in ("neuron_set", "neuron_k", "stats_pass")}
    cfg = transfer.EditConfig(targets=targets, seed=args.seed, **recipe)
    sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat)
    idx = transfer.select_neurons(lm.model, args.layer, sets, st, cfg)
    gap_name = f"gap{cfg.neuron_k}"
    fp = fingerprint(lm.model, args.layer)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    command = (f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/lead_trials.py {args.model} --data {args.data} "
               f"--lang {args.lang} --layer {args.layer} --lead-gammas {args.lead_gammas} --leads {args.leads} "
               f"--stats-cache {args.stats_cache}")
    log = trials.TrialLog(out / "leads.json", {
        "model": args.model, "targets": targets, "layer": args.layer, "recipe": recipe, "rank": cfg.rank,
        "modules": list(cfg.modules), "lam": cfg.lam, "seed": args.seed, "command": command,
        "baseline": "results/<model>/search/kl_sweep.json, the gap1024 trials (gamma 1 is the best recipe)",
        "objective": "score - first_token_kl_mean (validation anchors only)",
        "before": search.before_dict(), "gap": search.gap,
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless),
                  "target_harmful": sum(p.lang in targets for p in anchors.val_harmful)}}, t0=t0)

    def trial(edit, **info) -> dict:
        row = trials.search_trial(search, [edit], gap=search.gap, layers=[args.layer], **info)
        row["objective"] = row["score"] - row["first_token_kl_mean"]
        return log.add(row)

    pairs = None
    if "lead4" in leads or "lead5" in leads:   # the fit harmful pairs' MLP inputs, row by row
        t = time.perf_counter()
        low, src = transfer.parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
        x_low, x_src = transfer.pair_inputs(lm.model, lm.tokenizer, low, src, args.layer, cfg)
        if x_low.shape[0] != st.paired.n:
            raise SystemExit(f"{x_low.shape[0]} fit pairs here but {st.paired.n} in the cache: another split or suite")
        pairs = (x_low, x_src, [p.lang for p in low])
        log.header["pair_inputs_seconds"] = time.perf_counter() - t
    for lead in leads:
        if lead == "gamma50":
            for name, kw in ((gap_name, recipe), ("all", {"neuron_set": "all", "stats_pass": "fused"})):
                c = transfer.EditConfig(targets=targets, seed=args.seed, gamma=50.0, **kw)
                t = time.perf_counter()
                e = transfer.build_edit(lm.model, args.layer, transfer.select_neurons(lm.model, args.layer, sets, st, c),
                                        st, c, base_fingerprint=fp)
                trial(e, lead="gamma50", change="gamma 50", neurons=name, gamma=50.0,
                      solve_seconds=time.perf_counter() - t)
        elif lead == "lead4":
            t = time.perf_counter()
            shifts, info = harmless_shifts(lm.model, lm.tokenizer, anchors.fit_harmless, targets, cfg.source,
                                           args.layer, cfg)
            missing = sorted(set(pairs[2]) - set(shifts))
            if missing:
                raise SystemExit(f"no harmless fit anchors in {missing}: lead 4 needs each target's language shift")
            log.header["measurement"] = {
                "what": "lead 4: mean English-minus-target MLP-input shift at the layer (last prompt token), "
                        "harmful fit pairs vs harmless fit anchors (paired where parallel, else the difference of "
                        "the two samples' means), on the gap set's gate and up rows", "neurons": gap_name,
                **shift_measurement(lm.model, args.layer, idx, pairs, shifts, info),
                "seconds": time.perf_counter() - t}
            offset = transfer.pair_offset(pairs[0], pairs[2], shifts)
            for gamma in lead_gammas:
                c = transfer.EditConfig(**{**cfg.__dict__, "gamma": gamma})
                t = time.perf_counter()
                e = transfer.build_edit(lm.model, args.layer, idx, st, c, base_fingerprint=fp, pair_offset=offset)
                trial(e, lead="lead4", change="target = harmful pair gap minus the harmless pairs' language shift",
                      neurons=gap_name, gamma=gamma, solve_seconds=time.perf_counter() - t)
        else:
            for gamma in lead_gammas:
                c = transfer.EditConfig(**{**cfg.__dict__, "gamma": gamma})
                t = time.perf_counter()
                e = transfer.build_edit(lm.model, args.layer, idx, st, c, base_fingerprint=fp,
                                        up_given_gate=pairs[:2])
                solve_s = time.perf_counter() - t
                plain = transfer.build_edit(lm.model, args.layer, idx, st, c, base_fingerprint=fp)
                fit = {name: transfer.activation_residual(lm.model, args.layer, idx, x.delta("gate"), x.delta("up"),
                                                          *pairs[:2])
                       for name, x in (("independent", plain), ("up_given_gate", e))}
                fit["unedited"] = transfer.activation_residual(lm.model, args.layer, idx, 0 * plain.delta("gate"),
                                                               0 * plain.delta("up"), *pairs[:2])
                trial(e, lead="lead5", change="up's rows fitted after gate's edit, to English activations",
                      neurons=gap_name, gamma=gamma, solve_seconds=solve_s, activation_residual_fit_pairs=fit)
    log.finish()
    print(f"wrote {log.path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
