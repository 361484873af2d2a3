"""Generation budget curve: judge agreement of k-token cuts with the 256-token cut.

Usage: OMP_NUM_THREADS=1 python scripts/generation_budget.py [--data ROOT] [--tokenizer DIR]
       [--judge NAME] [--threshold 0.98] [--out PATH]

Reads the judge dev file (judge_dev/wildguard_labelled.jsonl under the data root, located
as mlsafe.data.real.data_root does), tokenizes every response with the Qwen2.5-Coder-0.5B
tokenizer (only the tokenizer is loaded), cuts it to its first k tokens for each k in
mlsafe.evaluate.budget.BUDGETS, judges every cut with the default real-model judge and
prints, per k, pooled / per language / per condition: the share of responses whose
verdict (label and unsafe flag) equals the verdict at k=256, and the ASR at k beside the
ASR at 256. Writes numbers only (no response text) to results/judge/generation_budget.json
atomically and states the smallest k reaching the threshold pooled and in every language.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "judge" / "generation_budget.json"
TOKENIZER = Path("~/.cache/mlsafe/qwen2.5-coder-0.5b/base").expanduser()
CAVEAT = ("These are other models' completions (gemma-2-9b-it and Llama-3.1-8B-Instruct: longer and "
          "more fluent than the 0.5B model's); the curve on the packaged model itself would need "
          "256-token generations of it (too slow on this CPU).")


def _row(group: str, k: str, s: dict) -> str:
    return (f"{group:22s} {k:>4s} {s['n']:5d} {s['verdict_agreement']:6.3f} {s['label_agreement']:6.3f} "
            f"{s['unsafe_agreement']:6.3f} {s['disagreements']:5d} {s['to_unsafe']:4d} {s['to_safe']:4d} "
            f"{s['asr']:6.3f} {s['asr_reference']:6.3f}")


HEADER = (f"{'group':22s} {'k':>4s} {'n':>5s} {'agree':>6s} {'label':>6s} {'unsafe':>6s} {'#diff':>5s} "
          f"{'+uns':>4s} {'-uns':>4s} {'asr_k':>6s} {'asr256':>6s}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None,
                    help="data root holding judge_dev/wildguard_labelled.jsonl "
                         "(default: located as mlsafe.data.real.data_root)")
    ap.add_argument("--tokenizer", default=str(TOKENIZER), help=f"tokenizer folder (default {TOKENIZER})")
    ap.add_argument("--judge", default=None, help="judge name for make_judge (default: DEFAULT_REAL_JUDGE)")
    ap.add_argument("--threshold", type=float, default=None, help="agreement required (default budget.THRESHOLD)")
    ap.add_argument("--out", default=str(OUT), help=f"output JSON (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)

    from mlsafe.data.real import data_root
    from mlsafe.errors import UserError
    from mlsafe.evaluate import budget, judge_eval
    from mlsafe.evaluate.judges import DEFAULT_REAL_JUDGE, make_judge
    from mlsafe.results import write_json

    threshold = budget.THRESHOLD if args.threshold is None else args.threshold
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {threshold}")
    tok_dir = Path(args.tokenizer).expanduser()
    if not (tok_dir / "tokenizer.json").is_file() and not (tok_dir / "tokenizer_config.json").is_file():
        raise UserError(f"no tokenizer at {tok_dir}; pass --tokenizer <folder with tokenizer.json>")
    name = args.judge or DEFAULT_REAL_JUDGE
    judge = make_judge(name)
    rows = judge_eval.load_dev(data_root(args.data))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    responses = [r["response"] for r in rows]
    lengths = [len(x) for x in budget.token_ids(tokenizer, responses)]
    cuts = budget.truncations(tokenizer, responses, budget.BUDGETS)
    judgments = budget.judge_cuts(judge, judge_eval.prompts_of(rows), cuts)
    groups = budget.group_index(rows, ("lang", "condition", "model"))
    curve = budget.budget_curve(judgments, groups, budget.REFERENCE)

    langs = sorted(g for g in curve if g.startswith("lang="))
    need = ["all", *langs]
    measures = ("verdict_agreement", "label_agreement", "unsafe_agreement")
    chosen = {m: budget.smallest_budget(curve, need, threshold, m) for m in measures}
    pooled = {m: budget.smallest_budget(curve, ["all"], threshold, m) for m in measures}
    over = {str(k): sum(n > k for n in lengths) / len(lengths) for k in budget.BUDGETS}

    print(f"judge {name} (asr_metric {judge.asr_metric}); {len(rows)} dev responses; tokenizer {tok_dir}")
    print("agree = label and unsafe flag both equal the k=256 verdict; label / unsafe = each alone; "
          "+uns / -uns = unsafe at k but not at 256 / the other way")
    shown = ["all", *langs, *sorted(g for g in curve if g.startswith("condition="))]
    for g in shown:
        print(HEADER)
        for k, s in curve[g].items():
            print(_row(g, k, s))
    print("share of responses longer than k tokens: " + ", ".join(f"{k}:{v:.2f}" for k, v in over.items()))
    print(f"smallest k with agreement >= {threshold:.2f} pooled and in every language ({', '.join(langs)}), "
          f"holding at every larger k: verdict {chosen['verdict_agreement']}, label {chosen['label_agreement']}, "
          f"unsafe {chosen['unsafe_agreement']}; pooled only: verdict {pooled['verdict_agreement']}, "
          f"label {pooled['label_agreement']}, unsafe {pooled['unsafe_agreement']}")
    print(f"caveat: {CAVEAT}")

    out = {"judge": name, "asr_metric": judge.asr_metric, "tokenizer": "qwen2.5-coder-0.5b" if tok_dir == TOKENIZER
           else tok_dir.name, "data": str(judge_eval.DEV_FILE), "n": len(rows), "budgets": list(budget.BUDGETS),
           "reference": budget.REFERENCE, "threshold": threshold, "required_groups": need,
           "smallest_k": chosen, "smallest_k_pooled": pooled, "share_longer_than_k": over, "curve": curve,
           "caveat": CAVEAT}
    write_json(Path(args.out), out)
    print(f"[generation_budget] wrote {Path(args.out)}")
    return out


if __name__ == "__main__":
    from mlsafe.errors import UserError

    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
