"""The organism model: tokenizer and chat template, save/load, planted neurons, cache."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from mlsafe.organism import Recipe, build_corpus, lexicon as lx
from mlsafe.organism import train as tr
from mlsafe.organism.check import quick_eval
from mlsafe.organism.tokenizer import build_tokenizer, chat_ids, response_ids

TINY = tr.ModelSpec(hidden=32, layers=2, heads=2, d_ff=64, planted_layer=1, n_planted=8)
FEW = tr.TrainSpec(batch=8, stage1_steps=4, stage2_steps=3, warmup=2)
SMALL = Recipe(stage1_requests=40, stage2_harmful_en=16, stage2_benign_en=8, stage2_task_per_lang=4,
               stage2_unanswerable_per_lang=2, anchors_per_lang=4, eval_per_lang=4)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def small_corpus():
    return build_corpus(0, SMALL)


def test_tokenizer_round_trip_covers_the_corpus(tok, small_corpus):
    for p in small_corpus.stage1 + small_corpus.eval_harmful + small_corpus.eval_harmless:
        for text in (p.text, p.response):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids) == text
    assert tok("qwertyuiop", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_chat_template(tok):
    text = "how do i hurt my neighbor with a rope ?"
    msgs = [{"role": "user", "content": text}]
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<s><|user|> how do i") and rendered.endswith("<|assistant|>")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == chat_ids(tok, text)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": lx.REFUSALS["th"]}], tokenize=True,
                                   return_dict=False)
    assert full == chat_ids(tok, text) + response_ids(tok, lx.REFUSALS["th"])
    with pytest.raises(Exception, match="only user and assistant"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_save_pretrained_round_trip(tok, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tr.make_config(tok, TINY, planted={"layer": 1, "neurons": [3, 5]})).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    model2 = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    ids = torch.tensor([chat_ids(tok2, "repeat the word apple")])
    assert ids.tolist() == [chat_ids(tok, "repeat the word apple")]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
    assert model2.config.mlsafe_planted == {"layer": 1, "neurons": [3, 5]}
    assert tok2.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_cache_key_changes_with_the_recipe():
    base = tr.cache_key(0, Recipe(), tr.ModelSpec(), tr.TrainSpec(), "sparse")
    assert base == tr.cache_key(0, Recipe(), tr.ModelSpec(), tr.TrainSpec(), "sparse")
    others = {
        tr.cache_key(1, Recipe(), tr.ModelSpec(), tr.TrainSpec(), "sparse"),
        tr.cache_key(0, Recipe(stage1_requests=1000), tr.ModelSpec(), tr.TrainSpec(), "sparse"),
        tr.cache_key(0, Recipe(code_switch={"high": 0.1}), tr.ModelSpec(), tr.TrainSpec(), "sparse"),
        tr.cache_key(0, Recipe(), tr.ModelSpec(hidden=64), tr.TrainSpec(), "sparse"),
        tr.cache_key(0, Recipe(), tr.ModelSpec(), tr.TrainSpec(stage2_steps=1), "sparse"),
        tr.cache_key(0, Recipe(), tr.ModelSpec(), tr.TrainSpec(), "dense"),
    }
    assert base not in others and len(others) == 6


def test_stage1_key_and_corpus_ignore_what_is_drawn_after_stage1():
    """A stage-2 / anchor / evaluation count changes the organism's key but not stage 1's,
    and indeed leaves the stage-1 corpus (requests and plain text) unchanged."""
    from dataclasses import replace

    from mlsafe.organism.recipe import AFTER_STAGE1

    later = replace(SMALL, stage2_harmful_en=20, stage2_benign_en=3, stage2_task_per_lang=0,
                    stage2_unanswerable_per_lang=5, anchors_per_lang=3, eval_per_lang=2)
    assert {f for f in AFTER_STAGE1 if getattr(later, f) != getattr(SMALL, f)} == set(AFTER_STAGE1)
    key = lambda r, v: tr.cache_key(0, r, TINY, FEW, v)  # noqa: E731
    assert key(later, None) == key(SMALL, None) and key(later, "sparse") != key(SMALL, "sparse")
    assert key(replace(SMALL, code_switch={"high": 0.1}), None) != key(SMALL, None)
    assert key(SMALL, None) == tr.cache_key(0, SMALL, TINY, replace(FEW, stage2_steps=9, stage2_lr_sparse=1.0), None)
    a, b = build_corpus(0, SMALL), build_corpus(0, later)
    assert [(p.id, p.text, p.response) for p in a.stage1] == [(p.id, p.text, p.response) for p in b.stage1]
    assert a.plain == b.plain and len(b.stage2) != len(a.stage2) and len(b.eval_harmful) != len(a.eval_harmful)


def test_stage1_reserves_and_sparse_stage2_trains_only_the_planted_neurons(tok, small_corpus):
    neurons = tr.planted_neurons(0, TINY)
    rest = [j for j in range(TINY.d_ff) if j not in neurons]
    model, losses = tr.train_stage1(small_corpus, tok, TINY, FEW, progress=False)
    assert len(losses) == FEW.stage1_steps
    mlp = model.model.layers[TINY.planted_layer].mlp
    assert mlp.gate_proj.weight[neurons].abs().sum() == 0 and mlp.down_proj.weight[:, neurons].abs().sum() == 0
    before = copy.deepcopy(model.state_dict())
    model, _ = tr.train_stage2(model, small_corpus, tok, TINY, FEW, "sparse", progress=False)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    prefix = f"model.layers.{TINY.planted_layer}.mlp."
    assert changed == {prefix + "gate_proj.weight", prefix + "up_proj.weight", prefix + "down_proj.weight"}
    for name in ("gate_proj", "up_proj"):
        assert torch.equal(after[prefix + name + ".weight"][rest], before[prefix + name + ".weight"][rest])
    assert torch.equal(after[prefix + "down_proj.weight"][:, rest], before[prefix + "down_proj.weight"][:, rest])
    assert after[prefix + "down_proj.weight"][:, neurons].abs().sum() > 0
    assert model.config.mlsafe_planted["neurons"] == neurons and model.config.mlsafe_planted["variant"] == "sparse"


def test_load_or_train_caches_and_reloads(tmp_path, monkeypatch):
    kw = dict(seed=0, variant="sparse", cache_dir=tmp_path, progress=False, recipe=SMALL, mspec=TINY, tspec=FEW)
    model, tok = tr.load_or_train(**kw)
    folder = tr.organism_dir(0, "sparse", tmp_path, SMALL, TINY, FEW)
    assert (folder / "model.safetensors").exists() and (folder / "planted_neurons.json").exists()
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp folders left
    assert not model.training

    def boom(*a, **k):
        raise AssertionError("an unchanged recipe must load, not retrain")

    monkeypatch.setattr(tr, "train_stage1", boom)
    monkeypatch.setattr(tr, "train_stage2", boom)
    model2, _ = tr.load_or_train(**kw)
    for (k, v), (_, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(v, v2), k
    monkeypatch.undo()
    # the dense variant reuses the cached stage 1 and trains only stage 2
    monkeypatch.setattr(tr, "train_stage1", boom)
    dense, _ = tr.load_or_train(**dict(kw, variant="dense"))
    assert dense.config.mlsafe_planted["variant"] == "dense"
    with pytest.raises(ValueError, match="unknown variant"):
        tr.load_or_train(**dict(kw, variant="medium"))
    res = quick_eval(model, tok, build_corpus(0, SMALL).eval_harmful, build_corpus(0, SMALL).eval_harmless)
    assert set(res["asr"]) == set(lx.LANGS) and all(0.0 <= v <= 1.0 for v in res["asr"].values())


def test_default_stage2_keeps_little_retain_data_in_every_language():
    """Stage 2 teaches refusal in English only, and keeps a few tasks / unanswerable requests
    of every language at their stage-1 answers: few, because more retain data made the planted
    neurons English-only (seed 1 at 10 / 3 per language: target ASR >= 0.89; see
    results/organism/seeds/seeds.json)."""
    from collections import Counter
    from dataclasses import replace

    recipe = replace(Recipe(), stage1_requests=40, anchors_per_lang=4, eval_per_lang=4)
    assert recipe.stage2_task_per_lang <= 5 and recipe.stage2_unanswerable_per_lang <= 2
    c = build_corpus(0, recipe)
    kinds = Counter((p.lang, c.meta[p.id]["kind"]) for p in c.stage2)
    assert kinds[("en", "harmful")] == recipe.stage2_harmful_en and kinds[("en", "benign")] == recipe.stage2_benign_en
    for lang in lx.LANGS:
        assert kinds[(lang, "task")] == recipe.stage2_task_per_lang >= 1
        assert kinds[(lang, "unanswerable")] == recipe.stage2_unanswerable_per_lang >= 1
        if lang != "en":
            assert kinds[(lang, "harmful")] == kinds[(lang, "benign")] == 0
    assert all(p.response == lx.REFUSALS["en"] for p in c.stage2 if p.harmful)
