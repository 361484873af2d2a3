"""Issue 13's KL-aware sweep: gamma x neuron set at one layer, scored on validation anchors only.

Model, suite, anchor split and margins exactly as scripts/edit_search.py; statistics read from
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
import contextlib
import json
import time
from pathlib import Path

import torch

from mlsafe import neurons, transfer
from mlsafe.edit import fingerprint
from mlsafe.evaluate.kl import first_token_kl_per_prompt
from mlsafe.evaluate.margin import mean_by_lang
from mlsafe.models import load_model
from mlsafe.results import write_json
from mlsafe.stack import EditStack, fit_sequence
from mlsafe.suites import make_suite

ROOT = Path(__file__).resolve().parents[1]
#: neuron-set name -> EditConfig keywords (the fused pass is what the cached statistics hold)
NEURON_SETS = {"gap1024": {"neuron_set": "gap", "neuron_k": 1024, "stats_pass": "fused"},
               "all": {"neuron_set": "all", "stats_pass": "fused"}}


def objective(score: float, kl_mean: float) -> float:
    """The sweep's validation objective: edit_search.py's score minus the mean first-token KL."""
    return score - kl_mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--lang", default="zh,ja,th")
    ap.add_argument("--layer", type=int, default=17)
    ap.add_argument("--gammas", default="1,3,10,30,100")
    ap.add_argument("--stack-layer", type=int, default=19)
    ap.add_argument("--no-stack", action="store_true", help="skip the two-layer stack trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for kl_sweep.json (default results/<model>/search)")
    ap.add_argument("--stats-cache", required=True, help="scripts/edit_search.py's --stats-cache file")
    args = ap.parse_args()
    try:
        gammas = [float(v) for v in args.gammas.split(",")]
    except ValueError:
        raise SystemExit(f"--gammas: give comma-separated numbers, got {args.gammas!r}") from None
    cache = Path(args.stats_cache)
    if not cache.is_file():
        raise SystemExit(f"--stats-cache {cache} does not exist: run scripts/edit_search.py --stats-cache {cache} first")
    t0 = time.perf_counter()
    stats = torch.load(cache, weights_only=False)
    if args.layer not in stats:
        raise SystemExit(f"--stats-cache {cache} holds layers {sorted(stats)}, not --layer {args.layer}")
    st = stats[args.layer]
    if st.paired.yty is None:
        raise SystemExit(f"--stats-cache {cache} is not from the fused statistics pass (no X_en^T X_en)")
    torch.manual_seed(args.seed)
    lm = load_model(args.model, "cpu", seed=args.seed)
    suite = make_suite(lm, args.data, args.seed, "cpu")
    from mlsafe.pipeline import margin_fn

    margin = margin_fn(suite, lm.tokenizer)
    targets = args.lang.split(",")
    base_cfg = transfer.EditConfig(targets=targets, seed=args.seed, stats_pass="fused")
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, base_cfg.val_fraction,
                                     base_cfg.seed)
    val_harmless = list(anchors.val_harmless)
    before = transfer.validation_margins(lm.model, anchors, base_cfg, margin)
    gap = before[2] - before[0]      # English minus target harmful margin: the gap to close
    print(f"validation margins before: target {before[0]:+.3f} harmless {before[1]:+.3f} source {before[2]:+.3f}",
          flush=True)
    sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=base_cfg.tau_mag,
                                               tau_stat=base_cfg.tau_stat)
    fp = fingerprint(lm.model, args.layer)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    trials: list[dict] = []
    command = (f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/kl_sweep.py {args.model} --data {args.data} "
               f"--lang {args.lang} --layer {args.layer} --gammas {args.gammas} --stats-cache {args.stats_cache}"
               + (" --no-stack" if args.no_stack else f" --stack-layer {args.stack_layer}"))

    def save(complete: bool) -> None:
        write_json(out / "kl_sweep.json", {
            "model": args.model, "targets": targets, "layer": args.layer, "rank": base_cfg.rank,
            "modules": list(base_cfg.modules), "lam": base_cfg.lam, "seed": args.seed, "command": command,
            "objective": "score - first_token_kl_mean (validation anchors only)",
            "before": dict(zip(("target", "harmless", "source"), before)), "gap": gap,
            "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(val_harmless),
                      "target_harmful": sum(p.lang in targets for p in anchors.val_harmful)},
            "seconds": time.perf_counter() - t0, "complete": complete, "trials": trials})

    def score(edits, **info) -> dict:
        t = time.perf_counter()
        with contextlib.ExitStack() as applied:
            for e in edits:
                applied.enter_context(e.applied(lm.model))
            after = transfer.validation_margins(lm.model, anchors, base_cfg, margin)
        kl = first_token_kl_per_prompt(lm.model, lm.tokenizer, val_harmless, EditStack(tuple(edits)))
        gains = transfer.score_gains(before, after)
        row = {**info, **gains, "share_of_gap": gains["val_gain_harmful"] / gap,
               "after": dict(zip(("target", "harmless", "source"), after)),
               "first_token_kl": mean_by_lang(val_harmless, kl), "first_token_kl_mean": float(kl.mean()),
               "objective": objective(gains["score"], float(kl.mean())),
               "n_neurons": sum(int(e.neurons.numel()) for e in edits),
               "fraction_of_parameters": sum(e.fraction_of_parameters(lm.model) for e in edits),
               "seconds": time.perf_counter() - t}
        trials.append(row)
        save(complete=False)     # every trial lands on disk: a stopped sweep keeps what it measured
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("first_token_kl", "after")}), flush=True)
        return row

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
        best = max((r for r in trials if r["neurons"] == "gap1024"), key=lambda r: r["objective"])
        edit, cfg = built[("gap1024", best["gamma"])]
        t = time.perf_counter()
        stack, reports = fit_sequence(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                      [args.stack_layer], margin=margin, start=EditStack((edit,)))
        score(list(stack.edits), neurons="gap1024", layers=list(stack.layers), gamma=best["gamma"],
              chosen_by="best objective among the gap1024 trials",
              fit_seconds=time.perf_counter() - t)
    save(complete=True)
    print(f"wrote {out / 'kl_sweep.json'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
