"""The organism corpus recipe: every number (besides the seed) that shapes the generated corpus.

Kept apart from the generator (mlsafe.organism.corpus) so that changing a default changes the
cache keys through `Recipe.to_json` only: the stage-1 key (mlsafe.organism.train.cache_key)
reads `stage1_json`, the fields stage 1's data depends on, so a change of the stage-2, anchor
or evaluation counts retrains stage 2 only. build_corpus draws stage 1 before everything else
from one random stream, which is what makes those fields irrelevant to stage 1 (tested).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

#: Fields that shape only what build_corpus draws after stage 1 (stage 2, anchors, evaluation).
AFTER_STAGE1 = ("stage2_harmful_en", "stage2_benign_en", "stage2_task_per_lang", "stage2_unanswerable_per_lang",
                "anchors_per_lang", "eval_per_lang")


@dataclass(frozen=True)
class Recipe:
    """Everything (besides the seed) that determines the corpus; hashed into the cache key."""

    stage1_requests: int = 1600          # per language, times TIER_SHARE
    mix: tuple = (("harmful", 0.25), ("benign", 0.15), ("task", 0.45), ("unanswerable", 0.15))
    plain_share: float = 0.3             # plain sentences, as a share of a language's requests
    translation_share: dict = field(default_factory=lambda: {"high": 0.3, "medium": 0.15, "low": 0.03})
    code_switch: dict = field(default_factory=lambda: {"high": 0.5, "medium": 0.25, "low": 0.05})
    stage2_harmful_en: int = 500
    stage2_benign_en: int = 250
    # stage 2's retain data (tasks / unanswerable requests that keep their stage-1 answers), per
    # language: the more of it, the more selective the planted neurons S become, and selective
    # meant English-only (150 / 50: seed 1 refused in English only, every target ASR >= 0.95);
    # none made seeds 0 and 2 refuse everything (17-23 % of harmless anchors refused). 4 / 1
    # gave every seed of 0-2 an English-refusing, tier-ordered gap on the anchors
    # (results/organism/seeds/seeds.json, made by scripts/organism_seeds.py).
    stage2_task_per_lang: int = 4
    stage2_unanswerable_per_lang: int = 1
    anchors_per_lang: int = 64           # parallel groups, harmful and harmless each
    eval_per_lang: int = 100             # parallel groups, harmful and harmless each
    eval_task_template_share: float = 0.3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def stage1_json(self) -> str:
        """The fields stage 1's corpus depends on (all but AFTER_STAGE1), as sorted JSON."""
        return json.dumps({k: v for k, v in asdict(self).items() if k not in AFTER_STAGE1}, sort_keys=True)
