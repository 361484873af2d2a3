"""Anchor / test disjointness (Sec. 5: the edit's anchor prompts never come from the test set)."""

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
