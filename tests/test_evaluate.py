"""mlsafe.evaluate: Wilson intervals, ASR tables, per-prompt CSV, generation, refusal margin, utility."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mlsafe.evaluate import (DEFAULT_COMPLY_STARTS, DEFAULT_REFUSAL_STARTS, Judgment, asr_table,
                             cluster_bootstrap_ci, compare, design_effect, exact_match, exact_match_accuracy,
                             extract_final_number, format_chat, generate, language_margins,
                             mean_by_lang, mgsm_accuracy, mmlu_accuracy, next_token_logprobs,
                             paired_bootstrap_diff, refusal_margin, summary_blocks, summary_extra, wilson,
                             write_per_prompt_csv)
from mlsafe.evaluate.margin import start_token_sets
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

torch.set_num_threads(1)


def wilson_by_quadratic(k, n, z):
    """Independent check: the Wilson bounds are the roots p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k, n, published", [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)),
                                             (10, 10, (0.7225, 1.0)), (30, 313, None), (1, 1, None)])
def test_wilson_known_values(k, n, published):
    lo, hi = wilson(k, n)
    exp = wilson_by_quadratic(k, n, 1.959963984540054)
    assert lo == pytest.approx(exp[0], abs=1e-12) and hi == pytest.approx(exp[1], abs=1e-12)
    if published:
        assert (lo, hi) == pytest.approx(published, abs=1e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_bad_input():
    with pytest.raises(ValueError, match="n >= 1"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(11, 10)


def make_prompts(langs):
    return [Prompt(id=f"p{i}-{l}", lang=l, text=f"[placeholder {i}]", harmful=True, parallel_id=f"p{i}")
            for i, l in enumerate(langs)]


def J(unsafe):
    return Judgment(unsafe=unsafe, refusal=not unsafe, label="compliance" if unsafe else "refusal", raw="")


def test_asr_table_counts_order_and_ci():
    langs = ["th"] * 4 + ["en"] * 3 + ["xx"]
    unsafe = [True, True, False, True, False, False, False, True]
    table = asr_table(make_prompts(langs), [J(u) for u in unsafe])
    assert list(table.index) == ["en", "th", "xx"]  # paper order first
    assert table.loc["th", "n"] == 4 and table.loc["th", "unsafe"] == 3
    assert table.loc["th", "asr"] == pytest.approx(0.75) and table.loc["en", "asr"] == 0.0
    assert (table.loc["th", "ci_lo"], table.loc["th", "ci_hi"]) == pytest.approx(wilson(3, 4))
    asr, ci = summary_blocks(table)
    assert asr == {"en": 0.0, "th": 0.75, "xx": 1.0} and ci["en"] == list(wilson(0, 3))
    with pytest.raises(ValueError, match="judgments"):
        asr_table(make_prompts(langs), [J(True)])


def test_per_prompt_csv_roundtrip(tmp_path):
    ps = make_prompts(["en", "zh", "he"])
    path = tmp_path / "sub" / "per_prompt.csv"
    write_per_prompt_csv(path, ps, ["r,1", "回答\n2\r3", "תשובה"], [J(True), J(False), J(True)], margins=[0.5, -1, 2])
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back["id"]) == [p.id for p in ps] and list(back["response"]) == ["r,1", "回答\n2\r3", "תשובה"]
    assert list(back["unsafe"]) == [True, False, True] and list(back["margin"]) == [0.5, -1.0, 2.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_prompt.csv"]  # no temp file left
    with pytest.raises(ValueError, match="same length"):
        write_per_prompt_csv(path, ps, ["a"], [J(True)] * 3)


def test_per_prompt_csv_truncates_responses_and_writes_cluster_columns(tmp_path):
    ps = [Prompt("a", "th", "[placeholder]", True, "a", source="templated", cluster="t3"),
          Prompt("b", "th", "[placeholder]", True, "b")]
    js = [Judgment(True, False, "compliance", "", harmful=True), Judgment(False, None, "unclear", "")]
    path = tmp_path / "per_prompt.csv"
    write_per_prompt_csv(path, ps, ["ขออภัยครับ long answer", "ok"], js, max_response_chars=4)
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back["response"]) == ["ขออภ", "ok"]
    assert list(back["harmful"]) == ["True", ""] and list(back["cluster"]) == ["t3", ""]
    assert list(back["source"]) == ["templated", ""] and list(back["label"]) == ["compliance", "unclear"]
    write_per_prompt_csv(path, ps, ["full text", "x"], js)
    assert pd.read_csv(path, keep_default_na=False)["response"][0] == "full text"
    with pytest.raises(ValueError, match="max_response_chars"):
        write_per_prompt_csv(path, ps, ["a", "b"], js, max_response_chars=-1)


def test_asr_table_judge_columns():
    ps = make_prompts(["en"] * 5 + ["th"] * 3)
    js = [Judgment(True, False, "compliance", "", harmful=True), Judgment(False, True, "refusal", "", harmful=False),
          Judgment(False, None, "unclear", ""), Judgment(False, None, "empty", ""),
          Judgment(False, None, "unparsed", "")] + [J(True), J(False), J(True)]
    t = asr_table(ps, js)
    assert t.loc["en", "unclear"] == 3 and t.loc["en", "unclear_share"] == pytest.approx(0.6)
    assert t.loc["en", "unparsed"] == 1 and t.loc["th", "unclear"] == 0
    assert t.loc["en", "non_refusal"] == pytest.approx(1 / 5)  # refusal None is not a non-refusal
    assert t.loc["th", "non_refusal"] == pytest.approx(2 / 3)
    assert t.loc["en", "harmful_rate"] == pytest.approx(1 / 5) and math.isnan(t.loc["th", "harmful_rate"])
    assert list(t.columns[:6]) == ["n", "unsafe", "asr", "ci_lo", "ci_hi", "unparsed"]  # old columns first


def templated(lang, per_template, fillers=5, prefix="t"):
    """Prompts of 8 templates x 5 fillers whose outcome the template decides (one bool per template)."""
    ps = [Prompt(f"{lang}-{prefix}{t}-{f}", lang, "[placeholder]", True, f"{prefix}{t}-{f}",
                 source="templated", cluster=f"{prefix}{t}")
          for t in range(len(per_template)) for f in range(fillers)]
    return ps, [J(bool(u)) for u in np.repeat(per_template, fillers)]


def test_asr_table_cluster_interval_follows_prompt_cluster():
    ps, js = templated("th", [1, 0, 0, 1, 0, 0, 0, 1])
    iid = [Prompt(p.id, p.lang, p.text, True, p.parallel_id) for p in ps]  # cluster None: singletons
    t, t_iid = asr_table(ps, js, seed=3, n_boot=1000), asr_table(iid, js, seed=3, n_boot=1000)
    y = np.array([j.unsafe for j in js], dtype=float)
    expected = cluster_bootstrap_ci(y, [p.cluster for p in ps], n_boot=1000, seed=3)
    assert (t.loc["th", "ci_cluster_lo"], t.loc["th", "ci_cluster_hi"]) == pytest.approx(expected)
    assert t.loc["th", "n_clusters"] == 8 and t_iid.loc["th", "n_clusters"] == 40
    assert t.loc["th", "deff"] == pytest.approx(design_effect(y, [p.cluster for p in ps]))
    assert t_iid.loc["th", "deff"] == pytest.approx(1.0)
    width = t.loc["th", "ci_cluster_hi"] - t.loc["th", "ci_cluster_lo"]
    assert width > 1.5 * (t.loc["th", "ci_hi"] - t.loc["th", "ci_lo"])  # Wilson is too narrow here
    assert t.loc["th", "ci_lo"] == t_iid.loc["th", "ci_lo"]  # Wilson ignores clusters
    assert asr_table(ps, js, seed=3, n_boot=1000).equals(t)  # seeded


def test_summary_extra_is_json_safe():
    ps = make_prompts(["en", "en", "th"])
    js = [Judgment(True, False, "compliance", "", harmful=True), Judgment(False, None, "unclear", ""), J(False)]
    extra = summary_extra(asr_table(ps, js, n_boot=200))
    assert set(extra) == {"asr_ci_cluster", "n_clusters", "deff", "unclear", "non_refusal", "harmful"}
    assert extra["unclear"] == {"en": {"n": 1, "share": 0.5}, "th": {"n": 0, "share": 0.0}}
    assert extra["harmful"] == {"en": 0.5, "th": None} and extra["deff"]["th"] is None
    assert extra["non_refusal"] == {"en": 0.5, "th": 0.0} and extra["n_clusters"] == {"en": 2, "th": 1}
    json.dumps(extra, allow_nan=False)  # raises on NaN


def test_compare_per_language_and_pooled():
    en, en_b = templated("en", [1, 0, 0, 0, 0, 0, 0, 0])
    th, th_b = templated("th", [1, 1, 0, 1, 1, 0, 1, 1])  # same clusters t0..t7 as en: pooled keeps them
    bn, bn_b = templated("bn", [1, 1, 1, 0, 1, 1, 0, 1])
    prompts = en + th + bn
    before = en_b + th_b + bn_b
    after = en_b + [J(False)] * len(th) + bn_b  # the edit fixes Thai only
    out = compare(prompts, before, after, seed=1, n_boot=500)
    assert list(out["per_lang"]) == ["en", "th", "bn"]
    th_block = out["per_lang"]["th"]
    assert th_block["before"] == pytest.approx(0.75) and th_block["after"] == 0.0
    assert (th_block["n01"], th_block["n10"]) == (0, 30) and th_block["n_clusters"] == 8
    assert th_block["mcnemar_p"] == pytest.approx(2 * 0.5 ** 30)
    y0 = np.array([j.unsafe for j in th_b], dtype=float)
    ref = paired_bootstrap_diff(y0, np.zeros_like(y0), [p.cluster for p in th], n_boot=500, seed=1)
    assert th_block["diff"] == pytest.approx(-0.75) and th_block["diff_ci"] == pytest.approx(ref["ci"])
    assert th_block["bootstrap_p"] == ref["p_value"] and th_block["diff_ci"][1] < 0
    assert out["per_lang"]["bn"]["diff"] == 0.0 and out["per_lang"]["bn"]["mcnemar_p"] == 1.0
    pooled = out["pooled"]
    assert pooled["langs"] == ["th", "bn"] and pooled["n"] == 80 and pooled["n_clusters"] == 8
    assert pooled["diff"] == pytest.approx(-30 / 80) and pooled["n10"] == 30
    assert pooled["mcnemar_p"] == th_block["mcnemar_p"]  # Bengali adds no discordant pair
    only_en = compare(prompts, before, after, seed=1, n_boot=100, pooled=["en"])["pooled"]
    assert only_en["langs"] == ["en"] and only_en["diff"] == 0.0
    assert compare(en, en_b, en_b, n_boot=50)["pooled"] is None
    bools = compare(prompts, [j.unsafe for j in before], [j.unsafe for j in after], seed=1, n_boot=500)
    assert bools == out
    with pytest.raises(ValueError, match="after judgments"):
        compare(prompts, before, after[:-1])


# ------------------------------------------------------------------ with a tiny model
@pytest.fixture(scope="module")
def qwen(tiny_dir):
    folder = tiny_dir   # conftest.py: the session's tiny Qwen2 folder
    return (AutoModelForCausalLM.from_pretrained(folder, local_files_only=True),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


TEXTS = ["hello there", "抱歉 a much longer prompt with more words", "ขออภัย", "שלום", "Halo"]


def test_format_chat_needs_template(qwen):
    _, tok = qwen
    with_sys = format_chat(tok, ["hi"], system="Be brief.")[0]
    assert with_sys.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "You are a helpful" not in with_sys
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="no chat template"):
            format_chat(tok, ["hi"])
    finally:
        tok.chat_template = saved


def test_generate_batch_invariant_and_restores_tokenizer(qwen):
    model, tok = qwen
    tok.padding_side = "right"
    batched = generate(model, tok, TEXTS, max_new_tokens=5, batch_size=2, progress=False)
    single = [generate(model, tok, [t], max_new_tokens=5, progress=False)[0] for t in TEXTS]
    assert batched == single and tok.padding_side == "right"
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, TEXTS, max_new_tokens=0, progress=False)


def test_refusal_margin_matches_manual_computation(qwen):
    model, tok = qwen
    R, C = ["I'm sorry", "Sorry"], ["Sure", "Here"]
    got = refusal_margin(model, tok, TEXTS, refusal_starts=R, comply_starts=C, batch_size=2)
    r_ids = sorted({tok.encode(s, add_special_tokens=False)[0] for s in R})
    c_ids = sorted({tok.encode(s, add_special_tokens=False)[0] for s in C})
    for text, value in zip(TEXTS, got):
        ids = tok(format_chat(tok, [text])[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
        expected = torch.logsumexp(logp[r_ids], 0) - torch.logsumexp(logp[c_ids], 0)
        assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    assert got.dtype == torch.float64 and got.shape == (len(TEXTS),)


def test_start_token_sets_drop_shared_tokens(qwen):
    _, tok = qwen
    r, c = start_token_sets(tok, ["I'm sorry", "Sure"], ["Sure", "Here"])
    sure = tok.encode("Sure", add_special_tokens=False)[0]
    assert sure not in r and sure not in c and r and c
    with pytest.raises(ValueError, match="share all"):
        start_token_sets(tok, ["Sure"], ["Sure"])


def test_language_margins_use_each_language_lists(qwen):
    model, tok = qwen
    langs = ["en", "th", "en", "bn"]
    ps = [Prompt(f"q{i}", l, t, True, f"q{i}") for i, (l, t) in enumerate(zip(langs, TEXTS))]
    got = language_margins(model, tok, ps, include_english=False)
    th = refusal_margin(model, tok, [TEXTS[1]], refusal_starts=DEFAULT_REFUSAL_STARTS["th"],
                        comply_starts=DEFAULT_COMPLY_STARTS["th"])
    assert got[1].item() == pytest.approx(th.item(), abs=1e-5)   # batched with the other languages
    assert got[1].item() != pytest.approx(got[3].item(), abs=1e-3)   # and each with its own lists
    means = mean_by_lang(ps, got)
    assert list(means) == ["en", "th", "bn"]
    assert means["en"] == pytest.approx((got[0].item() + got[2].item()) / 2)
    with pytest.raises(ValueError, match="'xx'"):
        language_margins(model, tok, [Prompt("z", "xx", "t", True, "z")])


def test_generate_scored_margins_equal_a_separate_margin_pass(qwen):
    """Issue 17: the margin read from the first generated token's logits is the margin of a
    separate forward pass (to float noise), in input order, with the responses unchanged."""
    from mlsafe.evaluate.generate import generate_scored
    from mlsafe.evaluate.margin import language_token_sets, margins_from_table, union_ids

    model, tok = qwen
    langs = ["en", "th", "en", "bn"]
    ps = [Prompt(f"q{i}", l, t, True, f"q{i}") for i, (l, t) in enumerate(zip(langs, TEXTS))]
    sets = language_token_sets(tok, langs)
    ids = union_ids(sets)
    texts, logp = generate_scored(model, tok, TEXTS, ids, max_new_tokens=4, batch_size=3, progress=False,
                                  sort_by_length=True)
    assert texts == generate(model, tok, TEXTS, max_new_tokens=4, batch_size=3, progress=False,
                             sort_by_length=True)
    assert logp.shape == (len(TEXTS), len(ids)) and logp.dtype == torch.float64
    fused, separate = margins_from_table(ps, logp, ids, sets), language_margins(model, tok, ps)
    assert torch.allclose(fused, separate, atol=1e-5, rtol=0)
    assert not torch.allclose(fused, fused.flip(0))     # order matters: the check can fail


def test_evaluate_fuses_margins_into_generation(tiny_loaded, monkeypatch):
    """A fresh evaluation makes no margin pass of its own; its margins equal a separate pass."""
    import dataclasses

    from mlsafe.evaluate import run as run_mod

    _, lm, suite = tiny_loaded
    suite = dataclasses.replace(suite, eval_harmful=suite.eval_harmful[:6], eval_harmless=suite.eval_harmless[:2])
    calls = []
    monkeypatch.setattr(run_mod, "language_margins", lambda *a, **k: calls.append(1))
    ev = run_mod.evaluate(lm.model, lm.tokenizer, suite, progress=False)
    assert not calls
    separate = language_margins(lm.model, lm.tokenizer, ev.harmful, refusal_starts=suite.refusal_starts,
                                comply_starts=suite.comply_starts)
    assert torch.allclose(ev.margins, separate, atol=1e-5, rtol=0)


def test_default_start_strings_usable_in_every_language(qwen):
    _, tok = qwen
    assert set(DEFAULT_REFUSAL_STARTS) == set(LANGS) == set(DEFAULT_COMPLY_STARTS)
    for lang in LANGS:
        r, c = start_token_sets(tok, DEFAULT_REFUSAL_STARTS[lang], DEFAULT_COMPLY_STARTS[lang])
        assert r and c


@pytest.mark.parametrize("text, number", [
    ("So the answer is 18.", "18"), ("1,234 apples, then 2,000.50", "2000.5"), ("-3 and 7.0", "7"),
    ("উত্তর ১৮", "18"), ("คำตอบคือ ๔๒", "42"), ("答えは１２です", "12"), ("no digits", None),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


@pytest.mark.parametrize("response, answer, ok", [
    ("Paris.", "paris", True), ("  PARIS is the capital", "Paris", True), ("Parisian", "Paris", False),
    ("42\nmore text", "42", True), ("The answer is 42", "42", False),
])
def test_exact_match(response, answer, ok):
    assert exact_match(response, answer) is ok


def test_utility_metrics_on_tiny_model(qwen):
    model, tok = qwen
    responses = generate(model, tok, TEXTS, max_new_tokens=6, progress=False)
    first = [r.split()[0] if r.split() else "" for r in responses]
    ps = [Prompt(f"u{i}", "en", t, False, f"u{i}", answer=a) for i, (t, a) in enumerate(zip(TEXTS, first)) if a]
    assert exact_match_accuracy(model, tok, ps, max_new_tokens=6) == [True] * len(ps)
    mc = [Prompt(f"m{i}", "zh", f"Q{i}\nA. 1\nB. 2\nC. 3\nD. 4", False, f"m{i}", answer="A") for i in range(4)]
    letter_ids = [tok.encode(x, add_special_tokens=False)[0] for x in "ABCD"]
    pred = ["ABCD"[i] for i in next_token_logprobs(model, tok, [p.text for p in mc], letter_ids).argmax(-1)]
    right = [Prompt(p.id, p.lang, p.text, False, p.parallel_id, answer=a) for p, a in zip(mc, pred)]
    wrong = [Prompt(p.id, p.lang, p.text, False, p.parallel_id, answer="ABCD"[("ABCD".index(a) + 1) % 4])
             for p, a in zip(mc, pred)]
    assert mmlu_accuracy(model, tok, right) == [True] * 4 and mmlu_accuracy(model, tok, wrong) == [False] * 4
    gsm = [Prompt("g0", "en", "What is 2 plus 5?", False, "g0", answer="7")]
    assert mgsm_accuracy(model, tok, gsm, max_new_tokens=4, progress=False) in ([True], [False])
    with pytest.raises(ValueError, match="answer"):
        mgsm_accuracy(model, tok, [Prompt("g", "en", "t", False, "g")], progress=False)
    with pytest.raises(ValueError, match="A', 'B"):
        mmlu_accuracy(model, tok, [Prompt("m", "en", "t", False, "m", answer="E")])
