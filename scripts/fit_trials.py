"""Issue 13's last two knobs of the fit, at one layer, on anchors and validation anchors only.

1. The fit's R^2 (transfer.gap_closed): the share of the target's energy ||D_S||^2 that
   ||X_low dW - D_S||^2 leaves, on the fit pairs (in-sample) and on the validation pairs
   (held out), for the paper's S and for the best recipe's pair-gap neurons at gamma 1 and 50.
   A low held-out R^2 with a high in-sample one says the edit memorises its pairs; both low says
   the rank or the preservation term holds it back.
2. Decision-position rows in X_safe: X_safe^T X_safe reads every token of the conversations it
   preserves (harmless fit anchors and English harmful fit anchors with their answers), so the
   decision position (the last prompt token, where the refusal margin is read) is a few percent
   of its rows. Weighting those rows w times (X_safe^T X_safe + (w - 1) X_dec^T X_dec, rows
   counted N_safe + (w - 1) N_dec, so the normalised Gram stays a mean; EditConfig.decision_weight)
   asks the edit to leave harmless decisions alone more than harmless continuations; each
   (gamma, w) is one validation trial of the best recipe's neurons (mlsafe.trials.search_trial).

Writes results/<model>/search/fit_trials.json atomically after every trial. Rerun:
    OMP_NUM_THREADS=2 .venv/bin/python scripts/fit_trials.py qwen2.5-coder-0.5b \\
        --data ../shared/data --stats-cache /tmp/search_stats.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mlsafe import neurons, presets, probe, transfer, trials
from mlsafe.edit import fingerprint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="fit_trials.json")
    ap.add_argument("--weights", default="10,30,100,300", help="decision-row weights w of part 2")
    ap.add_argument("--gammas", default="1,10", help="preservation weights of part 2, each with every w")
    args = ap.parse_args()
    try:
        weights = [float(v) for v in args.weights.split(",")]
        gammas = [float(v) for v in args.gammas.split(",")]
    except ValueError:
        raise SystemExit(f"--weights / --gammas: give comma-separated numbers, got {args.weights!r} / "
                         f"{args.gammas!r}") from None
    if any(w < 1 for w in weights):
        raise SystemExit(f"--weights: each w must be >= 1 (1 is the recipe as it is), got {args.weights!r}")
    t0 = time.perf_counter()
    st, search = trials.layer_search(args)
    lm, anchors = search.lm, search.anchors
    targets = args.lang.split(",")
    model = lm.model
    recipe = {k: v for k, v in presets.resolve("best", model).items() if k in ("neuron_set", "neuron_k", "stats_pass")}
    best = transfer.EditConfig(targets=targets, seed=args.seed, **recipe)
    paper = transfer.EditConfig(targets=targets, seed=args.seed)
    sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=paper.tau_mag, tau_stat=paper.tau_stat)
    gap_idx = transfer.select_neurons(model, args.layer, sets, st, best)
    fp = fingerprint(model, args.layer)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    command = (f"OMP_NUM_THREADS=2 .venv/bin/python scripts/fit_trials.py {args.model} --data {args.data} "
               f"--lang {args.lang} --layer {args.layer} --weights {args.weights} --gammas {args.gammas} --stats-cache {args.stats_cache}")
    log = trials.TrialLog(out / "fit_trials.json", {
        "model": args.model, "targets": targets, "layer": args.layer, "recipe": recipe, "rank": best.rank,
        "modules": list(best.modules), "lam": best.lam, "seed": args.seed, "command": command,
        "objective": "score - first_token_kl_mean (validation anchors only)",
        "before": search.before_dict(), "gap": search.gap, "r2": [],
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless)}}, t0=t0)

    # 1. R^2 on fit and validation pairs (closed form: no forward pass)
    for name, idx, cfg in (("S (paper)", sets.s_safety, paper), (f"gap{best.neuron_k}", gap_idx, best),
                           (f"gap{best.neuron_k}, gamma 50", gap_idx,
                            transfer.EditConfig(**{**best.__dict__, "gamma": 50.0}))):
        e = transfer.build_edit(model, args.layer, idx, st, cfg, base_fingerprint=fp)
        row = {"neurons": name, "n_neurons": int(idx.numel()), "gamma": cfg.gamma,
               "r2_fit": transfer.gap_closed(model, e, st.paired),
               "r2_val": transfer.gap_closed(model, e, st.val) if st.val is not None and st.val.yty is not None
               else None}
        log.header["r2"].append(row)
        print(trials.brief(row), flush=True)

    # 2. decision-position rows of X_safe weighted w times
    t = time.perf_counter()
    src_harm = [p for p in anchors.fit_harmful if p.lang == best.source]
    conversations = list(anchors.fit_harmless) + src_harm
    x_dec = transfer.prompt_inputs(model, lm.tokenizer, conversations, args.layer, best)
    st.decision = probe.Gram()                 # what collect_stats keeps for EditConfig.decision_weight != 1
    st.decision.xtx, st.decision.n = x_dec.T @ x_dec, x_dec.shape[0]
    log.header["decision_rows"] = {"n_dec": int(x_dec.shape[0]), "n_safe": int(st.safe.n),
                                   "share": x_dec.shape[0] / st.safe.n, "seconds": time.perf_counter() - t}
    for gamma in gammas:
        for w in [1.0] + weights:
            cfg = transfer.EditConfig(**{**best.__dict__, "gamma": gamma, "decision_weight": w})
            t = time.perf_counter()
            e = transfer.build_edit(model, args.layer, gap_idx, st, cfg, base_fingerprint=fp)
            row = trials.search_trial(search, [e], gap=search.gap, layers=[args.layer],
                                      neurons=f"gap{best.neuron_k}", gamma=gamma, decision_weight=w,
                                      decision_share=w * x_dec.shape[0] / (st.safe.n + (w - 1) * x_dec.shape[0]),
                                      solve_seconds=time.perf_counter() - t)
            row["objective"] = row["score"] - row["first_token_kl_mean"]
            row["r2_fit"] = transfer.gap_closed(model, e, st.paired)
            log.add(row)
    log.finish()
    print(f"wrote {log.path}")


if __name__ == "__main__":
    main()
