"""ASR per language with Wilson 95 % intervals, and the per-prompt CSV.

The paper reports ASR (share of responses judged unsafe, Sec. 5) without intervals;
with 313 prompts per language a Wilson interval is about +-5 points around 30 %.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt
from mlsafe.results import write_atomic

Z95 = 1.959963984540054


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


def asr_table(prompts: Sequence[Prompt], judgments: Sequence) -> pd.DataFrame:
    """Per language: n, unsafe, asr, ci_lo, ci_hi (Wilson 95 %), unparsed; index = language."""
    if len(prompts) != len(judgments):
        raise ValueError(f"{len(prompts)} prompts but {len(judgments)} judgments")
    if not prompts:
        raise ValueError("asr_table needs at least one prompt")
    df = pd.DataFrame({"lang": [p.lang for p in prompts],
                       "unsafe": [bool(j.unsafe) for j in judgments],
                       "unparsed": [j.label == "unparsed" for j in judgments]})
    g = df.groupby("lang").agg(n=("unsafe", "size"), unsafe=("unsafe", "sum"), unparsed=("unparsed", "sum"))
    g = g.loc[lang_order(g.index)]
    g["asr"] = g["unsafe"] / g["n"]
    cis = [wilson(int(k), int(n)) for k, n in zip(g["unsafe"], g["n"])]
    g["ci_lo"] = [c[0] for c in cis]
    g["ci_hi"] = [c[1] for c in cis]
    return g[["n", "unsafe", "asr", "ci_lo", "ci_hi", "unparsed"]].astype(
        {"n": "int64", "unsafe": "int64", "unparsed": "int64", "asr": "float64"})


def summary_blocks(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The `asr` and `asr_ci` entries of summary.json from an asr_table: ({lang: asr}, {lang: [lo, hi]})."""
    asr = {lang: float(row.asr) for lang, row in table.iterrows()}
    ci = {lang: [float(row.ci_lo), float(row.ci_hi)] for lang, row in table.iterrows()}
    return asr, ci


def write_per_prompt_csv(path: str | Path, prompts: Sequence[Prompt], responses: Sequence[str],
                         judgments: Sequence, margins: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per prompt (id, lang, parallel_id, prompt, response, unsafe, refusal, label,
    judge_raw[, margin]), written atomically; returns the frame."""
    n = len(prompts)
    if len(responses) != n or len(judgments) != n or (margins is not None and len(margins) != n):
        raise ValueError("prompts, responses, judgments (and margins) must have the same length")
    df = pd.DataFrame({
        "id": [p.id for p in prompts], "lang": [p.lang for p in prompts],
        "parallel_id": [p.parallel_id for p in prompts], "prompt": [p.text for p in prompts],
        "response": list(responses), "unsafe": [j.unsafe for j in judgments],
        "refusal": [j.refusal for j in judgments], "label": [j.label for j in judgments],
        "judge_raw": [j.raw for j in judgments],
    })
    if margins is not None:
        df["margin"] = [float(m) for m in margins]
    # Quote every field: responses of random models can hold \r and other control characters.
    write_atomic(Path(path), df.to_csv(index=False, quoting=csv.QUOTE_ALL, lineterminator="\n"))
    return df
