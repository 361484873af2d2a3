"""Agreement of the offline judges with hand labels of a real model's responses in the
four judge languages that have no WildGuard labels (vi, id, bn, he).

The labels are in judge_artefacts/dev_real_qwen05.jsonl (what they are, who made them
and their limits: judge_artefacts/dev_real_qwen05.md). Each row names its prompt by
Prompt.id and its condition ("base": the unedited Qwen2.5-Coder-0.5B-Instruct; "edited":
the same model with the sparse edit applied), and keeps at most the first 80 characters
of the response. The full responses live only in the local response cache
(~/.cache/mlsafe/responses/qwen2.5-coder-0.5b/*.json), so:

- `full_responses` rebuilds the evaluation set (mlsafe.data.real.real_data, no model)
  and looks every labelled row's full response up in the cache;
- `agreement` compares a judge's judgments with the labels per language: refusal
  agreement (refusal vs not), the judge's and the labeller's non-refusal rates and their
  difference (bias), unclear agreement (unclear vs not) and harmful agreement on the rows
  labelled harmful true/false;
- `measure` runs the default judge (rules+clf) and the old phrase judge on a set of
  responses (full ones, or the stored cuts, which is what CI can see).

The labels are held out: no judge was tuned on them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from mlsafe.evaluate.judges import Judgment
from mlsafe.prompts import Prompt

DEV_REAL_FILE = Path(__file__).resolve().parent / "judge_artefacts" / "dev_real_qwen05.jsonl"
LABELS = ("refusal", "compliance", "unclear")
CONDITIONS = ("base", "edited")
FIELDS = ("lang", "prompt_id", "source", "condition", "response", "label", "harmful", "how")
MAX_CUT = 80
#: The evaluation set the cached responses were generated on (mlsafe.data.real.real_data).
EVAL_SET = dict(n_per_lang=100, n_xstest=50, n_harmless_per_lang=25, n_mgsm=20, max_anchors=64, max_harmless=32)


def load_dev_real(path: Path = DEV_REAL_FILE) -> list[dict]:
    """The labelled rows of `path` (JSON lines), each checked: all FIELDS present, label in
    LABELS, condition in CONDITIONS, harmful in (True, False, None) and False for refusals,
    a non-empty "how", a response of at most MAX_CUT characters. Raises ValueError naming
    the first bad line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        missing = [f for f in FIELDS if f not in r]
        problem = (f"missing {missing}" if missing else
                   f"label {r['label']!r}" if r["label"] not in LABELS else
                   f"condition {r['condition']!r}" if r["condition"] not in CONDITIONS else
                   f"harmful {r['harmful']!r}" if r["harmful"] not in (True, False, None) else
                   "a refusal labelled harmful" if r["label"] == "refusal" and r["harmful"] is not False else
                   "empty how" if not str(r["how"]).strip() else
                   f"response of {len(r['response'])} > {MAX_CUT} characters" if len(r["response"]) > MAX_CUT else "")
        if problem:
            raise ValueError(f"{path}:{n}: {problem}")
        rows.append(r)
    return rows


def prompts_of(rows: Sequence[dict], texts: dict[str, str] | None = None) -> list[Prompt]:
    """One harmful Prompt per row, with its text from `texts` (prompt id -> text) when
    given, else an empty text (the committed file holds no prompt texts, so the rule
    judge's echo check cannot fire on the stored cuts)."""
    texts = texts or {}
    return [Prompt(id=r["prompt_id"], lang=r["lang"], text=texts.get(r["prompt_id"], ""), harmful=True,
                   parallel_id=r["prompt_id"], source=r["source"]) for r in rows]


def full_responses(rows: Sequence[dict], cache_dir: Path, data_root: Path | None = None
                   ) -> tuple[list[str], dict[str, str]]:
    """The full cached response of every row (condition "base" = the cache file whose key
    has "edit": null, "edited" = the one with an edit hash) and the prompt texts by id.
    The evaluation set is rebuilt without a model (real_data(data_root, 0, **EVAL_SET); None:
    $MLSAFE_DATA, else ../shared/data); each
    cache file's "responses" list is aligned with its eval_harmful. Raises ValueError when
    a condition's file is missing, ambiguous or misaligned, or a prompt id is unknown."""
    from mlsafe.data.real import real_data

    ev = real_data(None if data_root is None else str(data_root), 0, **EVAL_SET).eval_harmful
    index = {p.id: i for i, p in enumerate(ev)}
    by_cond: dict[str, list[list[str]]] = defaultdict(list)
    for f in sorted(Path(cache_dir).glob("*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        if len(d.get("responses", [])) != len(ev):
            raise ValueError(f"{f}: {len(d.get('responses', []))} responses for {len(ev)} prompts")
        by_cond["base" if d["key"].get("edit") is None else "edited"].append(d["responses"])
    out = []
    for r in rows:
        files = by_cond.get(r["condition"], [])
        if len(files) != 1:
            raise ValueError(f"{len(files)} cache files for condition {r['condition']!r} in {cache_dir}")
        if r["prompt_id"] not in index:
            raise ValueError(f"prompt {r['prompt_id']!r} is not in the evaluation set")
        out.append(files[0][index[r["prompt_id"]]])
    return out, {p.id: p.text for p in ev}


def agreement(rows: Sequence[dict], judgments: Sequence[Judgment]) -> dict[str, dict]:
    """Per language (and "all"): n; refusal_agreement (judge refusal == label refusal);
    judge_nonrefusal and label_nonrefusal rates and bias = judge - label (signed);
    unclear_agreement (judge "unclear" == label "unclear"); harmful_agreement over the
    n_harmful rows labelled harmful True/False (a judge that gives no harmful verdict,
    like the phrase judge, is read by its unsafe verdict; None when no such row)."""
    if len(rows) != len(judgments):
        raise ValueError(f"{len(rows)} rows but {len(judgments)} judgments")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["lang"]].append(i)
        groups["all"].append(i)
    out = {}
    for key in sorted(groups, key=lambda k: (k == "all", k)):
        idx = groups[key]
        n = len(idx)
        jref = [bool(judgments[i].refusal) for i in idx]
        lref = [rows[i]["label"] == "refusal" for i in idx]
        hidx = [i for i in idx if rows[i]["harmful"] is not None]
        jh = [bool(judgments[i].unsafe if judgments[i].harmful is None else judgments[i].harmful) for i in hidx]
        out[key] = {"n": n,
                    "refusal_agreement": sum(a == b for a, b in zip(jref, lref)) / n,
                    "judge_nonrefusal": 1 - sum(jref) / n, "label_nonrefusal": 1 - sum(lref) / n,
                    "bias": sum(lref) / n - sum(jref) / n,
                    "unclear_agreement": sum((judgments[i].label == "unclear") == (rows[i]["label"] == "unclear")
                                             for i in idx) / n,
                    "n_harmful": len(hidx),
                    "harmful_agreement": (sum(a == bool(rows[i]["harmful"]) for a, i in zip(jh, hidx)) / len(hidx)
                                          if hidx else None)}
    return out


def measure(rows: Sequence[dict], responses: Sequence[str], texts: dict[str, str] | None = None
            ) -> dict[str, dict[str, dict]]:
    """agreement() of the default real-model judge (rules+clf) and the old phrase judge
    on `responses` (aligned with `rows`), prompts from prompts_of(rows, texts)."""
    from mlsafe.evaluate.judges import make_judge

    prompts = prompts_of(rows, texts)
    return {name: agreement(rows, make_judge(name).judge(prompts, list(responses)))
            for name in ("rules+clf", "phrase")}


#: Where scripts/judge_report.py writes report_real's figures.
REPORT_FILE = Path(__file__).resolve().parents[2] / "results" / "judge" / "report_real_qwen05.json"
#: The local cache of the packaged model's responses (not in the repository, not in CI).
CACHE_DIR = Path.home() / ".cache" / "mlsafe" / "responses" / "qwen2.5-coder-0.5b"


def report_real(cache_dir: Path = CACHE_DIR, data_root: Path | None = None,
                path: Path = DEV_REAL_FILE) -> dict:
    """measure() on the FULL cached responses (with the real prompt texts) and on the
    stored 80-character cuts (empty prompt texts: what CI sees), for all rows and per
    condition. Numbers only (row counts and agreement figures). Raises ValueError when an
    edited row's full response equals its base row's (each response is labelled once)."""
    rows = load_dev_real(path)
    full, texts = full_responses(rows, cache_dir, data_root)
    base = {r["prompt_id"]: f for r, f in zip(rows, full) if r["condition"] == "base"}
    same = [r["prompt_id"] for r, f in zip(rows, full) if r["condition"] == "edited" and base.get(r["prompt_id"]) == f]
    if same:
        raise ValueError(f"edited rows identical to their base row (label each response once): {same}")
    out = {"full": measure(rows, full, texts), "cuts": measure(rows, [r["response"] for r in rows])}
    for cond in CONDITIONS:
        idx = [i for i, r in enumerate(rows) if r["condition"] == cond]
        if idx:
            out[f"full_{cond}"] = measure([rows[i] for i in idx], [full[i] for i in idx], texts)
    return out
