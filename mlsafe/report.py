"""Tables the book's chapters show, computed from the results files (one source per number).

The chapters only call these and plot; every function takes the parsed summary.json (or
a results file) and returns a pandas DataFrame or plain numbers, so pytest checks what
the pages print.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlsafe.langs import LANGS, NAMES, TIERS

#: The per-language summary blocks shown as "before -> after" columns, in display order.
BLOCKS = ("asr", "non_refusal", "margin", "over_refusal", "utility")


def lang_frame(summary: dict, blocks=BLOCKS) -> pd.DataFrame:
    """Languages (rows, the paper's order) x "<block> before" / "<block> after" columns."""
    cols = {}
    for block in blocks:
        if block not in summary:
            continue
        for when in ("before", "after"):
            cols[f"{block} {when}"] = pd.Series(summary[block][when], dtype="float64")
    df = pd.DataFrame(cols)
    order = [lang for lang in LANGS if lang in df.index] + sorted(set(df.index) - set(LANGS))
    return df.loc[order]


def asr_with_control(summary: dict) -> pd.DataFrame:
    """Per language: ASR before, after the edit, after the random-neuron control (targets only),
    the cluster-bootstrap interval after the edit, the unclear share after, and n."""
    before, after = summary["asr"]["before"], summary["asr"]["after"]
    control = summary["edit"]["random_control"].get("asr", {})
    ci = summary.get("asr_ci_cluster", {}).get("after", {})
    unclear = summary.get("unclear", {}).get("after", {})
    n = {lang: v["n"] for lang, v in summary.get("unclear", {}).get("before", {}).items()}
    rows = {}
    for lang in [lang for lang in LANGS if lang in before]:
        rows[lang] = {"before": before[lang], "after": after[lang], "random control": control.get(lang),
                      "after lo": (ci.get(lang) or [None, None])[0], "after hi": (ci.get(lang) or [None, None])[1],
                      "unclear after": (unclear.get(lang) or {}).get("share"), "n": n.get(lang)}
    return pd.DataFrame(rows).T


def sources_frame(summary: dict) -> pd.DataFrame:
    """Per language: where its harmful evaluation prompts come from ("polyrefuse-test 50, ...")."""
    src = summary.get("data_report", {}).get("sources", {}).get("eval_harmful", {})
    rows = {lang: {"sources": ", ".join(f"{s} {k}" for s, k in sorted(src[lang].items())),
                   "n": sum(src[lang].values()), "real": not set(src[lang]) <= {"templated"}}
            for lang in LANGS if lang in src}
    return pd.DataFrame(rows).T


def paired_tests(summary: dict) -> pd.DataFrame:
    """The paired tests of summary["compare"]["after_vs_before"]: per language and pooled, the
    change in ASR (after - before), its cluster-bootstrap interval and both p-values."""
    comp = summary["compare"]["after_vs_before"]
    rows = {lang: comp["per_lang"][lang] for lang in LANGS if lang in comp["per_lang"]}
    if comp.get("pooled"):
        rows["pooled targets"] = comp["pooled"]
    return pd.DataFrame({k: {"before": v["before"], "after": v["after"], "diff": v["diff"],
                             "diff lo": v["diff_ci"][0], "diff hi": v["diff_ci"][1],
                             "McNemar p": v["mcnemar_p"], "bootstrap p": v["bootstrap_p"]}
                         for k, v in rows.items()}).T


def edit_vs_control(summary: dict) -> dict | None:
    """The pooled paired test of the edit against the first random-control draw with an ASR
    (diff = control - edit; positive means the edit leaves fewer unsafe answers)."""
    comps = summary["edit"]["random_control"].get("compare_edit_vs_random") or []
    return comps[0]["pooled"] if comps and comps[0].get("pooled") else None


def gap_closed(summary: dict) -> pd.DataFrame:
    """Share of each target's gap to English closed by the edit and by the random control."""
    g = summary["gap_closed"]
    rows = {lang: {"edit": v, "random control": (g.get("random_control") or {}).get("per_lang", {}).get(lang)}
            for lang, v in g["edit"]["per_lang"].items()}
    rows["summed"] = {"edit": g["edit"]["summed"],
                      "random control": (g.get("random_control") or {}).get("summed")}
    return pd.DataFrame(rows).T


def tier_means(values: dict[str, float]) -> dict[str, float]:
    """Mean of a per-language value by the paper's resource tier (source, high, medium, low)."""
    out: dict[str, list[float]] = {}
    for lang, v in values.items():
        if v is not None and lang in TIERS:
            out.setdefault(TIERS[lang], []).append(float(v))
    return {tier: sum(v) / len(v) for tier, v in out.items()}


def judge_agreement(report: dict, model: str, judge: str | None = None) -> pd.DataFrame:
    """The judge report's held-out-model rows for `model` (results/judge/report.json): per
    language/condition n, refusal agreement with WildGuard, bias, harmful agreement."""
    judge = judge or report["judge"]
    rows = report["heldout_model"][model][judge]
    return pd.DataFrame({k: {"n": v["n"], "agreement": v["agreement"], "bias": v["bias"],
                             "harmful agreement": v["harmful_agreement"]} for k, v in rows.items()}).T


def response_openings(csv_path: str | Path, langs=LANGS, *, per_lang: int = 2, chars: int = 60,
                      label: str | None = None) -> pd.DataFrame:
    """A few response openings per language from a committed per-prompt CSV (already cut to
    80 characters for real models), optionally only those with judge label `label`; for the
    book's folded examples (refusal openings only)."""
    df = pd.read_csv(csv_path, keep_default_na=False)
    if label is not None:
        df = df[df["label"] == label]
    out = []
    for lang in langs:
        sub = df[df["lang"] == lang].head(per_lang)
        for _, row in sub.iterrows():
            out.append({"lang": NAMES.get(lang, lang), "label": row["label"],
                        "opening": str(row["response"])[:chars].replace("\n", " ")})
    return pd.DataFrame(out)
