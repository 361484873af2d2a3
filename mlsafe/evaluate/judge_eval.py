"""Validation of offline judges against WildGuard labels (the judge_dev file).

Rows are the dev file's records (model, lang, condition, prompt, response,
wildguard_refusal, wildguard_response_harmful). `agreement_table` compares a judge's
verdicts with WildGuard per language x condition; `train_clf` fits the RuleClfJudge's
harmful logistic regression (scikit-learn, training only); `heldout_clf` trains on one model's
completions and tests on the other's, both ways.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from mlsafe.errors import UserError
from mlsafe.evaluate.judges import Judgment
from mlsafe.prompts import Prompt

DEV_FILE = Path("judge_dev") / "wildguard_labelled.jsonl"


def load_dev(root: Path) -> list[dict]:
    """The dev rows under a data root (…/shared/data); UserError when the file is missing."""
    path = Path(root) / DEV_FILE
    if not path.is_file():
        raise UserError(f"no judge dev file at {path}; pass --data <root holding {DEV_FILE}>")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompts_of(rows: Sequence[dict]) -> list[Prompt]:
    """Prompt records of the dev rows (all PolyRefuse harmful requests)."""
    return [Prompt(id=str(i), lang=r["lang"], text=r["prompt"], harmful=True, parallel_id=str(i))
            for i, r in enumerate(rows)]


def agreement_table(rows: Sequence[dict], judgments: Sequence[Judgment]) -> dict[str, dict]:
    """Per "lang/condition" (and "all"): n, refusal agreement with WildGuard, judge and
    WildGuard non-refusal rates, bias (judge - WildGuard, signed), harmful agreement
    (judge harmful vs wildguard_response_harmful; a judge that gives no harmful, like
    the phrase judge, is read by its unsafe verdict),
    the judge's unclear share."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[f"{r['lang']}/{r['condition']}"].append(i)
        groups["all"].append(i)
    out = {}
    for key in sorted(groups, key=lambda k: (k == "all", k)):
        idx = groups[key]
        ref = np.array([bool(judgments[i].refusal) for i in idx])
        wg = np.array([bool(rows[i]["wildguard_refusal"]) for i in idx])
        harm = np.array([judgments[i].unsafe if judgments[i].harmful is None else judgments[i].harmful
                         for i in idx], dtype=bool)
        wgh = np.array([bool(rows[i]["wildguard_response_harmful"]) for i in idx])
        out[key] = {"n": len(idx), "agreement": float((ref == wg).mean()),
                    "judge_rate": float(1 - ref.mean()), "wildguard_rate": float(1 - wg.mean()),
                    "bias": float(wg.mean() - ref.mean()),
                    "harmful_agreement": float((harm == wgh).mean()), "judge_harmful_rate": float(harm.mean()),
                    "wildguard_harmful_rate": float(wgh.mean()),
                    "unclear": float(np.mean([judgments[i].label == "unclear" for i in idx]))}
    return out


def dev_analyses(rows: Sequence[dict]) -> list:
    """rule_judge.analyse of every dev row (computed once, shared by training and testing)."""
    from mlsafe.evaluate.rule_judge import analyse

    return [analyse(r["prompt"], r["response"], r["lang"]) for r in rows]


def train_clf(analyses: Sequence, rows: Sequence[dict], seed: int = 0):
    """Fit the harmful logistic regression on the rows' features (target
    wildguard_response_harmful; L2, C=1, no class re-weighting: the rate is what the judge
    must reproduce). Returns a rule_judge.Logistic."""
    from sklearn.linear_model import LogisticRegression

    from mlsafe.evaluate.rule_judge import FEATURES, Logistic

    x = np.array([[a.features[n] for n in FEATURES] for a in analyses])
    y = np.array([int(r["wildguard_response_harmful"]) for r in rows])
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x, y)
    return Logistic(list(FEATURES), lr.coef_[0].copy(), float(lr.intercept_[0]))


def by_model(rows: Sequence[dict]) -> dict[str, list[int]]:
    """Row indices grouped by the completing model (sorted by model name)."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        out[r["model"]].append(i)
    return dict(sorted(out.items()))


def heldout(rows: Sequence[dict], analyses: Sequence | None = None, seed: int = 0) -> dict[str, dict]:
    """Held-out-model validation, both ways. For each model M (the test model):
    "rules+clf" = RuleClfJudge with its harmful classifier trained on the other model's
    rows, tested on M's; "rules" = RuleJudge on M's rows (the rules were refined on
    gemma-2's errors only, so for Llama this is a held-out figure; for gemma-2 it is
    in-sample); "phrase" = the old RefusalPhraseJudge. Returns {M: {judge: agreement_table}}."""
    from mlsafe.evaluate.judges import RefusalPhraseJudge, RuleClfJudge, RuleJudge

    analyses = dev_analyses(rows) if analyses is None else analyses
    groups = by_model(rows)
    if len(groups) < 2:
        raise UserError("held-out-model validation needs completions of at least two models")
    out = {}
    for test, idx in groups.items():
        train = [i for m, ix in groups.items() if m != test for i in ix]
        sub = [rows[i] for i in idx]
        ps, rs = prompts_of(sub), [r["response"] for r in sub]
        model = train_clf([analyses[i] for i in train], [rows[i] for i in train], seed=seed)
        out[test] = {
            "rules+clf": agreement_table(sub, RuleClfJudge(model=model).judge(ps, rs, [analyses[i] for i in idx])),
            "rules": agreement_table(sub, RuleJudge().judge(ps, rs)),
            "phrase": agreement_table(sub, RefusalPhraseJudge().judge(ps, rs)),
        }
    return out
