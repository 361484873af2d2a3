"""The evaluation suite of a model: data, judge and margin strings, chosen by its backend,
and the pieces every run shares on a (model, suite) pair.

`Suite` is the record; the factories build it: `organism_suite` (the organism's corpus),
`gemma_suite` (mlsafe.gemma's prompts), `real_suite` (the real data sets of a folder or hub
model; mlsafe.data.real.real_model_suite is the packaged real models' own). `make_suite(lm,
data, seed, device)` asks the model's registered backend (mlsafe.backends) for its factory;
a model of no registered backend (a local folder or a hub id) gets `real_data_suite`, on
the bundled fixtures for a tiny test model when DATA=auto.

`load` gives the seeded (model, suite) pair of a run, `edit_config` its EditConfig (the
suite's edit defaults plus overrides) and `margin_fn` its refusal-margin function; the
pipeline, the diagnostics, the lab, the baselines and the ablations all start from them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mlsafe import evaluate as ev
from mlsafe import transfer
from mlsafe.langs import LANGS
from mlsafe.models import LoadedModel, load_model
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
    batch_tokens: int | None = None         # and its token budget (generate.token_batches)
    decode_rows: int | None = None          # batches decoded together up to this many rows (generate._Decoder)
    margin_batch: int = 16                  # rows per refusal-margin pass (margin_fn)
    cache_responses: bool = False           # keep generated responses in the cache (real models)
    response_chars: int | None = None       # committed files keep this many characters of a response
    edit_defaults: dict | None = None       # EditConfig overrides for this suite (edit_config)
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
    """Suite factory of gemma-270m: the anchor and held-out splits of mlsafe.gemma.data, a judge
    that applies the tuned model's refusal format (mlsafe.gemma.sft.is_refusal), exact-match
    utility (its own prompts; `data` is unused)."""
    from mlsafe.gemma.data import build_split
    from mlsafe.gemma.sft import COMPLY_STARTS, REFUSAL_STARTS, is_refusal

    anchor, held = build_split("anchor", seed=seed), build_split("eval", seed=seed)
    return Suite("gemma-prompts",
                 [p for p in anchor if p.harmful], [p for p in anchor if not p.harmful],
                 [p for p in held if p.harmful], [p for p in held if not p.harmful],
                 ev.RefusalPhraseJudge(phrases={}, extra_check=is_refusal),
                 REFUSAL_STARTS, COMPLY_STARTS, ev.exact_match, max_new_tokens=8)


def pick_judge(judge: str, device: str):
    """"auto": Qwen3Guard-Gen-8B (the paper's judge) on CUDA, the refusal-phrase judge on CPU."""
    if judge == "auto":
        judge = "qwen3guard" if str(device).startswith("cuda") else "phrase"
    return ev.make_judge(judge, device=device) if judge != "phrase" else ev.make_judge("phrase")


def real_suite(data: str = "hub", *, device: str = "cpu", seed: int = 0, judge: str = "auto",
               n_anchors: int | None = None, max_new_tokens: int | None = None) -> Suite:
    """The real-model data suite for `make reproduce MODEL=<hub id or folder>` (Sec. 5), from the
    real data sets ("hub": $MLSAFE_DATA folders, else the hub), the bundled fixtures
    ("fixtures") or a data root folder (any other value).

    Test set: Multi-StrongREJECT (8 languages). Anchors: HarmfulQA + CatHarmfulQA + LLM-LAT
    harmful and NaturalReasoning harmless, in all 8 languages, checked disjoint from the test
    set. Utility during the run: MGSM (final-number exact match) in the languages it covers;
    MMMLU is scored separately by log-likelihood (mlsafe.evaluate.mmlu_accuracy on load_mmmlu).

    n_anchors: keep a seeded random subset of that many harmful anchor requests (all their
    translations together); None keeps all. max_new_tokens defaults to 256 (MGSM needs room
    to reason), 16 on fixtures.
    """
    from mlsafe.data.loaders import load_anchors_harmful, load_anchors_harmless, load_mgsm, load_multi_strongreject
    from mlsafe.data.overlap import check_no_overlap

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
        refusal_starts=ev.DEFAULT_REFUSAL_STARTS, comply_starts=ev.DEFAULT_COMPLY_STARTS,
        correct=ev.mgsm_correct, max_new_tokens=max_new_tokens,
    )


def real_data_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """Suite of a folder or hub model: the real data sets, the fixtures for DATA=auto on a tiny model."""
    if data == "auto":
        data = "fixtures" if lm.kind == "tiny" else "hub"
    return real_suite(data, device=device, seed=seed)


def make_suite(lm: LoadedModel, data: str, seed: int, device: str) -> Suite:
    """The data, judge and margin strings for a model, from its backend (module docstring)."""
    from mlsafe.backends import get_backend

    backend = get_backend(lm.backend)
    factory = backend.suite_factory() if backend is not None else real_data_suite
    return factory(lm, data, seed, device)


# ----------------------------------------------------------------------------- what every run shares
def load(model_spec: str, *, device: str = "cpu", seed: int = 0, data: str = "auto") -> tuple[LoadedModel, Suite]:
    """The model of one seed and its suite (seeded, so every later step is deterministic)."""
    torch.manual_seed(seed)
    lm = load_model(model_spec, device, seed=seed)
    return lm, make_suite(lm, data, seed, device)


def edit_config(targets: Sequence[str], seed: int, suite: Suite, **overrides) -> transfer.EditConfig:
    """The EditConfig of a run: the suite's edit defaults, then `overrides`."""
    kw = dict(suite.edit_defaults or {})
    kw.update(overrides)
    return transfer.EditConfig(targets=list(targets), seed=seed, **kw)


def margin_fn(suite: Suite, tokenizer) -> transfer.MarginFn:
    """(model, prompts) -> per-prompt refusal margins with the suite's start strings (each
    prompt's language and English's; mlsafe.evaluate.language_margins)."""
    def margin(model, prompts: list[Prompt]) -> torch.Tensor:
        return ev.language_margins(model, tokenizer, prompts, refusal_starts=suite.refusal_starts,
                                   comply_starts=suite.comply_starts, batch_size=suite.margin_batch)
    return margin
