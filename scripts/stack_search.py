"""Issue 13's multi-layer lead: edits fitted in sequence (mlsafe.stack.fit_sequence), scored on
validation anchors only, exactly as scripts/edit_search.py scores its trials.

Recipe: the `best` preset's (mlsafe.presets: neuron_set "gap", neuron_k 1024 on the 0.5B,
stats_pass "fused", rank 8, gamma 1), one layer per step; step k is fitted on statistics of
the model with steps 1..k-1 applied. Every sequence is scored on the validation split of
transfer.split_anchors (the split fit uses): validation margins before and after
(transfer.validation_margins, transfer.score_gains: target harmful, harmless, English
harmful gains and the score) and the first-token KL on the harmless validation anchors
(mlsafe.evaluate.kl). Sequences sharing a prefix fit it once (fit_sequence(start=...)).
No evaluation prompt is read.

Writes results/<model>/search/stack.json (every trial, atomically, after each trial).
Rerun (about 5-8 minutes of statistics per fitted layer on one shared CPU core):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/stack_search.py qwen2.5-coder-0.5b \\
        --data /work/shared/data --sequences 17 17,19 15,17,19
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mlsafe import presets, transfer
from mlsafe.evaluate.kl import first_token_kl_per_prompt
from mlsafe.evaluate.margin import mean_by_lang
from mlsafe.models import load_model
from mlsafe.results import write_json
from mlsafe.stack import EditStack, check_layers, fit_sequence
from mlsafe.suites import make_suite

ROOT = Path(__file__).resolve().parents[1]


def parse_sequences(texts: list[str]) -> list[tuple[int, ...]]:
    """'17,19' -> (17, 19), each checked (distinct non-negative layers)."""
    try:
        return [check_layers([int(v) for v in t.split(",")]) for t in texts]
    except ValueError as err:
        raise SystemExit(f"--sequences: {err} (give comma-separated layer lists, e.g. 17 17,19)") from None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--lang", default="zh,ja,th")
    ap.add_argument("--sequences", nargs="+", default=["17", "17,19", "15,17,19"],
                    help="layer sequences, each comma-separated, fitted in the order given")
    ap.add_argument("--preset", default="best", choices=sorted(presets.PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for stack.json (default results/<model>/search)")
    ap.add_argument("--save-stacks", default=None, metavar="DIR", help="also save each fitted stack there")
    args = ap.parse_args()
    sequences = parse_sequences(args.sequences)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lm = load_model(args.model, "cpu", seed=args.seed)
    suite = make_suite(lm, args.data, args.seed, "cpu")
    from mlsafe.pipeline import margin_fn

    margin = margin_fn(suite, lm.tokenizer)
    recipe = presets.resolve(args.preset, lm.model)
    cfg = transfer.EditConfig(targets=args.lang.split(","), seed=args.seed, **recipe)
    harmful, harmless = suite.anchors_harmful, suite.anchors_harmless
    anchors = transfer.split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    val_harmless = list(anchors.val_harmless)
    before = transfer.validation_margins(lm.model, anchors, cfg, margin)
    print(f"validation margins before: target {before[0]:+.3f} harmless {before[1]:+.3f} source {before[2]:+.3f}",
          flush=True)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    trials: list[dict] = []

    def save(complete: bool) -> None:
        write_json(out / "stack.json", {
            "model": args.model, "targets": cfg.targets, "preset": args.preset,
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()
                       if k not in ("candidate_layers", "layer_selection")},
            "rank": cfg.rank, "gamma": cfg.gamma, "lam": cfg.lam, "seed": args.seed,
            "before": dict(zip(("target", "harmless", "source"), before)),
            "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(val_harmless)},
            "command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/stack_search.py "
                       f"{args.model} --data {args.data} --lang {args.lang} --sequences {' '.join(args.sequences)}",
            "seconds": time.perf_counter() - t0, "complete": complete, "trials": trials})

    fitted: dict[tuple[int, ...], tuple] = {}   # prefix -> (EditStack, fit seconds per step)
    for seq in sequences:
        start = max((p for p in fitted if seq[:len(p)] == p), key=len, default=None)
        if start != seq:
            step_seconds = list(fitted[start][1]) if start else []
            t = time.perf_counter()
            stack, reports = fit_sequence(lm.model, lm.tokenizer, harmful, harmless, cfg, seq[len(start or ()):],
                                          margin=margin, start=fitted[start][0] if start else None)
            # each step's own seconds: its statistics pass plus solve (reports carry both)
            step_seconds += [r.collect_seconds + r.solve_seconds for r in reports]
            print(f"fitted {list(seq)} in {time.perf_counter() - t:.0f} s", flush=True)
            for k in range(len(start or ()), len(seq)):   # every new prefix is reusable
                fitted[seq[:k + 1]] = (EditStack(stack.edits[:k + 1]), step_seconds[:k + 1])
        stack = fitted[seq][0]
        if args.save_stacks:
            stack.save(Path(args.save_stacks) / f"stack-{'-'.join(map(str, seq))}.safetensors")
        t = time.perf_counter()
        with stack.applied(lm.model):
            after = transfer.validation_margins(lm.model, anchors, cfg, margin)
        kl = first_token_kl_per_prompt(lm.model, lm.tokenizer, val_harmless, stack)
        row = {"layers": list(seq), **transfer.score_gains(before, after),
               "after": dict(zip(("target", "harmless", "source"), after)),
               "first_token_kl_mean": float(kl.mean()), "first_token_kl": mean_by_lang(val_harmless, kl),
               "n_neurons": stack.n_neurons, "n_neurons_per_step": [int(e.neurons.numel()) for e in stack.edits],
               "fraction_of_parameters": stack.fraction_of_parameters(lm.model),
               "fit_seconds_per_step": fitted[seq][1], "fit_seconds": sum(fitted[seq][1]),
               "score_seconds": time.perf_counter() - t}
        trials.append(row)
        save(complete=False)    # every trial lands on disk: a stopped run keeps what it measured
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "first_token_kl"}), flush=True)
    save(complete=True)
    print(f"wrote {out / 'stack.json'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
