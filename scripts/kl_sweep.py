"""Issue 13's KL-aware sweep: gamma x neuron set at one layer, scored on validation anchors only.

Model, suite, anchor split and margins exactly as scripts/edit_search.py (mlsafe.trials); statistics read from
its scratch cache (``--stats-cache``: transfer.collect_stats output, stats_pass "fused"), so a
single-layer trial costs only validation forward passes. One factor at a time at `--layer`
(rank 8, modules gate+up): neuron sets ``gap1024`` (EditConfig neuron_set "gap", neuron_k 1024:
the top pair-gap-energy neurons) and ``all`` (every neuron), each with gamma, the weight of the
harmless-preservation term of Theorem 4.1 (eq. 4-8), in ``--gammas``. Edits are built by
transfer.select_neurons / transfer.build_edit from the cached statistics.

Each trial records, on the transfer.split_anchors validation split:
  * edit_search.py's score: transfer.validation_margins before/after, transfer.score_gains
    (target harmful, harmless and English harmful margin gains; score = target gain - any
    harmless gain - any English loss);
  * the first-token KL(p_base || p_edited) (mlsafe.evaluate.kl) on every harmless validation
    anchor: per language and the mean over all of them (``first_token_kl_mean``);
  * ``objective = score - first_token_kl_mean``: a choice made on validation data only (it
    charges a nat of harmless next-token change like a nat of lost target margin).

Then (unless ``--no-stack``) the two-layer stack [layer, --stack-layer] with gap1024 at the
gamma whose gap1024 trial has the best objective: step 1 is that trial's edit (from the cached
statistics), step 2 is mlsafe.stack.fit_sequence with the same EditConfig at --stack-layer
(a fresh statistics pass with step 1 applied). No evaluation prompt (suite.eval_*) is read.

Writes results/<model>/search/kl_sweep.json atomically after every trial. Rerun:
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/kl_sweep.py qwen2.5-coder-0.5b \\
        --data /work/shared/data --stats-cache /tmp/search_stats.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mlsafe import neurons, transfer, trials
from mlsafe.edit import fingerprint
from mlsafe.stack import EditStack, fit_sequence

ROOT = Path(__file__).resolve().parents[1]
#: neuron-set name -> EditConfig keywords (the fused pass is what the cached statistics hold)
NEURON_SETS = {"gap1024": {"neuron_set": "gap", "neuron_k": 1024, "stats_pass": "fused"},
               "all": {"neuron_set": "all", "stats_pass": "fused"}}


def objective(score: float, kl_mean: float) -> float:
    """The sweep's validation objective: edit_search.py's score minus the mean first-token KL."""
    return score - kl_mean


def main() -> None:
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="kl_sweep.json")
    ap.add_argument("--gammas", default="1,3,10,30,100")
    ap.add_argument("--stack-layer", type=int, default=19)
    ap.add_argument("--no-stack", action="store_true", help="skip the two-layer stack trial")
    args = ap.parse_args()
    try:
        gammas = [float(v) for v in args.gammas.split(",")]
    except ValueError:
        raise SystemExit(f"--gammas: give comma-separated numbers, got {args.gammas!r}") from None
    t0 = time.perf_counter()
    st, search = trials.layer_search(args)
    targets = args.lang.split(",")
    lm, anchors, base_cfg = search.lm, search.anchors, search.cfg
    sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=base_cfg.tau_mag,
                                               tau_stat=base_cfg.tau_stat)
    fp = fingerprint(lm.model, args.layer)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    command = (f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/kl_sweep.py {args.model} --data {args.data} "
               f"--lang {args.lang} --layer {args.layer} --gammas {args.gammas} --stats-cache {args.stats_cache}"
               + (" --no-stack" if args.no_stack else f" --stack-layer {args.stack_layer}"))
    log = trials.TrialLog(out / "kl_sweep.json", {
        "model": args.model, "targets": targets, "layer": args.layer, "rank": base_cfg.rank,
        "modules": list(base_cfg.modules), "lam": base_cfg.lam, "seed": args.seed, "command": command,
        "objective": "score - first_token_kl_mean (validation anchors only)",
        "before": search.before_dict(), "gap": search.gap,
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless),
                  "target_harmful": sum(p.lang in targets for p in anchors.val_harmful)}}, t0=t0)

    def score(edits, **info) -> dict:
        """One trial (trials.search_trial with the share of the gap) plus the sweep's objective."""
        row = trials.search_trial(search, edits, gap=search.gap, **info)
        row["objective"] = objective(row["score"], row["first_token_kl_mean"])
        return log.add(row)

    built = {}
    for name, kw in NEURON_SETS.items():
        for gamma in gammas:
            cfg = transfer.EditConfig(targets=targets, seed=args.seed, gamma=gamma, **kw)
            t = time.perf_counter()
            idx = transfer.select_neurons(lm.model, args.layer, sets, st, cfg)
            edit = transfer.build_edit(lm.model, args.layer, idx, st, cfg, base_fingerprint=fp)
            built[(name, gamma)] = (edit, cfg)
            score([edit], neurons=name, layers=[args.layer], gamma=gamma, solve_seconds=time.perf_counter() - t)
    if not args.no_stack:
        best = max((r for r in log.trials if r["neurons"] == "gap1024"), key=lambda r: r["objective"])
        edit, cfg = built[("gap1024", best["gamma"])]
        t = time.perf_counter()
        stack, reports = fit_sequence(lm.model, lm.tokenizer, search.suite.anchors_harmful,
                                      search.suite.anchors_harmless, cfg, [args.stack_layer], margin=search.margin,
                                      start=EditStack((edit,)))
        score(list(stack.edits), neurons="gap1024", layers=list(stack.layers), gamma=best["gamma"],
              chosen_by="best objective among the gap1024 trials",
              fit_seconds=time.perf_counter() - t)
    log.finish()
    print(f"wrote {log.path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
