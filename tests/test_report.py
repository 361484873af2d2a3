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
