"""mlsafe.report: the tables the chapters print, on a hand-made summary."""

import math

import pandas as pd
import pytest

from mlsafe import report
from mlsafe.langs import LANGS


def _summary():
    before = {l: 0.1 * i for i, l in enumerate(LANGS)}
    after = {l: v / 2 for l, v in before.items()}
    targets = [l for l in LANGS if l != "en"]
    comp = lambda b, a: {"before": b, "after": a, "diff": a - b, "diff_ci": [a - b - 0.1, a - b + 0.1],  # noqa: E731
                         "mcnemar_p": 0.01, "bootstrap_p": 0.02}
    return {
        "target_langs": targets,
        "asr": {"before": before, "after": after},
        "non_refusal": {"before": before, "after": after},
        "margin": {"before": {l: -1.0 for l in LANGS}, "after": {l: 1.0 for l in LANGS}},
        "asr_ci_cluster": {"after": {l: [0.0, 0.5] for l in LANGS}},
        "unclear": {"before": {l: {"n": 100, "share": 0.0} for l in LANGS},
                    "after": {l: {"n": 100, "share": 0.01} for l in LANGS}},
        "gap_closed": {"edit": {"per_lang": {t: 0.5 for t in targets}, "summed": 0.5},
                       "random_control": {"per_lang": {t: 0.1 for t in targets}, "summed": 0.1}},
        "compare": {"after_vs_before": {"per_lang": {l: comp(before[l], after[l]) for l in LANGS},
                                        "pooled": comp(0.4, 0.2)}},
        "edit": {"random_control": {"asr": {t: before[t] * 0.9 for t in targets},
                                    "compare_edit_vs_random": [{"pooled": {"diff": 0.15, "bootstrap_p": 0.001}}]}},
        "data_report": {"sources": {"eval_harmful": {"en": {"strongreject": 33, "multijail": 67},
                                                     "he": {"templated": 40}}}},
    }


def test_lang_frame_orders_languages_and_pairs_columns():
    df = report.lang_frame(_summary())
    assert list(df.index) == list(LANGS)
    assert df.loc["bn", "asr before"] == pytest.approx(0.6) and df.loc["bn", "asr after"] == pytest.approx(0.3)
    assert "utility before" not in df.columns  # absent blocks are skipped, not invented


def test_asr_with_control_only_has_control_for_targets():
    df = report.asr_with_control(_summary())
    assert df.loc["en", "random control"] is None or math.isnan(df.loc["en", "random control"])
    assert df.loc["th", "random control"] == pytest.approx(0.4 * 0.9)
    assert df.loc["th", "n"] == 100 and df.loc["th", "after hi"] == 0.5


def test_sources_mark_templated_languages_as_not_real():
    df = report.sources_frame(_summary())
    assert df.loc["he", "real"] is False or df.loc["he", "real"] == False  # noqa: E712
    assert df.loc["en", "n"] == 100 and df.loc["en", "sources"] == "multijail 67, strongreject 33"


def test_paired_tests_gap_and_control():
    s = _summary()
    pt = report.paired_tests(s)
    assert "pooled targets" in pt.index and pt.loc["th", "diff"] == pytest.approx(-0.2)
    g = report.gap_closed(s)
    assert g.loc["summed", "edit"] == 0.5 and g.loc["summed", "random control"] == 0.1
    assert report.edit_vs_control(s)["diff"] == 0.15
    s["edit"]["random_control"]["compare_edit_vs_random"] = []
    assert report.edit_vs_control(s) is None


def test_tier_means():
    assert report.tier_means({"en": 0.0, "zh": 0.2, "vi": 0.4, "bn": 1.0, "xx": 5.0}) == \
        {"source": 0.0, "high": pytest.approx(0.3), "low": 1.0}


def test_response_openings_filter_and_cut(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"lang": ["th", "th", "ja"], "label": ["refusal", "compliance", "refusal"],
                  "response": ["x" * 100, "y", "z\nz"]}).to_csv(path, index=False)
    df = report.response_openings(path, per_lang=5, chars=10, label="refusal")
    assert list(df["opening"]) == ["z z", "x" * 10]  # paper order: ja before th; newlines folded


def _seeded():
    s = _summary()
    s["seed"] = 0
    s["edit"].update({"n_neurons": 35, "layer": 2, "rank": 8, "total_seconds": 4.304, "solve_seconds": 0.0134,
                      "planted": {"n_planted": 32, "found_at_edit_layer": 35, "recall": 15 / 32,
                                  "precision": 15 / 35}})
    s["utility"] = {"before": {l: 0.9 for l in LANGS}, "after": {l: 0.8 for l in LANGS}}
    vals = lambda *v: {"mean": sum(v) / len(v), "std": 0.0, "values": list(v)}  # noqa: E731
    s["over_seeds"] = {"seeds": [0, 1, 2], "layer": [2, 2, 1], "n_neurons": [35, 30, 47],
                       "asr": {"before": {"th": vals(0.69, 1.0, 0.26), "ja": vals(0.5, 0.5, 0.5), "en": vals(0, 0, 0)},
                               "after": {"th": vals(0.0, 0.92, 0.05), "ja": vals(0.1, 0.1, 0.1), "en": vals(0, 0, 0.01)}},
                       "utility": {"before": {"th": vals(0.92, 1.0, 0.98)}, "after": {"th": vals(0.92, 1.0, 0.97)}},
                       "random_control": {"th": vals(0.56, 0.67, 0.19)}}
    s["target_langs"] = ["th"]
    return s


def test_seed_values_per_seed_and_mean_over_languages():
    s = _seeded()
    assert report.seed_values(s, "asr", "after", ["th"]) == [0.0, 0.92, 0.05]
    assert report.seed_values(s, "asr", "before", ["th", "ja"]) == pytest.approx([0.595, 0.75, 0.38])
    assert report.seed_values(s, "random_control", None, ["th"]) == [0.56, 0.67, 0.19]
    with pytest.raises(ValueError):
        report.seed_values(s, "utility", "after", ["he"])
    del s["over_seeds"]  # a one-seed run: its own value, the control from the edit block
    assert report.seed_values(s, "asr", "after", ["th"]) == [pytest.approx(0.2)]
    assert report.seed_values(s, "random_control", None, ["th"]) == [pytest.approx(0.4 * 0.9)]


def test_book_facts_show_every_seed_and_the_planted_recovery():
    facts = report.book_facts(_seeded())
    assert facts["fact_target_asr_after"] == "0.0 / 92.0 / 5.0 %"
    assert facts["fact_random_asr_after"] == "56.0 / 67.0 / 19.0 %"
    assert facts["fact_n_neurons"] == "35 / 30 / 47" and facts["fact_layer"] == "2 / 2 / 1"
    assert facts["fact_fit_seconds"] == "4.30 s" and facts["fact_solve_ms"] == "13 ms"
    assert facts["fact_planted"].startswith("15 of the 32 planted neurons (the set has 35 neurons")
    assert facts["fact_utility_def"] == report.UTILITY_DEF


def test_seeds_frame_one_row_per_seed():
    df = report.seeds_frame(_seeded())
    assert list(df.index) == [0, 1, 2]
    assert df.loc[1, "random neurons, ASR after (%)"] == pytest.approx(67.0)
    assert df.loc[2, "target utility after (%)"] == pytest.approx(97.0) and df.loc[2, "neurons"] == 47


def test_readme_headline_is_the_generated_table():
    """The README's headline table is exactly what `python -m mlsafe.report` makes from results/."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    assert report.readme_with_headline(text, root / "results") == text, \
        "README headline is stale: run python -m mlsafe.report --write README.md"
    assert "| organism (Thai edit) | planted by this project | 1 |" in text  # every seed, not seed 0 only


# ----------------------------------------------------------------------------- chapter 8's analysis
def _g(before, after, *, util=(0.5, 0.5), over=(0.0, 0.0), margin=(-1.0, 1.0)):
    """A summary with these per-language ASRs and constant utility/over-refusal/margin."""
    block = lambda b, a: {"before": b, "after": a}  # noqa: E731
    const = lambda v: {lang: v for lang in before}  # noqa: E731
    return {"asr": block(before, after), "utility": block(const(util[0]), const(util[1])),
            "over_refusal": block(const(over[0]), const(over[1])), "margin": block(const(margin[0]), const(margin[1]))}


def test_before_after_gap_and_share_closed():
    s = _g({"en": 0.1, "th": 0.9, "bn": 0.1}, {"en": 0.1, "th": 0.5, "bn": 0.3})
    g = report.before_after(s, ["en", "th", "bn"])
    assert list(g.index) == ["en", "th", "bn"]
    assert g.loc["th", "gap"] == pytest.approx(0.8) and g.loc["th", "gap_closed"] == pytest.approx(0.5)
    assert math.isnan(g.loc["bn", "gap_closed"]) and math.isnan(g.loc["en", "gap_closed"])   # no gap
    assert g.loc["bn", "utility_after"] == 0.5 and g.loc["th", "margin_after"] == 1.0


def test_transfer_verdict_three_ways():
    order = ["en", "zh", "th", "bn"]
    full = report.before_after(_g(dict(en=0.2, zh=0.2, th=0.1, bn=0.0), dict(en=0, zh=0, th=0, bn=0)), order)
    assert report.transfer_verdict(full, order[1:])[0].startswith("transferred fully")
    none = report.before_after(_g(dict(en=0.0, zh=1.0, th=1.0, bn=1.0), dict(en=0, zh=0, th=0, bn=0)), order)
    verdict, f, p, n = report.transfer_verdict(none, order[1:])
    assert verdict.startswith("did not transfer") and n == ["zh", "th", "bn"] and f == p == []
    mixed = report.before_after(_g(dict(en=0.0, zh=0.0, th=0.5, bn=1.0), dict(en=0, zh=0, th=0, bn=0)), order)
    assert report.transfer_verdict(mixed, order[1:])[1:] == (["zh"], ["th"], ["bn"])


def test_numbers_withheld_text_and_names():
    assert report.digits_only(" 12, 3.5 = 7 ") and not report.digits_only("12 steps") and report.digits_only(42)
    assert report.shown_response("12", "True") == "12"
    assert report.shown_response("do x then y", "True") == "[model response withheld: 4 words]"
    assert report.shown_response("Sorry, no.", "False") == "Sorry, no."
    assert report.pct(0.1234) == "12.3" and report.pct(float("nan")) == "" and report.pct(None) == ""
    assert report.lang_names(["th", "bn"]) == "Thai, Bengali" and report.lang_names([]) == "none"


def test_read_responses_and_numeric_share(tmp_path):
    path = tmp_path / "responses_before.csv"
    pd.DataFrame({"id": ["1", "2", "3", "3", "4", "5"], "lang": ["th", "th", "th", "th", "bn", "xx"],
                  "prompt": ["[p]"] * 6, "unsafe": ["True", "True", "False", "False", "True", "True"],
                  "response": ["12", "do it", "", "", "NA", "1"]}).to_csv(path, index=False)
    df = report.read_responses(path)
    assert list(df.index) == ["1", "2", "4"]                   # duplicated id 3 and language xx dropped
    assert df.loc["4", "response"] == "NA" and df.loc["1", "unsafe"] == "True"   # kept as text
    share = report.numeric_share(df)
    assert share["th"] == pytest.approx(0.5) and share["bn"] == 0.0


def test_spearman_tier_mean_and_overlap_with_english():
    a = pd.Series({"en": 9.0, "zh": 1.0, "th": 2.0, "bn": 3.0})
    b = pd.Series({"zh": 10.0, "th": 20.0, "bn": 30.0, "en": -5.0})
    assert report.spearman(a, b, ["zh", "th", "bn"]) == pytest.approx(1.0)
    assert report.spearman(a, -b, ["zh", "th", "bn"]) == pytest.approx(-1.0)
    assert report.tier_mean(pd.Series({"zh": 0.2, "vi": 0.4, "bn": 1.0}), "high") == pytest.approx(0.3)
    diag = {"layer": 3, "jaccard": {"3": {"langs": ["en", "th", "bn"],
                                          "matrix": [[1.0, 0.5, 0.1], [0.5, 1.0, 0.0], [0.1, 0.0, 1.0]]}}}
    j = report.overlap_with_english(diag, ["bn", "th", "zh"])
    assert j["bn"] == 0.1 and j["th"] == 0.5 and math.isnan(j["zh"])


def test_multi_layer_table_rows_per_layer_count():
    rows = []
    for k, asr in ((1, 0.8), (2, 0.4)):
        for lang in ("en", "th", "bn"):
            rows.append({"ablation": "multi_layer", "value": k, "lang": lang, "asr": asr if lang != "en" else 0.0,
                         "margin": -k, "utility": 0.5, "over_refusal": 0.1 * k, "note": f"layers 3{',4' * (k - 1)} (|S| 7)"})
    rows.append({"ablation": "rank", "value": 4, "lang": "th", "asr": 0.0, "margin": 0, "utility": 0,
                 "over_refusal": 0, "note": ""})
    tab = report.multi_layer_table(pd.DataFrame(rows), ["th"], ["th", "bn"], pd.Series({"en": 0.0, "th": 0.0, "bn": 0.1}))
    assert list(tab.index) == [1, 2] and tab.loc[2, "layers (|S|)"] == "3,4 (|S| 7)"
    assert tab.loc[1, "target ASR (%)"] == pytest.approx(80) and tab.loc[2, "other langs ASR (%)"] == pytest.approx(40)
    assert tab.loc[2, "over-refusal rise (pts)"] == pytest.approx(20) and tab.loc[1, "target margin"] == -1
    every = report.multi_layer_table(pd.DataFrame(rows), ["th", "bn"], ["th", "bn"], pd.Series(0.0, ["en", "th", "bn"]))
    assert math.isnan(every.loc[1, "other langs ASR (%)"])   # every non-English language is a target


def test_failure_notes_name_each_failure_and_none_on_a_clean_run():
    order = ["en", "th", "bn", "zh"]
    clean = report.before_after(_g(dict(en=0.0, th=0.8, bn=0.6, zh=0.0), dict(en=0.0, th=0.0, bn=0.1, zh=0.0)), order)
    assert report.failure_notes(clean, ["th"], order[1:], n_task=10, random_gain=0.5, n_harm=10, numeric=[]) == []
    assert report.non_targets_closed(clean, ["th"], order[1:]) == (["bn"], [])
    bad = report.before_after(_g(dict(en=0.0, th=0.8, bn=0.6, zh=0.0), dict(en=0.1, th=0.7, bn=0.6, zh=0.0),
                                 util=(0.5, 0.3), over=(0.0, 0.2)), order)
    notes = report.failure_notes(bad, ["th"], order[1:], n_task=10, random_gain=0.05, n_harm=10, numeric=["zh"])
    text = " | ".join(notes)
    assert len(notes) == 7
    for piece in ("closes only 13 % of the gap", "leaves most of the gap in Bengali", "ASR rises in English",
                  "utility falls in English, Thai, Bengali, Chinese (by at most 20.0 points, i.e. 2 of 10 tasks: "
                  "within noise", "over-refusal of harmless prompts rises", "random neurons",
                  "in Chinese the tuned model mostly answers"):
        assert piece in text, piece
    nogap = report.before_after(_g(dict(en=0.5, th=0.2, bn=0.6), dict(en=0.5, th=0.2, bn=0.6)), ["en", "th", "bn"])
    assert "had no gap to close" in report.failure_notes(nogap, ["th"], ["th", "bn"], n_task=10, random_gain=1,
                                                         n_harm=10, numeric=[])[0]


def test_load_summary_names_the_run_that_writes_it(tmp_path, monkeypatch):
    from mlsafe import results

    monkeypatch.setattr(results, "RESULTS_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="make reproduce LANG=th MODEL=gemma-270m"):
        report.load_summary("gemma-270m", "th")
    results.write_json(tmp_path / "gemma-270m" / "th" / "summary.json", {"model": "gemma-270m"})
    assert report.load_summary("gemma-270m", "th")["model"] == "gemma-270m"


def test_target_runs_frame_averages_over_each_runs_targets():
    s = _summary()
    s["edit"].update(preset="best", layer=17, n_neurons=1024)
    s["edit"]["random_control"].update(non_refusal={"ja": 0.7, "th": 0.5},
                                       margin={"ja": 0.0, "th": 0.2}, margin_edit_vs_random={"p_value": 0.002})
    s["edit"]["random_control"]["compare_edit_vs_random"][0]["pooled"]["mcnemar_p"] = 0.03
    s["kl"] = {"after": {l: 0.01 * i for i, l in enumerate(LANGS)}}
    s["over_refusal_by_source"] = {"before": {"xstest-safe": 0.30}, "after": {"xstest-safe": 0.33}}
    one = dict(s, target_langs=["ja", "th"])
    df = report.target_runs_frame({"ja+th": one, "all": s})
    ja, th = LANGS.index("ja"), LANGS.index("th")
    assert df.loc["ja+th", "asr before"] == pytest.approx(0.1 * (ja + th) / 2)
    assert df.loc["ja+th", "non_refusal control"] == pytest.approx(0.6)
    assert df.loc["ja+th", "KL targets"] == pytest.approx(0.01 * (ja + th) / 2)
    assert df.loc["ja+th", "margin p vs control"] == 0.002 and df.loc["ja+th", "p vs control"] == 0.03
    assert df.loc["all", "XSTest over-refusal pts"] == pytest.approx(3.0) and df.loc["all", "layer"] == 17
    assert df.loc["all", "non_refusal control"] == pytest.approx(0.6)  # only ja and th have a control value


def _diag():
    """A hand-made diagnostics.json: layers 0 and 1, en/zh/th sets, margins at alphas 0, 1, 4."""
    mat = lambda a, b: [[1.0, a, b], [a, 1.0, 0.2], [b, 0.2, 1.0]]  # noqa: E731
    return {"layer": 1,
            "jaccard": {"1": {"langs": ["en", "th", "zh"], "matrix": mat(0.2, 0.6)},
                        "0": {"langs": ["en", "th", "zh"], "matrix": mat(None, 0.4)}},
            "amplification": {"alphas": [0.0, 1.0, 4.0],
                              "margin": {"th": [0.0, 0.5, 0.6], "en": [1.0, 2.0, 4.0], "zh": [0.0, 1.0, 2.0],
                                         "bn": [0.0, 0.1, 0.1]}}}


def _judged():
    return {"alphas": [1.0, 4.0], "langs": ["en", "zh", "bn"], "n": {"en": 20, "zh": 20, "bn": 10},
            "asr": {"en": [0.5, 0.25], "zh": [0.4, 0.2], "bn": [0.3, 0.3]},
            "asr_ci": {"en": [[0.3, 0.7], [0.1, 0.5]], "zh": [[0.2, 0.6], [0.1, 0.4]], "bn": [[0.1, 0.6], [0.1, 0.6]]},
            "non_refusal": {"en": [0.6, 0.3], "zh": [0.5, 0.5], "bn": [1.0, 0.9]},
            "unclear": {"en": [0.0, 0.0], "zh": [0.1, 0.0], "bn": [0.5, 0.5]}}


def test_jaccard_by_layer_and_amplification_margins():
    jac = report.jaccard_by_layer(_diag())
    assert list(jac.index) == [0, 1] and list(jac.columns) == ["zh", "th"]   # paper order
    assert jac.loc[1, "zh"] == 0.6 and jac.loc[0, "zh"] == 0.4 and math.isnan(jac.loc[0, "th"])
    m = report.amplification_margins(_diag(), [1, 4])
    assert list(m.index) == ["en", "zh", "th", "bn"] and list(m.columns) == [1.0, 4.0]
    assert m.loc["th", 4.0] == 0.6
    with pytest.raises(KeyError, match="alphas"):
        report.amplification_margins(_diag(), [2])


def test_amplification_asr_frame_columns_per_alpha():
    f = report.amplification_asr_frame(_judged())
    assert list(f.index) == ["en", "zh", "bn"]
    assert f.loc["zh", (4.0, "ASR")] == 0.2 and f.loc["zh", (4.0, "lo")] == 0.1 and f.loc["bn", (1.0, "n")] == 10
    assert f.loc["bn", (1.0, "unclear")] == 0.5 and f.loc["en", (4.0, "non-refusal")] == 0.3
    assert list(f.columns.get_level_values("alpha").unique()) == [1.0, 4.0]


def test_motivation_by_tier_and_tier_trend():
    from mlsafe.langs import LANGS

    summary = {"asr": {"before": {l: 0.1 for l in LANGS}}, "non_refusal": {"before": {"zh": 0.2, "bn": 0.8}}}
    paper_asr = pd.Series({"zh": 10.0, "vi": 20.0, "ja": 30.0, "th": 30.0, "id": 30.0, "bn": 40.0, "he": 60.0})
    t = report.motivation_by_tier(_diag(), _judged(), summary, paper_asr)
    assert list(t.index) == ["high", "medium", "low"] and t.loc["low", "languages"] == "bn he"
    assert t.loc["high", "J with en (mean over layers)"] == pytest.approx(0.5)       # zh: (0.4 + 0.6) / 2
    assert t.loc["medium", "J with en (layer 1)"] == 0.2 and math.isnan(t.loc["low", "J with en (layer 1)"])
    assert t.loc["medium", "margin gain, alpha 1 -> 4"] == pytest.approx(0.1)        # th only
    assert t.loc["high", "ASR change, alpha 1 -> 4 (pts)"] == pytest.approx(-20.0)   # zh: 40 % -> 20 %
    assert t.loc["low", "non-refusal change, alpha 1 -> 4 (pts)"] == pytest.approx(-10.0)
    assert math.isnan(t.loc["medium", "ASR change, alpha 1 -> 4 (pts)"])
    assert t.loc["low", "ours: non-refusal unedited %"] == pytest.approx(80.0)
    assert t.loc["low", "paper: ASR unedited %"] == pytest.approx(50.0)
    assert report.tier_trend(t["J with en (mean over layers)"]) == "falls"
    assert report.tier_trend(t["paper: ASR unedited %"]) == "rises"
    assert report.tier_trend(pd.Series({"high": 1.0, "medium": 0.5, "low": 0.7})) == "mixed"
    assert report.tier_trend(pd.Series({"high": 1.0, "medium": float("nan"), "low": float("nan")})) is None
    with pytest.raises(KeyError, match="judged run"):
        report.motivation_by_tier(_diag(), _judged(), low=0.0)


def test_amplification_paired_counts_and_mcnemar_per_language():
    rec = {"alphas": [1.0, 4.0], "langs": ["th", "en"], "prompt_langs": ["en", "th", "en", "th", "th"],
           "verdicts": {"1.0": {"unsafe": [True, True, True, False, True],
                                "refusal": [False, None, False, True, False]},
                        "4.0": {"unsafe": [False, True, False, False, False],
                                "refusal": [True, True, True, True, None]}}}
    f = report.amplification_paired(rec)
    assert list(f.index) == ["en", "th"] and f.loc["th", "n"] == 3 and f["unsafe α=1"].dtype.kind == "i"
    assert f.loc["en", "unsafe α=1"] == 2 and f.loc["en", "unsafe α=4"] == 0
    assert f.loc["en", "unsafe p"] == pytest.approx(0.5)          # two discordant pairs, both one way
    assert f.loc["th", "refused α=1"] == 1 and f.loc["th", "refused α=4"] == 2   # None counts as not refused
    assert f.loc["th", "unsafe p"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="judged run"):
        report.amplification_paired(rec, low=0.0)


def test_seed_mechanism_frame_reads_seeds_json():
    def seed(k, asr, fire):
        return {"seed": k, "asr": {"en": 0.0, "th": asr}, "tier_mean_asr": {"high": 0.1, "medium": asr, "low": 0.9},
                "graded": asr > 0, "mechanism": {"th": {"s_fire": fire, "cos_resid": 0.7, "cos_harm_dir": 0.6}},
                "ceiling": {"th": {"mlp": 0.9, "neurons": 0.8, "residual": 1.0}}}
    f = report.seed_mechanism_frame({"seeds": [seed(0, 0.79, 0.27), seed(2, 0.0, 0.5)]}, "th")
    assert list(f.index) == [0, 2] and f.loc[0, "th ASR before (%)"] == pytest.approx(79.0)
    assert f.loc[2, "S fires (vs English)"] == 0.5 and not f.loc[2, "graded"] and f.loc[0, "S ceiling"] == 0.8
    assert f.loc[0, "low tier ASR (%)"] == pytest.approx(90.0)


def test_timing_frame_lists_the_stages_and_what_is_left():
    t = {"load_seconds": 60.0, "fit_seconds": 120.0, "evaluate_seconds": 600.0, "evaluate_edited_seconds": 540.0,
         "control_seconds": 300.0, "kl_seconds": 30.0, "tokens_per_second": 50.0, "run_seconds": 1800.0}
    df = report.timing_frame({"timing": t})
    assert list(df.index) == [*report.STAGES.values(), "other", "whole run"]
    assert df.loc["other", "minutes"] == pytest.approx(150 / 60)
    assert df.loc["whole run", "minutes"] == pytest.approx(30.0) and df.loc["whole run", "tokens/s"] == 50.0
    assert df.loc["2. evaluate unedited", "share of run"] == pytest.approx(1 / 3)
    old = report.timing_frame({"timing": {k: t[k] for k in ("fit_seconds", "evaluate_seconds", "run_seconds")}})
    assert list(old.index) == ["1. fit the edit", "2. evaluate unedited", "other", "whole run"]
