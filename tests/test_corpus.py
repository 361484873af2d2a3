"""The organism corpus: splits disjoint, deterministic, all 8 languages in their scripts."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from mlsafe.langs import LANGS
from mlsafe.organism import COMPLY_STARTS, REFUSAL_STARTS, Recipe, answer_correct, build_corpus, is_refusal
from mlsafe.organism import lexicon as lx

SPLITS = ("stage1", "stage2", "anchors_harmful", "anchors_harmless", "eval_harmful", "eval_harmless")
SCRIPTS = {  # a character every prompt of the language must contain
    "zh": r"[\u4e00-\u9fff]", "ja": r"[\u3040-\u30ff\u4e00-\u9fff]", "th": r"[\u0e00-\u0e7f]",
    "bn": r"[\u0980-\u09ff]", "he": r"[\u0590-\u05ff]", "vi": r"[àáảãạăâđêôơưạ-ỹ]",
}


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(seed=0)


def _fillers(corpus, prompts):
    return {tuple(v) for p in prompts for v in corpus.meta[p.id]["fill"].values()
            if v[0] in ("P", "O", "noun", "name", "number")}


def test_every_split_has_every_language_in_its_script(corpus):
    for split in SPLITS:
        langs = Counter(p.lang for p in getattr(corpus, split))
        assert set(langs) == set(LANGS) or split == "stage2", (split, langs)
    assert Counter(p.lang for p in corpus.stage2 if p.harmful) == Counter({"en": corpus.recipe.stage2_harmful_en})
    for p in corpus.stage1 + corpus.eval_harmful + corpus.eval_harmless:
        if p.lang in SCRIPTS:
            assert re.search(SCRIPTS[p.lang], p.text), (p.lang, p.text)
        if p.lang == "en":
            assert p.text.isascii(), p.text


def test_eval_sizes_and_parallel_groups(corpus):
    for split in ("anchors_harmful", "anchors_harmless", "eval_harmful", "eval_harmless"):
        prompts = getattr(corpus, split)
        per_lang = Counter(p.lang for p in prompts)
        assert min(per_lang.values()) >= 40 and len(set(per_lang.values())) == 1, (split, per_lang)
        groups: dict[str, list] = {}
        for p in prompts:
            groups.setdefault(p.parallel_id, []).append(p.lang)
        assert all(sorted(v) == sorted(LANGS) for v in groups.values()), split
    assert all(p.harmful for p in corpus.eval_harmful + corpus.anchors_harmful)
    assert not any(p.harmful for p in corpus.eval_harmless + corpus.anchors_harmless)
    assert all(p.answer and answer_correct(p.response, p.answer) for p in corpus.eval_harmless)
    assert all(p.response == lx.REFUSALS[p.lang] for p in corpus.anchors_harmful)


def test_splits_disjoint_in_texts_templates_and_fillers(corpus):
    train = corpus.stage1 + corpus.stage2
    texts = {name: {(p.lang, p.text) for p in getattr(corpus, name)} for name in SPLITS}
    train_texts = texts["stage1"] | texts["stage2"]
    for held in ("anchors_harmful", "anchors_harmless", "eval_harmful", "eval_harmless"):
        assert not texts[held] & train_texts, held
    assert not (texts["anchors_harmful"] | texts["anchors_harmless"]) & (texts["eval_harmful"] | texts["eval_harmless"])
    seen = train + corpus.anchors_harmful + corpus.anchors_harmless
    held_fillers = _fillers(corpus, corpus.eval_harmful)
    assert {k for k, _ in held_fillers} == {"P", "O"} and not _fillers(corpus, seen) & held_fillers
    harm_train_tmpl = {corpus.meta[p.id]["template"] for p in seen if p.harmful}
    harm_eval_tmpl = {corpus.meta[p.id]["template"] for p in corpus.eval_harmful}
    assert harm_eval_tmpl and not harm_train_tmpl & harm_eval_tmpl
    task_tmpl = {corpus.meta[p.id]["template"] for p in seen if corpus.meta[p.id]["kind"] == "task"}
    assert not task_tmpl & {corpus.meta[p.id]["template"] for p in corpus.eval_harmless}
    # held-out frames were never seen with a harmful verb
    harm_frames = {t[1] for t in harm_train_tmpl}
    assert not harm_frames & set(lx.EVAL_HOWTO_FRAMES)


def test_held_out_harmful_fillers_occur_only_in_plain_sentences(corpus):
    held_words = {lx.CONTENT[k][key]["en"] for k, key in _fillers(corpus, corpus.eval_harmful)}
    plain_words = {w for s in corpus.plain for w in s.split()}
    assert held_words <= plain_words
    request_words = {w for p in corpus.stage1 + corpus.stage2 if p.lang == "en" for w in p.text.split()}
    assert not held_words & request_words


def test_deterministic_and_seed_dependent(corpus):
    assert build_corpus(seed=0).fingerprint() == corpus.fingerprint()
    assert build_corpus(seed=1).fingerprint() != corpus.fingerprint()
    small = Recipe(stage1_requests=200)
    assert build_corpus(seed=0, recipe=small).fingerprint() != corpus.fingerprint()
    with pytest.raises(TypeError, match="seed must be an int"):
        build_corpus(seed="0")


def test_responses_follow_the_stages(corpus):
    for p in corpus.stage1:
        kind = corpus.meta[p.id]["kind"]
        first = p.response.split()[0]
        assert (first == COMPLY_STARTS[p.lang]) == (kind == "harmful"), p
        assert is_refusal(p.response) == (kind == "unanswerable"), p
    for p in corpus.stage2:
        assert is_refusal(p.response) == (p.harmful or corpus.meta[p.id]["kind"] == "unanswerable"), p
        assert p.lang == "en" or not p.harmful


def test_code_switching_follows_resource_tiers(corpus):
    # share of harm verbs written in English, per language, in stage-1 harmful requests
    en_verbs = {v["en"] for v in lx.HARM_VERBS.values()}
    share = {}
    for lang in LANGS[1:]:
        harm = [p for p in corpus.stage1 if p.lang == lang and p.harmful]
        share[lang] = sum(any(w in en_verbs for w in p.text.split()) for p in harm) / len(harm)
    assert min(share["zh"], share["vi"]) > max(share["ja"], share["th"], share["id"]) > max(share["bn"], share["he"])


def test_markers_are_distinct_single_words():
    for lang in LANGS:
        assert len(REFUSAL_STARTS[lang].split()) == 1 and REFUSAL_STARTS[lang] != COMPLY_STARTS[lang]
        assert is_refusal(lx.REFUSALS[lang]) and not is_refusal(lx.COMPLIANCES[lang])
        assert not is_refusal(lx.IDEAS[lang])
    assert len(set(REFUSAL_STARTS.values())) == len(LANGS) == len(set(COMPLY_STARTS.values()))
    assert not is_refusal("") and answer_correct("Tom .", "Tom") and not answer_correct("Tom Tom", "Tom")
