"""The real-model data suite for `make reproduce MODEL=<hub id or folder>` (Sec. 5).

Test set: Multi-StrongREJECT (8 languages). Anchors: HarmfulQA + CatHarmfulQA + LLM-LAT
harmful and NaturalReasoning harmless, in all 8 languages, checked disjoint from the test
set. Utility during the run: MGSM (final-number exact match) in the languages it covers;
MMMLU is scored separately by log-likelihood (mlsafe.evaluate.mmlu_accuracy on load_mmmlu).
"""

from __future__ import annotations

import random

from mlsafe.data.loaders import (load_anchors_harmful, load_anchors_harmless, load_mgsm,
                                 load_multi_strongreject)
from mlsafe.data.overlap import check_no_overlap
from mlsafe.langs import LANGS


def pick_judge(judge: str, device: str):
    """"auto": Qwen3Guard-Gen-8B (the paper's judge) on CUDA, the refusal-phrase judge on CPU."""
    from mlsafe.evaluate import make_judge

    if judge == "auto":
        judge = "qwen3guard" if str(device).startswith("cuda") else "phrase"
    return make_judge(judge, device=device) if judge != "phrase" else make_judge("phrase")


def real_suite(data: str = "hub", *, device: str = "cpu", seed: int = 0, judge: str = "auto",
               n_anchors: int | None = None, max_new_tokens: int | None = None):
    """A pipeline Suite from the real data sets ("hub": $MLSAFE_DATA folders, else the hub),
    the bundled fixtures ("fixtures") or a data root folder (any other value).

    n_anchors: keep a seeded random subset of that many harmful anchor requests (all their
    translations together); None keeps all. max_new_tokens defaults to 256 (MGSM needs room
    to reason), 16 on fixtures.
    """
    from mlsafe.evaluate import DEFAULT_COMPLY_STARTS, DEFAULT_REFUSAL_STARTS, mgsm_correct
    from mlsafe.suites import Suite

    source = None if data == "hub" else data
    test = load_multi_strongreject(source=source)
    harmful = load_anchors_harmful(source, langs=LANGS)
    harmless = load_anchors_harmless(source, langs=LANGS)
    if n_anchors is not None:
        ids = sorted({p.parallel_id for p in harmful})
        if not 0 < n_anchors <= len(ids):
            raise ValueError(f"n_anchors must be in 1..{len(ids)}, got {n_anchors}")
        keep = set(random.Random(seed).sample(ids, n_anchors))
        harmful = [p for p in harmful if p.parallel_id in keep]
    check_no_overlap(harmful + harmless, test)
    if max_new_tokens is None:
        max_new_tokens = 16 if data == "fixtures" else 256
    return Suite(
        name="fixtures" if data == "fixtures" else "multi-strongreject",
        anchors_harmful=harmful, anchors_harmless=harmless, eval_harmful=test,
        eval_harmless=load_mgsm(LANGS, source), judge=pick_judge(judge, device),
        refusal_starts=DEFAULT_REFUSAL_STARTS, comply_starts=DEFAULT_COMPLY_STARTS,
        correct=mgsm_correct, max_new_tokens=max_new_tokens,
    )
