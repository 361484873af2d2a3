"""mlsafe.limits on small synthetic ceiling/search records."""

import math

import pytest

from mlsafe import limits

CEILING = {"rows": [
    {"lang": "ja", "layer": 0, "site": "mlp", "share_of_gap": 0.1, "n_neurons": 5},
    {"lang": "ja", "layer": 0, "site": "neurons", "share_of_gap": 0.0, "n_neurons": 5},
    {"lang": "ja", "layer": 1, "site": "mlp", "share_of_gap": 0.7, "n_neurons": 9},
    {"lang": "ja", "layer": 1, "site": "neurons", "share_of_gap": 0.2, "n_neurons": 9},
    {"lang": "th", "layer": 0, "site": "mlp", "share_of_gap": 0.4, "n_neurons": 5},
    {"lang": "th", "layer": 1, "site": "mlp", "share_of_gap": -0.1, "n_neurons": 9},
]}

SEARCH = {"before": {"target": 0.5, "harmless": -1.0, "source": 2.5}, "trials": [
    {"step": "layer", "neurons": "paper", "layer": 3, "val_gain_harmful": 0.1, "val_gain_harmless": 0.0,
     "val_gain_source": 0.0, "score": 0.1, "n_neurons": 10, "fraction_of_parameters": 1e-3,
     "first_token_kl": {"en": 0.01, "ja": 0.03}, "predicted_gap_closed": 0.8},
    {"step": "layer", "neurons": "all", "layer": 4, "val_gain_harmful": 0.6, "val_gain_harmless": 0.1,
     "val_gain_source": 0.0, "score": 0.5, "n_neurons": 40, "fraction_of_parameters": 4e-3},
    {"step": "rank", "neurons": "all", "layer": 4, "rank": 32, "val_gain_harmful": 0.9, "val_gain_harmless": 0.0,
     "val_gain_source": -0.1, "score": 0.8, "n_neurons": 40, "fraction_of_parameters": 8e-3},
    {"step": "multi_layer", "neurons": ["all", "paper"], "layers": [4, 3], "val_gain_harmful": 0.7,
     "val_gain_harmless": 0.0, "val_gain_source": 0.0, "score": 0.7, "n_neurons": 50,
     "fraction_of_parameters": 5e-3},
]}


def test_ceiling_frame_and_peaks():
    f = limits.ceiling_frame(CEILING)
    assert list(f.columns) == ["neurons", "mlp", "n_neurons"]
    assert f.loc[("ja", 1), "mlp"] == 0.7 and f.loc[("ja", 1), "n_neurons"] == 9
    assert math.isnan(f.loc[("th", 0), "neurons"])
    peaks = limits.ceiling_peaks(CEILING)
    assert peaks.loc["ja", "mlp_layer"] == 1 and peaks.loc["ja", "mlp_share"] == 0.7
    assert peaks.loc["th", "mlp_layer"] == 0 and peaks.loc["th", "mlp_share"] == 0.4


def test_search_frame_best_and_share():
    f = limits.search_frame(SEARCH)
    assert len(f) == 4 and f.loc[2, "factor"] == "rank=32"
    assert f.loc[0, "kl"] == pytest.approx(0.02) and math.isnan(f.loc[1, "kl"])
    assert f.loc[3, "layer"] == "[4, 3]" and f.loc[0, "params_pct"] == pytest.approx(0.1)
    assert limits.best_trial(f)["step"] == "rank"
    assert limits.best_trial(f, "layer")["neurons"] == "all"
    with pytest.raises(ValueError, match="no trial"):
        limits.best_trial(f, "gamma")
    assert limits.share_of_target_gap(SEARCH, 1.0) == pytest.approx(0.5)


def test_plot_ceiling_draws_one_panel_per_language_and_every_site_it_has():
    import matplotlib

    matplotlib.use("Agg")
    fig = limits.plot_ceiling(CEILING, "title")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["ja", "th"]
    assert len(axes[0].lines) == 2 + 2 and len(axes[1].lines) == 1 + 2   # sites + the two guide lines
    assert fig._suptitle.get_text() == "title"


def _summary(targets=("ja", "th")):
    """A summary.json with the entries goal_rows reads (numbers chosen to check each one)."""
    gap = lambda e, c: {"edit": {"summed": e}, "random_control": {"summed": c}}  # noqa: E731
    return {"target_langs": list(targets), "gap_closed": gap(None, None),
            "gap_closed_by": {"non_refusal": gap(0.6, 0.2), "margin": gap(0.5, 0.05)},
            "edit": {"random_control": {"compare_edit_vs_random": [{"pooled": {"mcnemar_p": 0.004}}],
                                        "compare_non_refusal_edit_vs_random": [{"pooled": {"mcnemar_p": 0.002}}],
                                        "margin_edit_vs_random": {"p_value": 0.0005}}},
            "over_refusal_by_source": {"before": {"xstest-safe": 0.30}, "after": {"xstest-safe": 0.32}},
            "utility": {"before": {"en": 0.5, "ja": 0.3}, "after": {"en": 0.48, "ja": 0.3}},
            "kl": {"after": {"en": 0.01, "ja": 0.09}}}


def test_goal_rows_and_frame():
    rows = limits.goal_rows(_summary())
    nr = rows["non_refusal"]
    assert nr["gap_closed"] == 0.6 and nr["vs_control"] == pytest.approx(3.0) and nr["p_vs_control"] == 0.002
    assert rows["asr"]["p_vs_control"] == 0.004     # each measure its own paired test
    old = _summary()
    del old["edit"]["random_control"]["compare_non_refusal_edit_vs_random"]
    assert math.isnan(limits.goal_rows(old)["non_refusal"]["p_vs_control"])   # not ASR's test
    assert nr["xstest_over_refusal_pts"] == pytest.approx(2.0) and nr["utility_pts"] == pytest.approx(-1.0)
    assert nr["harmless_kl"] == pytest.approx(0.05) and nr["harmless_kl_targets"] == pytest.approx(0.09)
    assert rows["margin"]["vs_control"] == pytest.approx(10.0) and rows["margin"]["p_vs_control"] == 0.0005
    assert math.isnan(rows["asr"]["gap_closed"]) and math.isnan(rows["asr"]["vs_control"])   # no ASR gap
    assert limits.goal_met("gap_closed", 0.6) and not limits.goal_met("p_vs_control", 0.01)
    assert limits.goal_met("harmless_kl", 0.051) is False and limits.goal_met("gap_closed", float("nan")) is None
    frame = limits.goal_frame({"paper": _summary(), "best": _summary()}, "margin")
    assert list(frame.columns) == ["paper", "best", "goal"] and frame.loc["gap_closed", "goal"] == ">= 0.6"
    with pytest.raises(ValueError, match="measure must be one of"):
        limits.goal_frame({"x": _summary()}, "kl")


def test_trials_frame_reads_stack_and_sweep_records():
    stack = {"before": {"target": 1.0, "harmless": -0.5, "source": 3.0}, "preset": "best", "gamma": 1.0,
             "trials": [{"layers": [17, 19], "val_gain_harmful": 1.5, "val_gain_harmless": 0.4,
                         "val_gain_source": -0.1, "score": 1.0, "first_token_kl_mean": 0.7, "n_neurons": 2048,
                         "fraction_of_parameters": 0.0058}]}
    sweep = {"before": stack["before"], "trials": [
        {"layer": 17, "neurons": "gap1024", "gamma": 10.0, "val_gain_harmful": 0.5, "val_gain_harmless": 0.0,
         "val_gain_source": 0.0, "score": 0.5, "first_token_kl_mean": 0.04, "n_neurons": 1024,
         "fraction_of_parameters": 0.0029}]}
    f = limits.trials_frame(stack)
    assert f.loc[0, "layers"] == "17,19" and f.loc[0, "neurons"] == "best" and f.loc[0, "gamma"] == 1.0
    assert f.loc[0, "share_of_gap"] == pytest.approx(0.75) and f.loc[0, "score_minus_kl"] == pytest.approx(0.3)
    g = limits.trials_frame(sweep)
    assert g.loc[0, "layers"] == "17" and g.loc[0, "neurons"] == "gap1024" and g.loc[0, "gamma"] == 10.0
    assert g.loc[0, "params_pct"] == pytest.approx(0.29)


def test_lead_rows_and_the_shift_table():
    leads = {"before": {"target": 1.0, "harmless": -0.5, "source": 3.0}, "trials": [
        {"lead": "lead4", "layers": [17], "neurons": "gap1024", "gamma": 1.0, "val_gain_harmful": 0.2,
         "val_gain_harmless": 0.2, "val_gain_source": 0.0, "score": 0.0, "first_token_kl_mean": 0.01,
         "n_neurons": 1024, "fraction_of_parameters": 0.003}],
        "measurement": {"what": "text", "neurons": "gap1024",
                        "ja": {"n_harmful_pairs": 48, "harmless": {"n": 46, "parallel": True},
                               "gate": {"cosine": 0.96, "share_removed_by_harmless_shift": 0.79},
                               "up": {"cosine": 0.9, "share_removed_by_harmless_shift": 0.5}}}}
    f = limits.trials_frame(leads)
    assert list(f.columns[:2]) == ["lead", "layers"] and f.loc[0, "lead"] == "lead4"
    assert f.loc[0, "share_of_gap"] == pytest.approx(0.1)
    t = limits.shift_frame(leads)
    assert list(t.index) == ["ja"] and t.loc["ja", "gate share removed"] == pytest.approx(0.79)
    assert bool(t.loc["ja", "harmless parallel"]) and t.loc["ja", "up cosine"] == pytest.approx(0.9)


def test_seed_summaries_give_each_seeds_goal_rows():
    s = {**_summary(), "seed": 0}
    s["edit"]["layer"] = 17
    one = limits.seed_summaries(s)
    assert list(one) == [f"seed {s['seed']}"]
    other_rc = {**s["edit"]["random_control"], "margin_edit_vs_random": {"p_value": 0.5}}
    s["over_seeds"] = {"per_seed": [{"seed": 0, "gap_closed": s["gap_closed"], "kl": s["kl"],
                                     "random_control": s["edit"]["random_control"]},
                                    {"seed": 1, "gap_closed": {**s["gap_closed"], "summed": 0.0},
                                     "kl": {"after": {"ja": 1.0, "th": 3.0}}, "random_control": other_rc}]}
    both = limits.seed_summaries(s)
    assert list(both) == ["seed 0", "seed 1"]
    r0, r1 = limits.goal_rows(both["seed 0"]), limits.goal_rows(both["seed 1"])
    assert all(r0[m] == limits.goal_rows(s)[m] for m in ("non_refusal", "margin"))   # (the ASR rows are NaN)
    assert r1["margin"]["harmless_kl"] == pytest.approx(2.0) and r1["margin"]["p_vs_control"] == 0.5
    assert both["seed 1"]["edit"]["layer"] == s["edit"]["layer"]   # the rest from the main summary


def test_goal_rows_of_an_older_summary_come_from_its_blocks():
    s = _summary()
    del s["gap_closed_by"]
    s.update(non_refusal={"before": {"en": 0.4, "ja": 0.8, "th": 0.6}, "after": {"en": 0.4, "ja": 0.6, "th": 0.6}},
             margin={"before": {"en": 2.0, "ja": 0.0, "th": 1.0}, "after": {"en": 2.0, "ja": 1.0, "th": 1.0}})
    s["edit"]["random_control"]["margin"] = {"ja": 0.2, "th": 1.0}
    rows = limits.goal_rows(s)
    assert rows["non_refusal"]["gap_closed"] == pytest.approx(0.2 / 0.6)
    assert math.isnan(rows["non_refusal"]["control_gap_closed"])   # the old control kept no non-refusal
    assert rows["margin"]["gap_closed"] == pytest.approx(1 / 3) and rows["margin"]["vs_control"] == pytest.approx(5.0)


def test_format_and_near_miss_frames_read_lead3():
    rec = {"before": {"target": 1.0, "harmless": -0.5, "source": 3.0, "near_miss": -0.2},
           "measurement": {"19": {"s_std": 40, "s_near": 30, "s_both": 10, "format_share": 0.75,
                                  "near_position": {"median": 0.6}},
                           "17": {"s_std": 20, "s_near": 10, "s_both": 10, "format_share": 0.5}},
           "trials": [{"lead": "lead3", "layers": [17], "neurons": "S_std", "val_gain_harmful": 0.4,
                       "val_gain_harmless": 0.1, "val_gain_source": 0.0, "score": 0.3, "first_token_kl_mean": 0.01,
                       "n_neurons": 20, "fraction_of_parameters": 0.001, "near_miss_margin_gain": 0.05,
                       "near_miss_first_token_kl_mean": 0.02}]}
    f = limits.format_frame(rec)
    assert list(f.index) == [17, 19] and f.loc[19, "format share"] == pytest.approx(0.75)
    assert math.isnan(f.loc[17, "near-miss position (median)"]) and f.loc[19, "|S & S_near|"] == 10
    t = limits.near_miss_frame(rec)
    assert t.loc[0, "share_of_gap"] == pytest.approx(0.2) and t.loc[0, "near_miss_gain"] == pytest.approx(0.05)
    assert t.loc[0, "near_miss_kl"] == pytest.approx(0.02)


def test_r2_and_decision_frames_read_fit_trials():
    base = {"layers": [17], "neurons": "gap1024", "gamma": 1.0, "val_gain_harmful": 0.8, "val_gain_harmless": 0.0,
            "val_gain_source": 0.0, "score": 0.8, "first_token_kl_mean": 0.3, "n_neurons": 1024,
            "fraction_of_parameters": 0.003}
    rec = {"before": {"target": 1.0, "harmless": -0.5, "source": 3.0},
           "r2": [{"neurons": "S (paper)", "n_neurons": 424, "gamma": 1.0, "r2_fit": 0.78, "r2_val": 0.69},
                  {"neurons": "gap1024", "n_neurons": 1024, "gamma": 1.0, "r2_fit": 0.87, "r2_val": None}],
           "trials": [{**base, "decision_weight": 1.0, "decision_share": 0.04},
                      {**base, "decision_weight": 10.0, "decision_share": 0.3, "val_gain_harmful": 0.4}]}
    r = limits.r2_frame(rec)
    assert r.loc["S (paper)", "R2 validation pairs"] == pytest.approx(0.69)
    assert math.isnan(r.loc["gap1024", "R2 validation pairs"])
    d = limits.decision_frame(rec)
    assert list(d.index) == [(1.0, 1.0), (1.0, 10.0)] and d.loc[(1.0, 10.0), "share_of_gap"] == pytest.approx(0.2)
    assert d.loc[(1.0, 10.0), "decision share"] == pytest.approx(0.3)
