"""Regeneration check for the packaged backbone (issue 15): the refusal margins and greedy
24-token responses of 24 PolyRefuse validation prompts (12 Japanese, 12 English, the first
rows of the harmful val split) under qwen2.5-coder-0.5b, written as JSON.

Run before and after a refactor that must not change behaviour; the two files must be
identical (compare their sha256). The output holds model responses to harmful prompts, so it
belongs outside the repository (default /tmp/regen_check.json).

    .venv/bin/python scripts/regen_check.py [--out FILE] [--data ROOT]
"""

from __future__ import annotations

import argparse
import hashlib
import json

import torch

MODEL = "qwen2.5-coder-0.5b"
LANGS = ("ja", "en")
PER_LANG = 12
NEW_TOKENS = 24


def main(argv=None) -> int:
    """Load the backbone, measure margins (mlsafe.evaluate.language_margins, the default start
    strings) and greedy responses (mlsafe.evaluate.generate), write them atomically."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/regen_check.json")
    ap.add_argument("--data", default=None, help="data root (default: mlsafe.data.real.data_root)")
    args = ap.parse_args(argv)

    from mlsafe import evaluate as ev
    from mlsafe.data.real import data_root, load_polyrefuse_harmful
    from mlsafe.models import load_model
    from mlsafe.results import write_atomic

    torch.manual_seed(0)
    pool = load_polyrefuse_harmful(data_root(args.data), "val", langs=LANGS)
    prompts = [p for lang in LANGS for p in [q for q in pool if q.lang == lang][:PER_LANG]]
    lm = load_model(MODEL, "cpu", seed=0)
    with torch.no_grad():
        margins = ev.language_margins(lm.model, lm.tokenizer, prompts, batch_size=8)
        responses = ev.generate(lm.model, lm.tokenizer, [p.text for p in prompts], max_new_tokens=NEW_TOKENS,
                                batch_size=8, progress=False)
    rows = [{"id": p.id, "lang": p.lang, "margin": round(float(m), 6), "response": r}
            for p, m, r in zip(prompts, margins, responses)]
    text = json.dumps({"model": MODEL, "rows": rows}, ensure_ascii=False, indent=1) + "\n"
    write_atomic(args.out, text)
    print(args.out, hashlib.sha256(text.encode()).hexdigest())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
