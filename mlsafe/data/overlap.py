"""Anchor / test disjointness (Sec. 5: the edit's anchor prompts never come from the test set):
exact matches of normalised texts, and near duplicates by character n-gram Jaccard similarity."""

from __future__ import annotations

import unicodedata
from typing import Callable, Sequence

from mlsafe.prompts import Prompt


def normalise_prompt(text: str) -> str:
    """NFKC, casefold, and drop every character that is not a letter, mark or digit, so that
    near-duplicates differing only in case, spacing or punctuation compare equal."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold()
                   if unicodedata.category(ch)[0] in "LMN")


def find_overlaps(anchors: Sequence[Prompt], test: Sequence[Prompt], *,
                  normalise: Callable[[str], str] = normalise_prompt) -> list[tuple[Prompt, Prompt]]:
    """(anchor, test) pairs whose normalised texts are equal (empty normalised texts ignored)."""
    by_text: dict[str, list[Prompt]] = {}
    for t in test:
        key = normalise(t.text)
        if key:
            by_text.setdefault(key, []).append(t)
    return [(a, t) for a in anchors for t in by_text.get(normalise(a.text), [])]


def check_no_overlap(anchors: Sequence[Prompt], test: Sequence[Prompt], *,
                     normalise: Callable[[str], str] = normalise_prompt) -> None:
    """Raise ValueError listing the overlapping prompts if any anchor matches a test prompt."""
    pairs = find_overlaps(anchors, test, normalise=normalise)
    if pairs:
        shown = "\n".join(f"  anchor {a.id} == test {t.id}: {a.text[:80]!r}" for a, t in pairs[:10])
        more = f"\n  ... and {len(pairs) - 10} more" if len(pairs) > 10 else ""
        raise ValueError(f"{len(pairs)} anchor prompt(s) overlap the test set; remove them from the "
                         f"anchors:\n{shown}{more}")


# ------------------------------------------------------------------ near duplicates
def char_ngrams(text: str, n: int = 5, *, normalise: Callable[[str], str] = normalise_prompt) -> frozenset[str]:
    """The set of character n-grams of the normalised text (the whole normalised text when it
    is shorter than n; empty for an empty normalised text). Character n-grams need no word
    segmentation, so they work alike for Thai, Chinese and Japanese."""
    key = normalise(text)
    if len(key) <= n:
        return frozenset([key]) if key else frozenset()
    return frozenset(key[i:i + n] for i in range(len(key) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def find_near_duplicates(anchors: Sequence[Prompt], test: Sequence[Prompt], *, n: int = 5,
                         threshold: float = 0.8, normalise: Callable[[str], str] = normalise_prompt,
                         ) -> list[tuple[Prompt, Prompt, float]]:
    """(anchor, test, jaccard) for pairs whose character n-gram Jaccard similarity (of normalised
    texts) is at least `threshold`; exact duplicates (similarity 1) included. Pairs across
    languages count too (an untranslated row is a duplicate whatever its language tag).

    Exact, not approximate: an inverted index from n-gram to test prompts counts the shared
    n-grams of every candidate pair, so only pairs sharing at least one n-gram are scored."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams_t = [char_ngrams(t.text, n, normalise=normalise) for t in test]
    index: dict[str, list[int]] = {}
    for j, grams in enumerate(grams_t):
        for g in grams:
            index.setdefault(g, []).append(j)
    out = []
    for a in anchors:
        grams_a = char_ngrams(a.text, n, normalise=normalise)
        shared: dict[int, int] = {}
        for g in grams_a:
            for j in index.get(g, ()):
                shared[j] = shared.get(j, 0) + 1
        for j, k in shared.items():
            sim = k / (len(grams_a) + len(grams_t[j]) - k)
            if sim >= threshold:
                out.append((a, test[j], sim))
    return out


def overlap_report(anchors: Sequence[Prompt], eval_prompts: Sequence[Prompt], *, n: int = 5,
                   threshold: float = 0.8, normalise: Callable[[str], str] = normalise_prompt) -> dict:
    """Exact and near duplicates between anchors and evaluation prompts, per anchor language.

    Returns {lang: {"n_anchors", "n_eval", "exact", "near", "exact_pairs", "near_pairs"}} plus
    "params": {"n", "threshold"}. exact: pairs with equal normalised texts (normalise_prompt);
    near: the other pairs with character n-gram Jaccard >= threshold. exact_pairs lists
    [anchor id, eval id]; near_pairs [anchor id, eval id, jaccard rounded to 3 places].
    Counts are of pairs; "anchor_ids" lists the distinct anchors involved in either kind."""
    langs = sorted({p.lang for p in anchors} | {p.lang for p in eval_prompts})
    report: dict = {lang: {"n_anchors": sum(p.lang == lang for p in anchors),
                           "n_eval": sum(p.lang == lang for p in eval_prompts),
                           "exact": 0, "near": 0, "exact_pairs": [], "near_pairs": [], "anchor_ids": []}
                    for lang in langs}
    for a, t, sim in find_near_duplicates(anchors, eval_prompts, n=n, threshold=threshold, normalise=normalise):
        row = report[a.lang]
        if normalise(a.text) == normalise(t.text):
            row["exact"] += 1
            row["exact_pairs"].append([a.id, t.id])
        else:
            row["near"] += 1
            row["near_pairs"].append([a.id, t.id, round(sim, 3)])
        if a.id not in row["anchor_ids"]:
            row["anchor_ids"].append(a.id)
    report["params"] = {"n": n, "threshold": threshold}
    return report
