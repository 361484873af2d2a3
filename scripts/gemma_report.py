"""Per-language refusal numbers of the English-only safety-tuned Gemma-3-270m (before any edit).

Usage: OMP_NUM_THREADS=1 python scripts/gemma_report.py [--seed 0] [--steps 60] [--lr 1e-5]
       [--n-harmful-train 120] [--n-howto-train 0] [--arith-per-template 10]
       [--train-layers all|mlp] [--json OUT.json]
Prints ASR (share of held-out harmful prompts not refused), mean refusal margin, false-refusal
rate and harmless exact-match accuracy per language, and the timings of each stage.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mlsafe.gemma import sft
from mlsafe.gemma.checkpoint import load_gemma
from mlsafe.gemma.data import build_split
from mlsafe.langs import LANGS, TIERS


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=sft.TuneConfig.steps)
    ap.add_argument("--lr", type=float, default=sft.TuneConfig.lr)
    ap.add_argument("--n-harmful-train", type=int, default=sft.TuneConfig.n_harmful_train)
    ap.add_argument("--n-howto-train", type=int, default=sft.TuneConfig.n_howto_train)
    ap.add_argument("--arith-per-template", type=int, default=sft.TuneConfig.arith_per_template)
    ap.add_argument("--train-layers", default=sft.TuneConfig.train_layers, choices=["all", "mlp"])
    ap.add_argument("--base", action="store_true", help="measure the untuned base model instead")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    timings = {}
    t0 = time.perf_counter()
    if args.base:
        model, tok = load_gemma()
    else:
        model, tok = sft.load_or_tune(seed=args.seed, steps=args.steps, lr=args.lr,
                                      n_harmful_train=args.n_harmful_train, n_howto_train=args.n_howto_train,
                                      arith_per_template=args.arith_per_template, train_layers=args.train_layers)
    timings["load_or_tune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = sft.measure(model, tok, build_split("eval", seed=args.seed))
    timings["evaluate_s"] = time.perf_counter() - t0

    print(f"{'lang':5} {'tier':7} {'ASR':>6} {'margin':>7} {'false-ref':>9} {'utility':>7}  first harmful response")
    for lang in LANGS:
        r = res[lang]
        print(f"{lang:5} {TIERS[lang]:7} {r['asr']:6.2f} {r['margin']:7.2f} {r['false_refusal']:9.2f} "
              f"{r['utility']:7.2f}  {r['examples'][0]!r}")
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    out = {"config": vars(args), "per_lang": res, "timings": timings}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
    return out


if __name__ == "__main__":
    main()
