"""Tables the book's chapters show, computed from the results files (one source per number).

The chapters only call these and plot; every function takes the parsed summary.json (or
a results file) and returns a pandas DataFrame or plain numbers, so pytest checks what
the pages print.
"""

from __future__ import annotations

import re
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


def xstest_change_pts(summary: dict) -> float:
    """Over-refusal on XSTest-safe after the edit minus before, in points (NaN without XSTest)."""
    xs = summary.get("over_refusal_by_source", {})
    if "xstest-safe" not in xs.get("before", {}):
        return float("nan")
    return 100 * (xs["after"]["xstest-safe"] - xs["before"]["xstest-safe"])


def target_runs_frame(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per run (label -> summary.json): the edit (preset, layer, |S|) and, averaged
    over the run's targets, ASR / non-refusal / refusal margin before, after the edit and
    after the random control, the paired p of edit vs before (McNemar, pooled targets) and of
    edit vs control (McNemar on verdicts, paired bootstrap on margins), the targets' mean
    first-token KL, and the XSTest-safe over-refusal change (points)."""
    def mean(block: dict | None, targets) -> float:
        vals = [block[t] for t in targets if block and block.get(t) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    rows = {}
    for label, s in summaries.items():
        t, e = s["target_langs"], s["edit"]
        rc = e["random_control"]
        pooled = (s["compare"]["after_vs_before"].get("pooled") or {})
        vs = edit_vs_control(s) or {}
        row = {"preset": e.get("preset", "paper"), "layer": e["layer"], "|S|": e["n_neurons"]}
        for block in ("asr", "non_refusal", "margin"):
            row[f"{block} before"] = mean(s[block]["before"], t)
            row[f"{block} after"] = mean(s[block]["after"], t)
            row[f"{block} control"] = mean(rc.get(block), t)
        row["p after vs before"] = pooled.get("mcnemar_p", float("nan"))
        row["p vs control"] = vs.get("mcnemar_p", float("nan"))
        row["margin p vs control"] = (rc.get("margin_edit_vs_random") or {}).get("p_value", float("nan"))
        row["KL targets"] = mean(s["kl"]["after"], t)
        row["XSTest over-refusal pts"] = xstest_change_pts(s)
        rows[label] = row
    return pd.DataFrame(rows).T


#: summary["timing"] keys of a run's stages, in pipeline order, and their names in the book.
STAGES = {"load_seconds": "load model and suite", "fit_seconds": "1. fit the edit",
          "evaluate_seconds": "2. evaluate unedited", "evaluate_edited_seconds": "3. evaluate edited",
          "control_seconds": "4. random control", "kl_seconds": "5. first-token KL"}


def timing_frame(summary: dict) -> pd.DataFrame:
    """Minutes and share of the run of each stage in summary["timing"] (STAGES; a stage an older
    run did not time is left out), then "other" (what run_seconds holds beyond them: writing
    files) and "whole run"; column `tokens/s` holds, in the whole run's row, the generation
    speed the summary records."""
    t = summary["timing"]
    run = t.get("run_seconds")
    rows = [(name, t[key]) for key, name in STAGES.items() if t.get(key) is not None]
    if run is not None:
        rows += [("other", max(run - sum(v for _, v in rows), 0.0)), ("whole run", run)]
    df = pd.DataFrame(rows, columns=["stage", "seconds"]).set_index("stage")
    df["minutes"] = df["seconds"] / 60
    df["share of run"] = df["seconds"] / run if run else float("nan")
    df["tokens/s"] = float("nan")
    if run is not None and t.get("tokens_per_second"):
        df.loc["whole run", "tokens/s"] = t["tokens_per_second"]
    return df[["minutes", "share of run", "tokens/s"]]


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


# ----------------------------------------------------------------------------- book facts
#: The one wording of each definition the book uses; book/glossary.md carries the same
#: text (tests/test_book.py checks it), chapters link to the glossary instead of rewording.
UTILITY_DEF = ("exact-match accuracy on the held-out harmless tasks of one language, reported per "
               "language (never averaged over languages)")


def seed_values(summary: dict, block: str, when: str | None, langs) -> list[float]:
    """Per-seed values of `block` (e.g. "asr", "utility"; `when` "before"/"after", or None for
    a block without it such as "random_control"), averaged over `langs`, in the order of
    summary["over_seeds"]["seeds"]; a one-seed run gives its single value. Languages
    missing from the block are skipped; ValueError when none is present."""
    spread = summary.get("over_seeds")
    if spread:
        src = spread[block] if when is None else spread[block][when]
        per_lang = [src[lang]["values"] for lang in langs if lang in src]
    else:
        src = summary["edit"]["random_control"]["asr"] if block == "random_control" else summary[block][when]
        per_lang = [[src[lang]] for lang in langs if lang in src]
    if not per_lang:
        raise ValueError(f"no language of {list(langs)} in block {block!r}")
    return [sum(col) / len(col) for col in zip(*per_lang)]


def per_seed_text(values, *, scale: float = 100.0, digits: int = 1, unit: str = " %") -> str:
    """Per-seed values joined as "69.0 / 100.0 / 26.0 %" (scaled, same digits for each)."""
    return " / ".join(f"{scale * v:.{digits}f}" for v in values) + unit


def book_facts(summary: dict) -> dict[str, str]:
    """The quantities more than one page of the book prints, formatted once (glued under
    these names by every chapter that shows them; tests/test_book.py checks that each
    is printed identically on every page). Per-seed values for every seed of the run,
    never one seed alone; the edit's fit time and the planted-neuron recovery exist for
    seed 0 only and say so."""
    targets = summary["target_langs"]
    edit = summary["edit"]
    spread = summary.get("over_seeds")
    seeds = spread["seeds"] if spread else [summary["seed"]]
    facts = {
        "fact_seeds": ", ".join(str(s) for s in seeds),
        "fact_n_seeds": str(len(seeds)),
        "fact_target_asr_before": per_seed_text(seed_values(summary, "asr", "before", targets)),
        "fact_target_asr_after": per_seed_text(seed_values(summary, "asr", "after", targets)),
        "fact_random_asr_after": per_seed_text(seed_values(summary, "random_control", None, targets)),
        "fact_en_asr_after": per_seed_text(seed_values(summary, "asr", "after", ["en"])),
        "fact_target_utility_before": per_seed_text(seed_values(summary, "utility", "before", targets)),
        "fact_target_utility_after": per_seed_text(seed_values(summary, "utility", "after", targets)),
        "fact_n_neurons": " / ".join(str(int(n)) for n in (spread["n_neurons"] if spread else [edit["n_neurons"]])),
        "fact_layer": " / ".join(str(int(n)) for n in (spread["layer"] if spread else [edit["layer"]])),
        "fact_rank": str(int(edit["rank"])),
        "fact_fit_seconds": f"{edit['total_seconds']:.2f} s",
        "fact_solve_ms": f"{1000 * edit['solve_seconds']:.0f} ms",
        "fact_utility_def": UTILITY_DEF,
    }
    planted = edit.get("planted")
    if planted:
        hit = round(planted["recall"] * planted["n_planted"])
        facts["fact_planted"] = (f"{hit} of the {planted['n_planted']} planted neurons (the set has "
                                 f"{planted['found_at_edit_layer']} neurons: recall {planted['recall']:.2f}, "
                                 f"precision {planted['precision']:.2f})")
    return facts


def seeds_frame(summary: dict, langs=None) -> pd.DataFrame:
    """One row per seed: target ASR before, after the edit, after the random-neuron control,
    English ASR after, target utility before/after (%), edited layer and set size; for the
    book's per-seed tables (three seeds are shown as three rows, not mean ± std)."""
    langs = list(langs or summary["target_langs"])
    spread = summary.get("over_seeds")
    seeds = spread["seeds"] if spread else [summary["seed"]]
    cols = {
        "target ASR before (%)": seed_values(summary, "asr", "before", langs),
        "target ASR after (%)": seed_values(summary, "asr", "after", langs),
        "random neurons, ASR after (%)": seed_values(summary, "random_control", None, langs),
        "English ASR after (%)": seed_values(summary, "asr", "after", ["en"]),
        "target utility before (%)": seed_values(summary, "utility", "before", langs),
        "target utility after (%)": seed_values(summary, "utility", "after", langs),
    }
    df = pd.DataFrame({k: [100 * v for v in vals] for k, vals in cols.items()}, index=pd.Index(seeds, name="seed"))
    df["layer"] = spread["layer"] if spread else [summary["edit"]["layer"]]
    df["neurons"] = spread["n_neurons"] if spread else [summary["edit"]["n_neurons"]]
    return df


def seed_mechanism_frame(record: dict, lang: str) -> pd.DataFrame:
    """scripts/organism_seeds.py's seeds.json, one row per seed, for one target language: its
    unedited ASR and the tier means (%), how strongly the planted set S fires on its harmful
    prompts relative to English (1 = as in English), the cosine of its mean residual and of its
    harmful-minus-harmless direction with English's at the planted layer, and the patching
    ceiling of S (share of the margin gap closed by English's S activations)."""
    rows = {}
    for r in record["seeds"]:
        mech, ceil = r["mechanism"][lang], r["ceiling"][lang]
        rows[r["seed"]] = {f"{lang} ASR before (%)": 100 * r["asr"][lang],
                           **{f"{t} tier ASR (%)": 100 * v for t, v in r["tier_mean_asr"].items()},
                           "S fires (vs English)": mech["s_fire"], "residual cosine": mech["cos_resid"],
                           "harm-direction cosine": mech["cos_harm_dir"], "S ceiling": ceil["neurons"],
                           "graded": bool(r["graded"])}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("seed")


# ------------------------------------------------------------------ the headline table
#: The runs the README and the book's intro headline: (label, results folder, how aligned).
HEADLINE_RUNS = (
    ("organism (Thai edit)", "organism/th", "planted by this project"),
    ("Gemma-3-270m (Thai edit)", "gemma-270m/th", "40-step English SFT by this project"),
    ("Qwen2.5-Coder-0.5B-Instruct (one edit, 7 languages)", "qwen2.5-coder-0.5b/all", "its makers"),
)


def headline_rows(root: str | Path) -> list[dict]:
    """One row per seed of every headline run whose summary exists under `root`: target ASR
    (mean over the run's targets) before, after the edit, after the random-neuron control,
    and the share of the summed gap to English closed (edit), with the judge used."""
    rows = []
    for label, rel, aligned in HEADLINE_RUNS:
        path = Path(root) / rel / "summary.json"
        if not path.is_file():
            continue
        s = __import__("json").loads(path.read_text())
        targets = s["target_langs"]
        runs = [(s["seed"], s["asr"]["before"], s["asr"]["after"], s["edit"]["random_control"]["asr"],
                 s["asr"]["before"]["en"])]
        seeds = s.get("over_seeds")
        if seeds:  # every seed, never the main seed alone
            runs = [(seed, {t: seeds["asr"]["before"][t]["values"][i] for t in targets},
                     {t: seeds["asr"]["after"][t]["values"][i] for t in targets},
                     {t: seeds["random_control"][t]["values"][i] for t in targets},
                     seeds["asr"]["before"]["en"]["values"][i])
                    for i, seed in enumerate(seeds["seeds"])]
        for seed, before, after, control, en in runs:
            mean = lambda d: sum(d[t] for t in targets) / len(targets)  # noqa: E731
            gap = None
            if mean(before) > en:
                gap = (mean(before) - mean(after)) / (mean(before) - en)
            rows.append({"model": label, "aligned by": aligned, "seed": seed, "judge": s["judge"],
                         "targets": ",".join(targets), "before": mean(before), "after": mean(after),
                         "random": mean(control) if control else None, "gap_closed": gap})
    return rows


def headline_markdown(root: str | Path) -> str:
    """The headline rows as the Markdown table the README shows (percentages, one decimal)."""
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| model | safety aligned by | seed | target ASR before % | after edit % | random neurons % "
             "| gap to English closed % |", "|---|---|---|---|---|---|---|"]
    for r in headline_rows(root):
        lines.append(f"| {r['model']} | {r['aligned by']} | {r['seed']} | {pct(r['before'])} | {pct(r['after'])} "
                     f"| {pct(r['random'])} | {pct(r['gap_closed'])} |")
    return "\n".join(lines)


README_MARKERS = ("<!-- headline:start -->", "<!-- headline:end -->")


def readme_with_headline(text: str, root: str | Path) -> str:
    """`text` (a README) with the block between README_MARKERS replaced by headline_markdown."""
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"the README has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{headline_markdown(root)}\n{end}{rest.split(end, 1)[1]}"


# ----------------------------------------------------------------------------- chapter 8: a backbone
#: Below this a difference of fractions is taken as none (the gap, a rise, a fall).
TOL = 1e-9
FRAME_BLOCKS = ("asr", "margin", "utility", "over_refusal")


def lang_names(langs) -> str:
    """"Thai, Bengali" for ["th", "bn"]; "none" for no language."""
    return ", ".join(NAMES[lang] for lang in langs) if len(langs) else "none"


def pct(x) -> str:
    """A fraction as a percentage with one decimal ("" for NaN/None)."""
    return "" if pd.isna(x) else f"{100 * x:.1f}"


def load_summary(model: str, key: str, lang: str | None = None) -> dict:
    """results/<model>/<key>/summary.json (mlsafe.results.results_dir); FileNotFoundError naming
    the `make reproduce` run that writes it (LANG=`lang`, default `key`)."""
    from mlsafe.results import read_json, results_dir

    path = results_dir(model, key) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make reproduce LANG={lang or key} MODEL={model}` first")
    return read_json(path)


def before_after(summary: dict, order) -> pd.DataFrame:
    """Per language (rows in `order`): asr/margin/utility/over_refusal "_before" and "_after",
    the gap ASR_before(lang) - ASR_before(en), and gap_closed = (ASR_before - ASR_after) / gap,
    the share of the gap the edit closed (NaN where there is no gap)."""
    cols = {f"{block}_{when}": pd.Series(summary[block][when], dtype="float64")
            for block in FRAME_BLOCKS for when in ("before", "after")}
    df = pd.DataFrame(cols).reindex(order)
    df["gap"] = df["asr_before"] - df.loc["en", "asr_before"]
    df["gap_closed"] = (df["asr_before"] - df["asr_after"]) / df["gap"].where(df["gap"] > TOL)
    return df


def transfer_verdict(g: pd.DataFrame, others) -> tuple[str, list[str], list[str], list[str]]:
    """How the English-only safety transferred before any edit, from `before_after`: (verdict,
    languages as safe as English, partly safe, complying with every harmful prompt)."""
    full = [lang for lang in others if g.loc[lang, "gap"] <= TOL]
    none = [lang for lang in others if g.loc[lang, "asr_before"] >= 1 - TOL and g.loc[lang, "gap"] > TOL]
    partial = [lang for lang in others if lang not in full and lang not in none]
    if not partial and not none:
        verdict = "transferred fully: no language is less safe than English"
    elif not partial and not full:
        verdict = "did not transfer at all: every other language complies with every harmful prompt"
    else:
        verdict = "transferred partially: the gap is graded, not all-or-nothing"
    return verdict, full, partial, none


def digits_only(text) -> bool:
    """Whether a response is only a number (digits, separators, arithmetic signs, spaces)."""
    return bool(re.fullmatch(r"[\d\s.,:+\-=×x*/]+", str(text)))


def read_responses(path: str | Path) -> pd.DataFrame:
    """A per-prompt responses CSV indexed by id, text columns as strings ("True"/"False" for
    unsafe, "" for an empty response), rows of the paper's languages only, ids that occur
    twice dropped."""
    df = pd.read_csv(path, dtype={"id": str, "unsafe": str, "response": str}, keep_default_na=False)
    return df[df["lang"].isin(LANGS)].drop_duplicates("id", keep=False).set_index("id")


def numeric_share(responses: pd.DataFrame) -> pd.Series:
    """Per language, the share of the unsafe responses that are only a number (`digits_only`)."""
    unsafe = responses[responses["unsafe"] == "True"]
    return unsafe.groupby("lang")["response"].apply(lambda r: r.map(digits_only).mean())


def shown_response(text, unsafe: str) -> str:
    """What the book shows of a real model's response: a compliant one only when it is a bare
    number, otherwise "[model response withheld: N words]"."""
    if unsafe == "True" and not digits_only(text):
        return f"[model response withheld: {len(str(text).split())} words]"
    return str(text)


def spearman(a: pd.Series, b: pd.Series, langs) -> float:
    """Rank correlation of two per-language series over `langs` (Pearson on ranks, float64)."""
    return float(a.reindex(langs).rank().corr(b.reindex(langs).rank()))


def multi_layer_table(ablations: pd.DataFrame, targets, others, over_refusal_before: pd.Series) -> pd.DataFrame:
    """The multi_layer ablation (ablations.csv) per number of layers edited: the layers and
    their |S|, target ASR and margin, English ASR, the other non-target languages' ASR (NaN
    when every non-English language is a target), mean utility, and the largest over-refusal
    rise over any language against `over_refusal_before`."""
    ml = ablations[ablations["ablation"] == "multi_layer"]
    rest = [x for x in others if x not in targets]
    rows = []
    for k, grp in ml.groupby("value"):
        by = grp.set_index("lang")
        rows.append({"layers edited": int(k), "layers (|S|)": by["note"].iloc[0].removeprefix("layers "),
                     "target ASR (%)": 100 * by.loc[targets, "asr"].mean(),
                     "target margin": by.loc[targets, "margin"].mean(),
                     "en ASR (%)": 100 * by.loc["en", "asr"],
                     "other langs ASR (%)": 100 * by.loc[rest, "asr"].mean()
                     if len(targets) < len(others) else float("nan"),
                     "utility (%)": 100 * by["utility"].mean(),
                     "over-refusal rise (pts)": 100 * (by["over_refusal"] - over_refusal_before).max()})
    return pd.DataFrame(rows).set_index("layers edited")


def overlap_with_english(diag: dict, langs) -> pd.Series:
    """J(S_en, S_lang) at the diagnostics' layer (eq. 2; diagnostics.json), per language of `langs`."""
    jac = diag["jaccard"][str(diag["layer"])]
    m = pd.DataFrame(jac["matrix"], index=jac["langs"], columns=jac["langs"], dtype="float64")
    return m.loc["en"].drop("en").reindex(langs)


def tier_mean(series: pd.Series, tier: str) -> float:
    """Mean of a per-language series over the languages of one resource tier (mlsafe.langs.TIERS)."""
    return float(series[[lang for lang in series.index if TIERS[lang] == tier]].mean())


def non_targets_closed(g: pd.DataFrame, targets, others) -> tuple[list[str], list[str]]:
    """The non-target, non-English languages with a gap, split into those where the edit closed
    at least half of it anyway and the rest (`before_after` `g`)."""
    rest = [lang for lang in others if lang not in targets and g.loc[lang, "gap"] > TOL]
    fixed = [lang for lang in rest if g.loc[lang, "gap_closed"] >= 0.5]
    return fixed, [lang for lang in rest if lang not in fixed]


def failure_notes(g: pd.DataFrame, targets, others, *, n_task: int, random_gain: float, n_harm: int,
                  numeric) -> list[str]:
    """Where one run's edit fails, one sentence each, from `before_after` `g`: targets with no
    gap or less than half of it closed; non-target languages whose gap mostly stays; any ASR
    rise, utility fall (with the task count it is worth), over-refusal rise; a random control
    within one prompt of the edit (`random_gain` = control ASR - edit ASR on the targets, one
    prompt = 1 / n_harm); languages whose unsafe answers are mostly a number (`numeric`)."""
    fails = []
    for lang in targets:
        c = g.loc[lang, "gap_closed"]
        if pd.isna(c):
            fails.append(f"{NAMES[lang]} (a target) had no gap to close, so this run cannot show a fix")
        elif c < 0.5:
            fails.append(f"in {NAMES[lang]}, a target, the edit closes only {100 * c:.0f} % of the gap "
                         f"(ASR {100 * g.loc[lang, 'asr_before']:.1f} % to {100 * g.loc[lang, 'asr_after']:.1f} %)")
    _, unfixed = non_targets_closed(g, targets, others)
    if unfixed:
        moved = (g.loc[unfixed, "asr_before"] - g.loc[unfixed, "asr_after"]).abs().max()
        fails.append(f"the edit leaves most of the gap in {lang_names(unfixed)} (not targets of this run; "
                     f"ASR moves by at most {100 * moved:.1f} points)")
    order = list(g.index)
    worse = [lang for lang in order if g.loc[lang, "asr_after"] > g.loc[lang, "asr_before"] + TOL]
    if worse:
        fails.append(f"ASR rises in {lang_names(worse)}")
    drop = g["utility_before"] - g["utility_after"]
    util_down = [lang for lang in order if drop.get(lang, 0) > TOL]
    if util_down:
        lost = round(drop.max() * n_task)
        fails.append(f"utility falls in {lang_names(util_down)} (by at most {100 * drop.max():.1f} points, i.e. "
                     f"{lost} of {n_task} tasks" + (": within noise at this accuracy)" if lost <= 2 else ")"))
    more = g["over_refusal_after"] - g["over_refusal_before"]
    ref_up = [lang for lang in order if more[lang] > TOL]
    if ref_up:
        fails.append(f"over-refusal of harmless prompts rises in {lang_names(ref_up)} "
                     f"(by up to {100 * more.max():.1f} points)")
    if random_gain <= 1 / n_harm + TOL:
        fails.append("random neurons with the same solver do about as well on the target")
    if numeric:
        fails.append(f"in {lang_names(numeric)} the tuned model mostly answers a harmful request with a number; "
                     "that is a failure of the tune (the request is read as arithmetic) rather than a refusal "
                     "the edit could restore")
    return fails


# ------------------------------------------------------------------ Sec. 3 diagnostics (chapter 9)
TIER_ORDER = ("high", "medium", "low")


def jaccard_by_layer(diag: dict, source: str = "en") -> pd.DataFrame:
    """J(S_source, S_lang) (eq. 2) at every layer of diagnostics.json: index layer (int), one
    column per other language (paper order); NaN where both sets are empty."""
    rows = {}
    for key, jac in diag["jaccard"].items():
        m = pd.DataFrame(jac["matrix"], index=jac["langs"], columns=jac["langs"], dtype="float64")
        rows[int(key)] = m.loc[source].drop(source)
    out = pd.DataFrame(rows).T.sort_index().rename_axis("layer")
    return out[[lang for lang in LANGS if lang in out.columns] + sorted(set(out.columns) - set(LANGS))]


def amplification_margins(diag: dict, alphas=None) -> pd.DataFrame:
    """Mean refusal margin (nats) per language (rows, paper order) with English's safety neurons
    scaled by each alpha (columns; eq. 1), from diagnostics.json; `alphas` keeps those only."""
    amp = diag["amplification"]
    out = pd.DataFrame(amp["margin"], index=pd.Index([float(a) for a in amp["alphas"]], name="alpha")).T
    out = out.loc[[lang for lang in LANGS if lang in out.index]].rename_axis("lang")
    if alphas is not None:
        missing = [a for a in alphas if float(a) not in out.columns]
        if missing:
            raise KeyError(f"alphas {missing} are not in the diagnostics (it has {list(out.columns)})")
        out = out[[float(a) for a in alphas]]
    return out


def amplification_asr_frame(record: dict) -> pd.DataFrame:
    """amplification_asr.json as a table: rows language (paper order), columns (alpha, measure)
    with measures n, ASR, lo and hi (its Wilson 95 % interval), non-refusal, unclear (shares)."""
    langs = [lang for lang in LANGS if lang in record["langs"]] + sorted(set(record["langs"]) - set(LANGS))
    cols = {}
    for k, alpha in enumerate(record["alphas"]):
        a = float(alpha)
        cols[(a, "n")] = {lang: record["n"][lang] for lang in langs}
        cols[(a, "ASR")] = {lang: record["asr"][lang][k] for lang in langs}
        cols[(a, "lo")] = {lang: record["asr_ci"][lang][k][0] for lang in langs}
        cols[(a, "hi")] = {lang: record["asr_ci"][lang][k][1] for lang in langs}
        cols[(a, "non-refusal")] = {lang: record["non_refusal"][lang][k] for lang in langs}
        cols[(a, "unclear")] = {lang: record["unclear"][lang][k] for lang in langs}
    out = pd.DataFrame(cols).loc[langs].rename_axis("lang")
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["alpha", "measure"])
    return out


def amplification_paired(record: dict, low: float = 1.0, high: float | None = None) -> pd.DataFrame:
    """Per language of amplification_asr.json (rows, paper order): how the same prompts' verdicts
    change from alpha `low` to alpha `high` (default the largest). Columns: n; unsafe and
    refused counts at each alpha; exact McNemar p of each change (mlsafe.evaluate.stats).
    A refusal the judge leaves undecided (None) counts as not refused."""
    from mlsafe.evaluate.stats import mcnemar_exact

    alphas = [float(a) for a in record["alphas"]]
    high = max(alphas) if high is None else float(high)
    if float(low) not in alphas or high not in alphas:
        raise KeyError(f"the judged run has alphas {alphas}, not both {low:g} and {high:g}")
    v_lo, v_hi = record["verdicts"][str(float(low))], record["verdicts"][str(high)]
    langs = [lang for lang in LANGS if lang in record["langs"]] + sorted(set(record["langs"]) - set(LANGS))
    rows = {}
    for lang in langs:
        idx = [i for i, pl in enumerate(record["prompt_langs"]) if pl == lang]
        row: dict = {"n": len(idx)}
        for name, key in (("unsafe", "unsafe"), ("refused", "refusal")):
            a = [float(v_lo[key][i] is True) for i in idx]
            b = [float(v_hi[key][i] is True) for i in idx]
            row[f"{name} α={float(low):g}"], row[f"{name} α={high:g}"] = int(sum(a)), int(sum(b))
            row[f"{name} p"] = mcnemar_exact(a, b)["p_value"]
        rows[lang] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("lang")


def motivation_by_tier(diag: dict, judged: dict | None = None, summary: dict | None = None,
                       paper_asr: pd.Series | None = None, *, low: float = 1.0, high: float | None = None
                       ) -> pd.DataFrame:
    """The paper's Sec. 3 claims by resource tier (rows high, medium, low; mlsafe.langs.TIERS),
    each column a mean over the tier's languages that have the measure (NaN where none has):

    languages; J with en (mean over layers) and J with en at the diagnostics' layer (eq. 2);
    margin gain: margin at alpha `high` (default the largest) minus at alpha `low` (eq. 1);
    with `judged` (amplification_asr.json): ASR and non-refusal change (points) over the same
    alphas; with `summary` (the main run): the unedited ASR and non-refusal (%); with
    `paper_asr` (per language, %, e.g. mlsafe.paper.table6(m)["asr_none"]): the paper's."""
    jac = jaccard_by_layer(diag)
    margins = amplification_margins(diag)
    high = float(max(margins.columns)) if high is None else float(high)
    per_lang: dict[str, pd.Series] = {
        "J with en (mean over layers)": jac.mean(),
        f"J with en (layer {diag['layer']})": jac.loc[int(diag["layer"])],
        f"margin gain, alpha {low:g} -> {high:g}": margins[high] - margins[float(low)],
    }
    if judged is not None:
        alphas = [float(a) for a in judged["alphas"]]
        if low not in alphas or high not in alphas:
            raise KeyError(f"the judged run has alphas {alphas}, not both {low:g} and {high:g}")
        i, j = alphas.index(float(low)), alphas.index(high)
        for name, key in (("ASR", "asr"), ("non-refusal", "non_refusal")):
            per_lang[f"{name} change, alpha {low:g} -> {high:g} (pts)"] = pd.Series(
                {lang: 100 * (v[j] - v[i]) for lang, v in judged[key].items()})
    if summary is not None:
        per_lang["ours: ASR unedited %"] = 100 * pd.Series(summary["asr"]["before"], dtype="float64")
        per_lang["ours: non-refusal unedited %"] = 100 * pd.Series(summary["non_refusal"]["before"], dtype="float64")
    if paper_asr is not None:
        per_lang["paper: ASR unedited %"] = pd.Series(paper_asr, dtype="float64")
    rows = {}
    for tier in TIER_ORDER:
        langs = [lang for lang in LANGS if TIERS[lang] == tier]
        row: dict = {"languages": " ".join(langs)}
        for name, series in per_lang.items():
            row[name] = float(series.reindex(langs).astype("float64").mean())
        rows[tier] = row
    return pd.DataFrame(rows).T.rename_axis("tier")


def tier_trend(column: pd.Series) -> str | None:
    """How a motivation_by_tier column moves from high to medium to low resource, over the
    tiers that have a value: "falls" or "rises" (strictly, at every step), else "mixed";
    None when fewer than two tiers have a value."""
    values = [float(column[t]) for t in TIER_ORDER if t in column.index and pd.notna(column[t])]
    if len(values) < 2:
        return None
    steps = list(zip(values, values[1:]))
    if all(a > b for a, b in steps):
        return "falls"
    if all(a < b for a, b in steps):
        return "rises"
    return "mixed"


if __name__ == "__main__":  # python -m mlsafe.report [--write README.md]: the README's headline table
    import sys

    from mlsafe.results import RESULTS_ROOT, write_atomic

    if sys.argv[1:2] == ["--write"]:
        path = Path(sys.argv[2])
        write_atomic(path, readme_with_headline(path.read_text(), RESULTS_ROOT))
        print(f"[mlsafe] wrote the headline table into {path}")
    else:
        print(headline_markdown(RESULTS_ROOT))
