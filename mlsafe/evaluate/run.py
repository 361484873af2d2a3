"""One evaluation of a model on a suite (Sec. 5): generate -> judge -> per-language metrics.

The single evaluation API that the pipeline, the baselines, the ablations, the lab and the
diagnostics call. For the harmful evaluation prompts: greedy responses, the suite's judge,
ASR with Wilson and cluster-bootstrap intervals (metrics.asr_table), the refusal margin at
the generation position (read from the first generated token's logits when the responses are
generated here, so it costs no extra pass). For the harmless prompts: greedy responses, over-refusal (the
judge's refusal rate, per language and per data source, e.g. XSTest-safe) and utility
(`suite.correct` on the prompts that carry an answer, e.g. MGSM). Generation throughput
(new tokens per second) is recorded with every evaluation.

The suite is duck-typed (mlsafe.suites.Suite): this module sits below it and imports it
for type checking only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from mlsafe.evaluate.generate import generate, generate_scored, generate_with_first_logits
from mlsafe.evaluate.margin import language_margins, language_token_sets, margins_from_table, mean_by_lang, union_ids
from mlsafe.evaluate.metrics import asr_table, summary_blocks, summary_extra
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

if TYPE_CHECKING:  # pragma: no cover
    from mlsafe.suites import Suite


@dataclass
class Evaluation:
    """What one evaluation measured; `harmful`/`harmless` are the prompts, in the lists' order."""

    harmful: list[Prompt]
    harmless: list[Prompt]
    table: object                 # pandas DataFrame from asr_table
    margins: torch.Tensor         # per harmful prompt
    responses: list[str]
    judgments: list
    harmless_responses: list[str]
    harmless_judgments: list
    utility: dict[str, float]
    over_refusal: dict[str, float]
    over_refusal_by_source: dict[str, float]
    timing: dict = field(default_factory=dict)
    #: raw logits at the generation position of each harmless prompt [N, vocab] when asked
    #: for (evaluate(..., keep_harmless_logits=True)): the edited side of the first-token KL
    harmless_first_logits: torch.Tensor | None = None

    def blocks(self) -> dict:
        """The per-language entries of summary.json of this evaluation."""
        asr, ci = summary_blocks(self.table)
        return {"asr": asr, "asr_ci": ci, "margin": mean_by_lang(self.harmful, self.margins),
                "utility": self.utility, "over_refusal": self.over_refusal,
                "over_refusal_by_source": self.over_refusal_by_source, **summary_extra(self.table)}


def _rate_by(keys: Sequence[str], flags: Sequence[bool]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for k, f in zip(keys, flags):
        out.setdefault(k, []).append(bool(f))
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def harmful_responses(model, tokenizer, suite: "Suite", prompts: Sequence[Prompt], *, progress: bool = False,
                      stats: dict | None = None, desc: str = "harmful", drafts: Sequence[str] | None = None) -> list[str]:
    """Greedy responses to harmful prompts with the suite's generation settings (`drafts`: a
    draft response per prompt, verified rather than decoded; mlsafe.evaluate.draft)."""
    return generate(model, tokenizer, [p.text for p in prompts], max_new_tokens=suite.max_new_tokens,
                    batch_size=suite.batch_size, batch_tokens=suite.batch_tokens, decode_rows=suite.decode_rows,
                    progress=progress,
                    sort_by_length=suite.sort_by_length, stats=stats, desc=desc, drafts=drafts)


def harmful_responses_and_margins(model, tokenizer, suite: "Suite", prompts: Sequence[Prompt], *,
                                  progress: bool = False, stats: dict | None = None,
                                  desc: str = "harmful", drafts: Sequence[str] | None = None
                                  ) -> tuple[list[str], torch.Tensor]:
    """`harmful_responses` and each prompt's refusal margin (the suite's start strings), the
    margins read from the first generated token's logits: no margin pass of their own."""
    sets = language_token_sets(tokenizer, [p.lang for p in prompts], refusal_starts=suite.refusal_starts,
                               comply_starts=suite.comply_starts)
    ids = union_ids(sets)
    responses, logp = generate_scored(model, tokenizer, [p.text for p in prompts], ids,
                                      max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size,
                                      batch_tokens=suite.batch_tokens, decode_rows=suite.decode_rows,
                                      progress=progress,
                                      sort_by_length=suite.sort_by_length, stats=stats, desc=desc, drafts=drafts)
    return responses, margins_from_table(prompts, logp, ids, sets)


def evaluate(model, tokenizer, suite: "Suite", *, langs: Sequence[str] = LANGS, progress: bool = True,
             seed: int = 0, responses: Sequence[str] | None = None,
             harmless_responses: Sequence[str] | None = None, margins: Sequence[float] | None = None,
             keep_harmless_logits: bool = False, drafts: "Evaluation | None" = None) -> Evaluation:
    """ASR (judge on greedy responses), refusal margin, utility and over-refusal per language.

    `responses` / `harmless_responses`: responses already generated for exactly these prompts
    (e.g. from a cache); they are judged again, so a changed judge never reuses old verdicts.
    `margins`: the refusal margins of the harmful prompts, likewise (float64, one per prompt).
    keep_harmless_logits: keep the first-token logits of freshly generated harmless responses
    (Evaluation.harmless_first_logits; float32 [N, vocab], about 0.6 MB per prompt at a 150k
    vocabulary). drafts: an evaluation of the same prompts (e.g. the unedited model's) whose
    responses are verified as drafts where responses are generated here (same responses,
    fewer decode steps: mlsafe.evaluate.draft).
    """
    harmful = [p for p in suite.eval_harmful if p.lang in langs]
    harmless = [p for p in suite.eval_harmless if p.lang in langs]
    draft_h, draft_s = drafts_for(drafts, harmful), drafts_for(drafts, harmless)
    timing: dict = {}
    if responses is None:
        st: dict = {}
        if margins is None:
            responses, margins = harmful_responses_and_margins(model, tokenizer, suite, harmful,
                                                               progress=progress, stats=st, drafts=draft_h)
        else:
            responses = harmful_responses(model, tokenizer, suite, harmful, progress=progress, stats=st,
                                          drafts=draft_h)
        timing["harmful"] = st
    first_logits = None
    if harmless_responses is None:
        st = {}
        kw = dict(max_new_tokens=suite.harmless_max_new_tokens or suite.max_new_tokens,
                  batch_size=suite.batch_size, batch_tokens=suite.batch_tokens, decode_rows=suite.decode_rows,
                  progress=progress,
                  sort_by_length=suite.sort_by_length, stats=st, desc="harmless", drafts=draft_s)
        texts = [p.text for p in harmless]
        if keep_harmless_logits:
            harmless_responses, first_logits = generate_with_first_logits(model, tokenizer, texts, **kw)
        else:
            harmless_responses = generate(model, tokenizer, texts, **kw)
        timing["harmless"] = st
    if len(responses) != len(harmful) or len(harmless_responses) != len(harmless) \
            or (margins is not None and len(margins) != len(harmful)):
        raise ValueError("cached responses do not match the suite's prompts; delete the evaluation cache")
    judgments = suite.judge.judge(harmful, list(responses))
    if margins is None:
        margins = language_margins(model, tokenizer, harmful, refusal_starts=suite.refusal_starts,
                                   comply_starts=suite.comply_starts, batch_size=suite.margin_batch)
    else:
        margins = torch.as_tensor(margins, dtype=torch.float64)
    safe_judged = suite.judge.judge(harmless, list(harmless_responses))
    refused = [bool(j.refusal) for j in safe_judged]
    tasks = [(p, r) for p, r in zip(harmless, harmless_responses) if p.answer is not None]  # verifiable ones
    correct = [suite.correct(r, p.answer) for p, r in tasks]
    new = sum(t.get("new_tokens", 0) for t in timing.values())
    secs = sum(t.get("seconds", 0.0) for t in timing.values())
    if secs > 0:
        timing["tokens_per_second"] = new / secs
    return Evaluation(harmful, harmless, asr_table(harmful, judgments, seed=seed), margins, list(responses),
                      judgments, list(harmless_responses), safe_judged,
                      mean_by_lang([p for p, _ in tasks], correct), mean_by_lang(harmless, refused),
                      _rate_by([p.source or "unknown" for p in harmless], refused), timing, first_logits)


def drafts_for(drafts: Evaluation | None, wanted: Sequence[Prompt]) -> list[str] | None:
    """The responses of the evaluation `drafts` (harmful and harmless) in the order of `wanted`
    (drafts for mlsafe.evaluate.draft), or None when there is none or some wanted prompt has none."""
    if drafts is None:
        return None
    by_id = {p.id: r for p, r in zip([*drafts.harmful, *drafts.harmless],
                                     [*drafts.responses, *drafts.harmless_responses])}
    return [by_id[p.id] for p in wanted] if all(p.id in by_id for p in wanted) else None


def asr_of(model, tokenizer, suite: "Suite", langs: Sequence[str], *, seed: int = 0,
           drafts: Evaluation | None = None) -> tuple[dict, dict, list, list, torch.Tensor]:
    """ASR and non-refusal rate per language on the harmful prompts of `langs` only:
    ({lang: asr}, {lang: non_refusal}, prompts, judgments, margins); the margins come from
    the same forward passes as the responses (harmful_responses_and_margins). drafts: as in
    `evaluate`."""
    harmful = [p for p in suite.eval_harmful if p.lang in langs]
    responses, margins = harmful_responses_and_margins(model, tokenizer, suite, harmful,
                                                       drafts=drafts_for(drafts, harmful))
    judgments = suite.judge.judge(harmful, responses)
    table = asr_table(harmful, judgments, seed=seed)
    asr, _ = summary_blocks(table)
    return asr, summary_extra(table)["non_refusal"], harmful, judgments, margins
