"""The packaged Gemma-3-270m backbone: checkpoint, prompts, English-only safety tune.

`load_or_tune(seed)` gives the tuned chat model (mlsafe.gemma.sft), `suite(seed)` the data,
judge and margin strings the pipeline needs for MODEL=gemma-270m.
"""

from __future__ import annotations

from mlsafe.gemma.checkpoint import load_gemma
from mlsafe.gemma.sft import COMPLY_STARTS, REFUSAL_STARTS, is_refusal, load_or_tune

__all__ = ["load_gemma", "load_or_tune", "suite", "is_refusal", "REFUSAL_STARTS", "COMPLY_STARTS"]


def suite(seed: int = 0):
    """mlsafe.suites.Suite for the tuned Gemma: anchor and held-out splits of mlsafe.gemma.data,
    a judge that applies this model's refusal format (is_refusal), exact-match utility."""
    from mlsafe import evaluate as ev
    from mlsafe.evaluate.utility import exact_match
    from mlsafe.gemma.data import build_split
    from mlsafe.suites import Suite

    anchor, held = build_split("anchor", seed=seed), build_split("eval", seed=seed)
    return Suite("gemma-prompts",
                 [p for p in anchor if p.harmful], [p for p in anchor if not p.harmful],
                 [p for p in held if p.harmful], [p for p in held if not p.harmful],
                 ev.RefusalPhraseJudge(phrases={}, extra_check=is_refusal),
                 REFUSAL_STARTS, COMPLY_STARTS, exact_match, max_new_tokens=8)
