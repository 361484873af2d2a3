"""Issue 13's lead 3 (is S a format detector?), measured on anchors and held-aside prompts only.

The paper's S (eq. 13-16: S_mag | S_stat) contrasts English harmful anchors with English harmless
anchors (PolyRefuse harmless: recipes, arithmetic, how-to questions), which differ from the harmful
requests in form as well as in harm. XSTest-safe prompts are the near-miss in form: they read like
unsafe requests ("how do I kill a Python process") and are safe. The evaluation samples 100 of
XSTest's 250 (mlsafe.data.real.eval_sets); the other 150, minus any whose 5-grams overlap an
evaluation prompt (drop_overlapping), are held aside here and split in halves (seeded): "fit"
near-misses for the neuron statistics, "val" near-misses to score trials. They are drawn from the
same templates as the evaluation's XSTest prompts, so a recipe that used them would have seen the
over-refusal set's distribution: nothing here changes a preset. The evaluation prompts are read only to leave them out (ids and
5-gram overlap); no trial is scored on them.

Measurement (per cached layer, last prompt token as the edit reads it):

* S_std = S(English harmful vs PolyRefuse harmless fit anchors), the paper's set;
  S_near = S(English harmful vs fit near-misses); their sizes and overlap;
* ``format_share``: the share of S_std that is not in S_near (separates harmful from ordinary
  harmless prompts, but not from prompts that only look harmful);
* ``near_position``: on S_std, where the near-misses' mean activation sits between the harmless
  mean (0) and the harmful mean (1), per neuron, median and mean over S_std; 0 means S_std reads
  harm, 1 means it reads form.

Trials at --layer (the paper recipe there, one factor changed: which neurons), each scored as
scripts/lead_trials.py scores its trials (mlsafe.trials.search_trial: validation margin gains,
share of the validation gap, first-token KL on the harmless validation anchors) plus the mean
refusal-margin gain and first-token KL on the validation near-misses (an over-refusal proxy):
``S_std`` (the paper's), ``S_std & S_near`` (harm-specific), ``S_near``.

Writes results/<model>/search/lead3.json atomically after every trial. Rerun:
    OMP_NUM_THREADS=2 .venv/bin/python scripts/lead3_trials.py qwen2.5-coder-0.5b \\
        --data ../shared/data --stats-cache /tmp/search_stats.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mlsafe import neurons, presets, probe, transfer, trials
from mlsafe.data.real import data_root, held_aside_xstest
from mlsafe.edit import fingerprint
from mlsafe.evaluate.kl import first_token_kl_per_prompt

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="lead3.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cached, search = trials.layer_search(args, every_layer=True)
    st = cached[args.layer]
    lm, suite, anchors = search.lm, search.suite, search.anchors
    targets = args.lang.split(",")
    recipe = presets.resolve("paper", lm.model)
    cfg = transfer.EditConfig(targets=targets, seed=args.seed, **recipe)
    fit_near, val_near, info = held_aside_xstest(data_root(args.data), suite.eval_harmful + suite.eval_harmless,
                                                 args.seed)
    layers = sorted(cached)
    near_moments = probe.collect(lm.model, lm.tokenizer, transfer.chat_texts(lm.tokenizer, fit_near), layers,
                                 position=cfg.position, what=("activations",))
    taus = dict(tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat)
    measurement, sets = {}, {}
    for layer in layers:
        c = cached[layer]
        near = near_moments[layer]["activations"]
        sets[layer] = (neurons.safety_neurons_from_moments(c.acts_harm, c.acts_safe, **taus),
                       neurons.safety_neurons_from_moments(c.acts_harm, near, **taus))
        measurement[str(layer)] = neurons.contrast_overlap(*sets[layer], c.acts_harm, c.acts_safe, near)
        print(f"layer {layer}: {trials.brief(measurement[str(layer)])}", flush=True)

    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    command = (f"OMP_NUM_THREADS=2 .venv/bin/python scripts/lead3_trials.py {args.model} --data {args.data} "
               f"--lang {args.lang} --layer {args.layer} --stats-cache {args.stats_cache}")
    before_near = float(search.margin(lm.model, val_near).mean())
    log = trials.TrialLog(out / "lead3.json", {
        "model": args.model, "targets": targets, "layer": args.layer, "recipe": "paper", "rank": cfg.rank,
        "modules": list(cfg.modules), "gamma": cfg.gamma, "lam": cfg.lam, "seed": args.seed, "command": command,
        "near_misses": info, "measurement": measurement, "measurement_seconds": time.perf_counter() - t0,
        "objective": "score - first_token_kl_mean (validation anchors only)",
        "before": {**search.before_dict(), "near_miss": before_near}, "gap": search.gap,
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless),
                  "near_miss": len(val_near)}}, t0=t0)
    std, near = sets[args.layer]
    both = torch.tensor(sorted(set(std.s_safety.tolist()) & set(near.s_safety.tolist())), dtype=torch.long)
    fp = fingerprint(lm.model, args.layer)
    for name, idx in (("S_std", std.s_safety), ("S_std & S_near", both), ("S_near", near.s_safety)):
        if idx.numel() == 0:
            log.add({"neurons": name, "n_neurons": 0, "skipped": "empty set"})
            continue
        t = time.perf_counter()
        e = transfer.build_edit(lm.model, args.layer, idx, st, cfg, base_fingerprint=fp)
        row = trials.search_trial(search, [e], gap=search.gap, layers=[args.layer], lead="lead3", neurons=name,
                                  solve_seconds=time.perf_counter() - t)
        row["objective"] = row["score"] - row["first_token_kl_mean"]
        with e.applied(lm.model):
            row["near_miss_margin_gain"] = float(search.margin(lm.model, val_near).mean()) - before_near
        row["near_miss_first_token_kl_mean"] = float(first_token_kl_per_prompt(lm.model, lm.tokenizer, val_near,
                                                                              e).mean())
        log.add(row)
    log.finish()
    print(f"wrote {log.path}")


if __name__ == "__main__":
    main()
