"""Issue 13's lead-by-lead search for a real model, on anchors and validation anchors only.

One fused statistics pass over the fit anchors at every candidate layer; then, each on the
same validation anchors (transfer.split_anchors, the split the edit's layer choice uses):

1. per layer, the paper's edit (S = S_mag | S_stat, gate+up, rank 8): the closed-form
   predicted gap closure (what the project's "predicted" ranking used) and the measured
   validation margin gains (target harmful, harmless, English harmful) and score;
2. one factor at a time at the best-scoring layers: |S| by top-k Cohen's d, rank, gamma,
   modules (gate only / up only), the target-language -> English shift measured on harmless
   parallel pairs is not re-fitted here (see the chapter);
Multi-layer edits are scripts/stack_search.py's (layers fitted in sequence, mlsafe.stack): edits
fitted independently on unedited statistics cannot be applied together (each checks the
fingerprint of the model it was fitted on).

Model, suite, split, margins and each trial's row by mlsafe.trials (load_search, search_trial, TrialLog).
Writes results/<model>/search/search.json (every trial) atomically; prints a table.
Usage: python scripts/edit_search.py qwen2.5-coder-0.5b --data /work/shared/data [--layers 12-22]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mlsafe import neurons, transfer, trials

ROOT = Path(__file__).resolve().parents[1]


def parse_range(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--lang", default="zh,ja,th")
    ap.add_argument("--layers", default="1-22", help="candidate layers for step 1")
    ap.add_argument("--top", type=int, default=3, help="layers kept for step 2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--stats-cache", default=None, help="a scratch file to keep/reuse the statistics")
    ap.add_argument("--kl", choices=("all", "final"), default="final",
                    help="first-token KL for every trial or only steps 2-3 (default: final)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    layers = parse_range(args.layers)
    search = trials.load_search(args.model, args.data, args.seed, args.lang.split(","))
    lm, anchors = search.lm, search.anchors
    cfg = transfer.EditConfig(targets=args.lang.split(","), seed=args.seed, stats_pass="fused",
                              candidate_layers=layers, layer_selection="predicted")
    print(f"anchors: fit harmful {len(anchors.fit_harmful)}, harmless {len(anchors.fit_harmless)}; "
          f"val harmful {len(anchors.val_harmful)}, harmless {len(anchors.val_harmless)}", flush=True)
    t1 = time.perf_counter()
    cache = Path(args.stats_cache) if args.stats_cache else None
    if cache is not None and cache.exists():   # a scratch cache of this script's own statistics
        stats = torch.load(cache, weights_only=False)
    else:
        stats = transfer.collect_stats(lm.model, lm.tokenizer, anchors, cfg, layers, progress=True,
                                       validation_pairs=True)
        if cache is not None:
            torch.save(stats, cache)
    stats_s = time.perf_counter() - t1
    print(search.before_line(), flush=True)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    log = trials.TrialLog(out / "search.json", {
        "model": args.model, "targets": cfg.targets, "layers": layers, "before": search.before_dict(),
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless)},
        "stats_seconds": stats_s}, t0=t0)

    def score(edits, **info):
        """One trial (trials.search_trial, no margins after); the first-token KL on the harmless
        validation anchors for single edits outside step 1 (or every single edit with --kl all)."""
        with_kl = len(edits) == 1 and (args.kl == "all" or info["step"] != "layer")
        return log.add(trials.search_trial(search, edits, kl="by_lang" if with_kl else None, after=False, **info))

    base_edits = {}
    d_ff = None
    for layer in layers:   # step 1: per layer, the paper's S and every neuron of the layer
        st = stats[layer]
        sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=cfg.tau_mag,
                                                   tau_stat=cfg.tau_stat)
        d_ff = sets.cohens_d.numel()
        if sets.s_safety.numel():
            edit = transfer.build_edit(lm.model, layer, sets.s_safety, st, cfg)
            base_edits[(layer, "paper")] = edit
            score([edit], step="layer", neurons="paper", layer=layer,
                  predicted_gap_closed=transfer.predicted_gap_closed(lm.model, edit, st))
        edit = transfer.build_edit(lm.model, layer, torch.arange(d_ff), st, cfg)
        base_edits[(layer, "all")] = edit
        score([edit], step="layer", neurons="all", layer=layer)
    ranked = sorted((r for r in log.trials if r["step"] == "layer"), key=lambda r: -r["score"])
    top = []
    for r in ranked:
        if r["layer"] not in [t[0] for t in top]:
            top.append((r["layer"], r["neurons"]))
    top = top[:args.top]
    for layer, kind in top:      # step 2: one factor at a time at the best layers
        st = stats[layer]
        fp = base_edits[(layer, kind)].base_fingerprint
        energy = transfer.pair_gap_energy(lm.model, layer, st)
        for k in (1024,):
            idx = energy.topk(k).indices.sort().values
            score([transfer.build_edit(lm.model, layer, idx, st, cfg, base_fingerprint=fp)],
                  step="gap_topk", neurons=f"gap{k}", layer=layer, k=k)
        idx = base_edits[(layer, kind)].neurons
        for name, kw in (("rank", {"rank": 32}), ("gamma", {"gamma": 0.1}), ("gamma", {"gamma": 10.0}),
                         ("modules", {"modules": ("up",)})):
            c2 = transfer.EditConfig(**{**cfg.__dict__, **kw})
            score([transfer.build_edit(lm.model, layer, idx, st, c2, base_fingerprint=fp)],
                  step=name, neurons=kind, layer=layer,
                  **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()})
    log.finish()
    print(f"wrote {log.path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
