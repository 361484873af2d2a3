"""The evaluation suite of a model: data, judge and margin strings, chosen by its backend.

`make_suite(lm, data, seed, device)` asks the model's registered backend
(mlsafe.backends) for its suite factory; a model of no registered backend (a local
folder or a hub id) gets the real-data suite (mlsafe.data.suite.real_suite), on the
bundled fixtures for a tiny test model when DATA=auto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlsafe import evaluate as ev
from mlsafe.models import LoadedModel
from mlsafe.prompts import Prompt

UtilityFn = Callable[[str, str], bool]


@dataclass
class Suite:
    """Everything a model needs to be evaluated and edited: data, judge and margin strings."""

    name: str
    anchors_harmful: list[Prompt]
    anchors_harmless: list[Prompt]
    eval_harmful: list[Prompt]
    eval_harmless: list[Prompt]
    judge: ev.Judge
    refusal_starts: dict[str, list[str]]
    comply_starts: dict[str, list[str]]
    correct: UtilityFn                      # correct(response, answer) for harmless tasks
    max_new_tokens: int = 16
    harmless_max_new_tokens: int | None = None  # None: max_new_tokens
    sort_by_length: bool = False            # length-bucketed generation batches (real models)
    batch_size: int = 16                    # generation batch (fixed: batching changes padding)
    cache_responses: bool = False           # keep generated responses in the cache (real models)
    response_chars: int | None = None       # committed files keep this many characters of a response
    edit_defaults: dict | None = None       # EditConfig overrides for this suite (pipeline.edit_config)
    planted: dict | None = None             # the organism's planted safety neurons


def organism_suite(seed: int, lm: LoadedModel) -> Suite:
    """The organism's own corpus, its refusal check as judge, one start word per language."""
    from mlsafe import organism

    c = organism.build_corpus(seed=seed)
    starts = lambda table: {lang: [word] for lang, word in table.items()}  # noqa: E731
    planted = getattr(lm.model.config, "mlsafe_planted", None)  # {"variant", "layer", "neurons", ...}
    return Suite("organism-corpus", c.anchors_harmful, c.anchors_harmless, c.eval_harmful, c.eval_harmless,
                 ev.RefusalPhraseJudge(phrases={}, extra_check=organism.is_refusal),
                 starts(organism.REFUSAL_STARTS), starts(organism.COMPLY_STARTS),
                 organism.answer_correct, max_new_tokens=12, planted=planted)


def organism_backend_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """Suite factory of the organism backends (the corpus is the organism's own; `data` is unused)."""
    return organism_suite(seed, lm)


def gemma_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """Suite factory of gemma-270m: mlsafe.gemma.suite (its own prompts; `data` is unused)."""
    from mlsafe.gemma import suite

    return suite(seed)


def real_data_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """Suite of a folder or hub model: the real data sets, the fixtures for DATA=auto on a tiny model."""
    from mlsafe.data import real_suite

    if data == "auto":
        data = "fixtures" if lm.kind == "tiny" else "hub"
    return real_suite(data, device=device, seed=seed)


def make_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """The data, judge and margin strings for a model, from its backend (module docstring)."""
    from mlsafe.backends import get_backend

    backend = get_backend(lm.backend)
    factory = backend.suite_factory() if backend is not None else real_data_suite
    return factory(lm, data, seed, device)
