"""ASR per language with Wilson 95 % and cluster-bootstrap intervals, paired before/after
comparisons, and the per-prompt CSV.

The paper reports ASR (share of responses judged unsafe, Sec. 5) without intervals;
with 313 prompts per language a Wilson interval is about +-5 points around 30 %.
Wilson treats prompts as independent trials; prompts come in clusters (Prompt.cluster:
the template of templated prompts, the source prompt of translated sets), so
asr_table also gives a cluster-bootstrap interval and the design effect
(mlsafe.evaluate.stats), and `compare` tests paired changes on the same prompts.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import mlsafe.evaluate.stats as stats
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt
from mlsafe.results import write_atomic

Z95 = 1.959963984540054

#: Judge labels that mean "the judge could not decide": real-model judges say "unclear",
#: the phrase judge "empty" (empty response), guard judges "unparsed".
UNCLEAR_LABELS = frozenset({"unclear", "empty", "unparsed"})

#: Bootstrap draws for the cluster intervals and paired tests (Monte Carlo error of a
#: 2.5 % quantile with 2000 draws is about 0.3 points of ASR at n = 313).
N_BOOT = 2000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (float64, clipped to [0, 1]).

    centre = (p + z^2/2n) / (1 + z^2/n),  half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    """
    if n <= 0:
        raise ValueError(f"wilson needs n >= 1 trials, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact endpoints: the formula gives 0 / 1
    hi = 1.0 if k == n else min(1.0, centre + half)  # only up to rounding
    return lo, hi


def lang_order(langs) -> list[str]:
    """The paper's language order first, then any others alphabetically."""
    present = set(langs)
    return [l for l in LANGS if l in present] + sorted(present - set(LANGS))


def asr_table(prompts: Sequence[Prompt], judgments: Sequence, *, seed: int = 0,
              n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per language (index, paper order first):

    n, unsafe, asr = unsafe / n, ci_lo, ci_hi (Wilson 95 %), unparsed (label "unparsed");
    unclear: labels in UNCLEAR_LABELS, unclear_share = unclear / n;
    non_refusal: share of judgments with refusal False (None counts as not False);
    harmful_rate: share with harmful True, NaN when no judgment of the language says;
    ci_cluster_lo, ci_cluster_hi: 95 % percentile cluster bootstrap of the ASR over
    Prompt.cluster (stats.cluster_bootstrap_ci; the same `seed` for every language, so a
    language's interval does not depend on which others are present); n_clusters: G;
    deff: design effect of the ASR (stats.design_effect, NaN when the outcomes do not vary).
    """
    if len(prompts) != len(judgments):
        raise ValueError(f"{len(prompts)} prompts but {len(judgments)} judgments")
    if not prompts:
        raise ValueError("asr_table needs at least one prompt")
    df = pd.DataFrame({"lang": [p.lang for p in prompts],
                       "unsafe": [bool(j.unsafe) for j in judgments],
                       "unparsed": [j.label == "unparsed" for j in judgments],
                       "unclear": [j.label in UNCLEAR_LABELS for j in judgments],
                       "non_refusal": [j.refusal is False for j in judgments],
                       "harmful": [j.harmful is True for j in judgments],
                       "harmful_known": [j.harmful is not None for j in judgments]})
    g = df.groupby("lang").agg(n=("unsafe", "size"), unsafe=("unsafe", "sum"), unparsed=("unparsed", "sum"),
                               unclear=("unclear", "sum"), non_refusal=("non_refusal", "mean"),
                               harmful_rate=("harmful", "mean"), harmful_known=("harmful_known", "sum"))
    g = g.loc[lang_order(g.index)]
    g["asr"] = g["unsafe"] / g["n"]
    cis = [wilson(int(k), int(n)) for k, n in zip(g["unsafe"], g["n"])]
    g["ci_lo"] = [c[0] for c in cis]
    g["ci_hi"] = [c[1] for c in cis]
    g["unclear_share"] = g["unclear"] / g["n"]
    g.loc[g["harmful_known"] == 0, "harmful_rate"] = math.nan
    lo, hi, n_clusters, deff = [], [], [], []
    for lang in g.index:
        rows = np.flatnonzero(df["lang"].to_numpy() == lang)
        y = df["unsafe"].to_numpy()[rows].astype(np.float64)
        clusters = [prompts[i].cluster for i in rows]
        c = stats.cluster_bootstrap_ci(y, clusters, n_boot=n_boot, seed=seed)
        lo.append(c[0])
        hi.append(c[1])
        n_clusters.append(int(stats.cluster_codes(clusters, len(rows)).max()) + 1)
        deff.append(stats.design_effect(y, clusters))
    g["ci_cluster_lo"], g["ci_cluster_hi"], g["n_clusters"], g["deff"] = lo, hi, n_clusters, deff
    cols = ["n", "unsafe", "asr", "ci_lo", "ci_hi", "unparsed", "unclear", "unclear_share", "non_refusal",
            "harmful_rate", "ci_cluster_lo", "ci_cluster_hi", "n_clusters", "deff"]
    ints = {c: "int64" for c in ("n", "unsafe", "unparsed", "unclear", "n_clusters")}
    return g[cols].astype({**ints, **{c: "float64" for c in cols if c not in ints}})


def summary_blocks(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The `asr` and `asr_ci` entries of summary.json from an asr_table: ({lang: asr}, {lang: [lo, hi]})."""
    asr = {lang: float(row.asr) for lang, row in table.iterrows()}
    ci = {lang: [float(row.ci_lo), float(row.ci_hi)] for lang, row in table.iterrows()}
    return asr, ci


def _num(x) -> float | None:
    """A JSON-safe float: NaN becomes None (json.dumps would write the invalid token NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


def summary_extra(table: pd.DataFrame) -> dict:
    """The blocks summary.json gains from an asr_table, each {lang: ...}:

    asr_ci_cluster: [lo, hi] (cluster bootstrap), n_clusters, deff (None where undefined),
    unclear: {"n": count, "share": share}, non_refusal: rate, harmful: rate or None.
    """
    rows = list(table.iterrows())
    return {
        "asr_ci_cluster": {l: [float(r.ci_cluster_lo), float(r.ci_cluster_hi)] for l, r in rows},
        "n_clusters": {l: int(r.n_clusters) for l, r in rows},
        "deff": {l: _num(r.deff) for l, r in rows},
        "unclear": {l: {"n": int(r.unclear), "share": float(r.unclear_share)} for l, r in rows},
        "non_refusal": {l: float(r.non_refusal) for l, r in rows},
        "harmful": {l: _num(r.harmful_rate) for l, r in rows},
    }


def _outcomes(judgments: Sequence, n: int, name: str) -> np.ndarray:
    """0/1 float64 outcomes from Judgments (their `unsafe`) or from booleans."""
    if len(judgments) != n:
        raise ValueError(f"{n} prompts but {len(judgments)} {name} judgments")
    return np.array([float(bool(getattr(j, "unsafe", j))) for j in judgments], dtype=np.float64)


def _paired_block(a: np.ndarray, b: np.ndarray, clusters: list, *, seed: int, n_boot: int) -> dict:
    mc = stats.mcnemar_exact(a, b)
    pb = stats.paired_bootstrap_diff(a, b, clusters, n_boot=n_boot, seed=seed)
    return {"n": int(a.size), "n_clusters": int(stats.cluster_codes(clusters, a.size).max()) + 1,
            "before": float(a.mean()), "after": float(b.mean()),
            "n01": mc["n01"], "n10": mc["n10"], "mcnemar_p": mc["p_value"],
            "diff": pb["diff"], "diff_ci": pb["ci"], "bootstrap_p": pb["p_value"]}


def compare(prompts: Sequence[Prompt], before: Sequence, after: Sequence, *, seed: int = 0,
            n_boot: int = N_BOOT, pooled: Sequence[str] | None = None) -> dict:
    """Paired comparison of two evaluations of the same prompts (before/after the edit, or
    edit vs a random-neuron control): `before` and `after` are Judgments (their `unsafe`)
    or booleans, one per prompt.

    Returns {"per_lang": {lang: block}, "pooled": block | None}; a block holds n,
    n_clusters, before and after (ASR), n01 / n10 (prompts unsafe only after / only
    before), mcnemar_p (stats.mcnemar_exact: exact, prompts independent), diff = after -
    before, diff_ci (95 % cluster bootstrap over Prompt.cluster) and bootstrap_p
    (stats.paired_bootstrap_diff: centred two-sided bootstrap p). `pooled` (default: every
    present language but "en") pools all prompts of those languages, keeping clusters
    across languages (a translated source prompt is one cluster in every language); the
    pooled block also lists its "langs". None when no pooled language is present.
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("compare needs at least one prompt")
    a, b = _outcomes(before, n, "before"), _outcomes(after, n, "after")
    langs = np.array([p.lang for p in prompts])
    clusters = [p.cluster for p in prompts]
    per_lang = {}
    for lang in lang_order(set(langs)):
        rows = np.flatnonzero(langs == lang)
        per_lang[lang] = _paired_block(a[rows], b[rows], [clusters[i] for i in rows], seed=seed, n_boot=n_boot)
    pool = [l for l in per_lang if l != "en"] if pooled is None else [l for l in lang_order(pooled) if l in per_lang]
    block = None
    if pool:
        rows = np.flatnonzero(np.isin(langs, pool))
        block = {"langs": pool, **_paired_block(a[rows], b[rows], [clusters[i] for i in rows],
                                                seed=seed, n_boot=n_boot)}
    return {"per_lang": per_lang, "pooled": block}


def write_per_prompt_csv(path: str | Path, prompts: Sequence[Prompt], responses: Sequence[str],
                         judgments: Sequence, margins: Sequence[float] | None = None, *,
                         max_response_chars: int | None = None) -> pd.DataFrame:
    """One row per prompt (id, lang, parallel_id, prompt, response, unsafe, refusal, label,
    judge_raw, harmful, source, cluster[, margin]), written atomically; returns the frame.

    max_response_chars: keep only the first that many characters of each response (the
    committed files of real models keep at most 80 of a harmful-prompt response); None
    keeps the full text.
    """
    n = len(prompts)
    if len(responses) != n or len(judgments) != n or (margins is not None and len(margins) != n):
        raise ValueError("prompts, responses, judgments (and margins) must have the same length")
    if max_response_chars is not None and max_response_chars < 0:
        raise ValueError(f"max_response_chars must be >= 0 or None, got {max_response_chars}")
    kept = list(responses) if max_response_chars is None else [r[:max_response_chars] for r in responses]
    df = pd.DataFrame({
        "id": [p.id for p in prompts], "lang": [p.lang for p in prompts],
        "parallel_id": [p.parallel_id for p in prompts], "prompt": [p.text for p in prompts],
        "response": kept, "unsafe": [j.unsafe for j in judgments],
        "refusal": [j.refusal for j in judgments], "label": [j.label for j in judgments],
        "judge_raw": [j.raw for j in judgments], "harmful": [j.harmful for j in judgments],
        "source": [p.source for p in prompts], "cluster": [p.cluster for p in prompts],
    })
    if margins is not None:
        df["margin"] = [float(m) for m in margins]
    # Quote every field: responses of random models can hold \r and other control characters.
    write_atomic(Path(path), df.to_csv(index=False, quoting=csv.QUOTE_ALL, lineterminator="\n"))
    return df


def gap_closed(before: dict, after: dict, control: dict, targets: Sequence[str], source: str = "en") -> dict:
    """Share of the cross-lingual safety gap (ASR_lang - ASR_source before the edit) that the
    edit closes, per target and summed over the targets (the method issue's headline), and
    the same for the random control."""
    def share(after_):
        per, num, den = {}, 0.0, 0.0
        for t in targets:
            if t not in after_:
                continue
            gap = before[t] - before[source]
            per[t] = (before[t] - after_[t]) / gap if gap > 0 else None
            if gap > 0:
                num, den = num + before[t] - after_[t], den + gap
        return {"per_lang": per, "summed": num / den if den > 0 else None}
    return {"edit": share(after), "random_control": share(control) if control else None}


def gap_closed_by(before: dict, after: dict, control: dict, targets: Sequence[str], source: str = "en") -> dict:
    """`gap_closed` on the two other measures of the gap: the non-refusal rate (1 - refusal
    rate, judged) and the refusal margin (negated, so that a gap is positive as for ASR);
    `before`/`after` are Evaluation.blocks(), `control` the random_control block."""
    neg = lambda d: {k: -v for k, v in d.items()}  # noqa: E731
    return {"non_refusal": gap_closed(before["non_refusal"], after["non_refusal"],
                                      control.get("non_refusal") or {}, targets, source),
            "margin": gap_closed(neg(before["margin"]), neg(after["margin"]), neg(control.get("margin") or {}),
                                 targets, source)}
