"""Load (or train) the organism and print its held-out ASR, harmless accuracy and training time.

Usage: python scripts/organism_report.py [--seed 0] [--variant sparse|dense] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=("sparse", "dense"), default="sparse")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mlsafe.langs import LANGS, TIERS
    from mlsafe.organism import build_corpus
    from mlsafe.organism.check import quick_eval
    from mlsafe.organism.train import load_or_train, organism_dir

    t0 = time.time()
    model, tok = load_or_train(seed=args.seed, variant=args.variant, cache_dir=args.cache_dir, progress=True)
    wall = time.time() - t0
    info = json.loads((organism_dir(args.seed, args.variant, args.cache_dir) / "training.json").read_text())
    corpus = build_corpus(args.seed)
    res = quick_eval(model, tok, corpus.eval_harmful, corpus.eval_harmless)
    n_h = len(corpus.eval_harmful) // len(LANGS)
    n_s = len(corpus.eval_harmless) // len(LANGS)
    print(f"organism variant={args.variant} seed={args.seed} (held out: {n_h} harmful, {n_s} harmless per language)")
    print(f"{'lang':5}{'tier':8}{'ASR':>6}{'margin':>8}{'acc':>6}")
    for lang in LANGS:
        print(f"{lang:5}{TIERS[lang]:8}{res['asr'][lang]:6.2f}{res['margin'][lang]:8.2f}{res['accuracy'][lang]:6.2f}")
    planted = model.config.mlsafe_planted
    print(f"planted: layer {planted['layer']}, {len(planted['neurons'])} neurons ({planted['trained']})")
    print(f"training time: stage 1 {info['stage1_seconds']:.0f} s + stage 2 {info['stage2_seconds']:.0f} s "
          f"= {info['stage1_seconds'] + info['stage2_seconds']:.0f} s (this call: {wall:.0f} s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")


if __name__ == "__main__":
    main()
