"""mlsafe.paper: the typed Table 6 counts reproduce the paper's headline ASR percentages."""

from __future__ import annotations

import math

import pytest

from mlsafe import paper
from mlsafe.langs import LANGS


def test_headline_none_and_edit_columns_follow_from_table6_counts():
    derived = paper.headline_from_table6()
    for model in paper.MODELS:
        for col in ("None", "edit"):
            assert round(derived.loc[model, col], 2) == pytest.approx(paper.HEADLINE[model][col], abs=1e-9), \
                (model, col)


def test_table6_is_complete_and_counts_are_within_313():
    assert set(paper.TABLE6) == set(paper.MODELS) == set(paper.HEADLINE) == set(paper.UTILITY)
    for model, rows in paper.TABLE6.items():
        assert len(rows) == len(LANGS)
        assert all(0 <= k <= paper.N_TEST for pair in rows for k in pair)


def test_table6_frame_percentages_and_relative_reduction():
    t = paper.table6("Llama-3.2-1B")
    assert list(t.index) == list(LANGS)
    assert t.loc["th", "asr_none"] == pytest.approx(100 * 69 / 313)
    assert t.loc["he", "relative_reduction"] == pytest.approx((109 - 115) / 109)   # Hebrew gets worse
    assert t.loc["en", "relative_reduction"] == pytest.approx(1.0)
    rr = paper.relative_reduction([0.0, 50.0], [0.0, 25.0])
    assert math.isnan(rr.iloc[0]) and rr.iloc[1] == 0.5
    with pytest.raises(KeyError, match="unknown paper model"):
        paper.table6("Llama-9B")


def test_asr_none_and_utility_frames():
    none = paper.asr_none(("Qwen2.5-7B",))
    assert none.loc["bn", "Qwen2.5-7B"] == pytest.approx(100 * 98 / 313)
    u = paper.utility_frame()
    assert u.loc["Qwen2-0.5B", "MGSM edit"] == 5.27 and u.loc["Llama-3.2-3B", "M-MMLU none"] == 37.10


def test_gpu_estimate_scales_with_parameters_and_rejects_nonsense():
    small, big = paper.gpu_estimate(paper.PARAMS_B["Qwen2-0.5B"]), paper.gpu_estimate(paper.PARAMS_B["Qwen2.5-7B"])
    assert small["weights_gb"] == pytest.approx(0.98) and big["weights_gb"] == pytest.approx(15.24)
    assert big["peak_gb"] == pytest.approx(1.2 * (15.24 + 16.4))
    assert small["responses"] == 2 * 8 * 313 + 3 * 313 + 2 * 1250
    assert big["total_minutes"] >= small["total_minutes"] > 0
    assert paper.gpu_estimate(1.0, n_targets=7)["responses"] > small["responses"]
    with pytest.raises(ValueError, match="params_b"):
        paper.gpu_estimate(0)
    assert set(paper.PARAMS_B) == set(paper.MODELS)
