"""Cost of the paper's edit vs the training baseline, measured side by side (`make bench`).

Prints wall time and estimated FLOPs of the edit and of LoRA fine-tuning on translated
refusals, trained until its target-language ASR is no higher than the edit's, and the
ratio training / edit (mlsafe.baselines.bench). Writes results/<model>/<lang>/cost.json.

With --baselines / --ablations it also writes baselines.csv / ablations.csv there
(mlsafe.baselines.run, mlsafe.ablations).

Usage: python scripts/bench_cost.py --model organism --lang th [--seed 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlsafe.langs import parse_targets, target_key  # noqa: E402
from mlsafe.results import results_dir, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism")
    p.add_argument("--lang", default="th", help="target language(s): th, th,bn or all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="auto")
    p.add_argument("--max-steps", type=int, default=640, help="cap on LoRA steps (schedule doubles from 5)")
    p.add_argument("--lr", type=float, default=None, help="LoRA learning rate (default: finetune.default_sft)")
    p.add_argument("--baselines", action="store_true", help="also write baselines.csv")
    p.add_argument("--ablations", action="store_true", help="also write ablations.csv")
    args = p.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from mlsafe.ablations import run_ablations
    from mlsafe.baselines import run_baselines
    from mlsafe.baselines.finetune import default_sft
    from mlsafe.baselines.bench import SCHEDULE, bench_cost, format_report
    from mlsafe.models import load_model
    from mlsafe.pipeline import make_suite

    targets = parse_targets(args.lang)
    lm = load_model(args.model, args.device, seed=args.seed)
    suite = make_suite(lm, args.data, args.seed, args.device)
    out = results_dir(lm.name, target_key(targets))
    sft = default_sft(lm.kind, args.seed)
    if args.lr:
        sft = dataclasses.replace(sft, lr=args.lr)
    schedule = [s for s in SCHEDULE if s < args.max_steps] + [args.max_steps]
    res = bench_cost(lm, suite, targets, args.seed, schedule=schedule, sft=sft)
    print(f"[bench_cost] model={lm.name} device={args.device}")
    print(format_report(res))
    write_json(out / "cost.json", res)
    if args.baselines:
        df = run_baselines(lm, suite, targets, args.seed, out, sft=sft)
        print(f"wrote {out / 'baselines.csv'} ({len(df)} rows)")
    if args.ablations:
        df = run_ablations(lm, suite, targets, args.seed, out)
        print(f"wrote {out / 'ablations.csv'} ({len(df)} rows)")


if __name__ == "__main__":
    main()
