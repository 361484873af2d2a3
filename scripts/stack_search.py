"""Issue 13's multi-layer lead: edits fitted in sequence (mlsafe.stack.fit_sequence), scored on
validation anchors only, exactly as scripts/edit_search.py scores its trials (mlsafe.trials).

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
import time
from pathlib import Path

from mlsafe import presets, transfer, trials
from mlsafe.stack import EditStack, check_layers, fit_sequence

ROOT = Path(__file__).resolve().parents[1]


def parse_sequences(texts: list[str]) -> list[tuple[int, ...]]:
    """'17,19' -> (17, 19), each checked (distinct non-negative layers)."""
    try:
        return [check_layers([int(v) for v in t.split(",")]) for t in texts]
    except ValueError as err:
        raise SystemExit(f"--sequences: {err} (give comma-separated layer lists, e.g. 17 17,19)") from None


def main() -> None:
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="stack.json", layer=None)
    ap.add_argument("--sequences", nargs="+", default=["17", "17,19", "15,17,19"],
                    help="layer sequences, each comma-separated, fitted in the order given")
    ap.add_argument("--preset", default="best", choices=sorted(presets.PRESETS))
    ap.add_argument("--save-stacks", default=None, metavar="DIR", help="also save each fitted stack there")
    args = ap.parse_args()
    sequences = parse_sequences(args.sequences)
    t0 = time.perf_counter()
    search = trials.load_search(args.model, args.data, args.seed, args.lang.split(","))
    lm, margin, anchors = search.lm, search.margin, search.anchors
    recipe = presets.resolve(args.preset, lm.model)
    cfg = transfer.EditConfig(targets=args.lang.split(","), seed=args.seed, **recipe)
    harmful, harmless = search.suite.anchors_harmful, search.suite.anchors_harmless
    print(search.before_line(), flush=True)
    out = Path(args.out) if args.out else ROOT / "results" / args.model / "search"
    log = trials.TrialLog(out / "stack.json", {
        "model": args.model, "targets": cfg.targets, "preset": args.preset,
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()
                   if k not in ("candidate_layers", "layer_selection")},
        "rank": cfg.rank, "gamma": cfg.gamma, "lam": cfg.lam, "seed": args.seed,
        "before": search.before_dict(),
        "n_val": {"harmful": len(anchors.val_harmful), "harmless": len(anchors.val_harmless)},
        "command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/stack_search.py "
                   f"{args.model} --data {args.data} --lang {args.lang} --sequences {' '.join(args.sequences)}"},
        t0=t0)

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
        row = trials.search_trial(search, list(stack.edits), layers=list(seq))
        row["n_neurons_per_step"] = [int(e.neurons.numel()) for e in stack.edits]
        row["fit_seconds_per_step"], row["fit_seconds"] = fitted[seq][1], sum(fitted[seq][1])
        row["score_seconds"] = row.pop("seconds")
        log.add(row)    # every trial lands on disk: a stopped run keeps what it measured
    log.finish()
    print(f"wrote {log.path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
