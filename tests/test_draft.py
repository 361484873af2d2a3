"""Draft-verified greedy decoding (issue 17): whatever the drafts, the responses are the
model's own greedy ones, and a right draft is read in one pass with no decode step."""

from __future__ import annotations

import importlib

import pytest
import torch

from mlsafe import chat
from mlsafe.evaluate import draft
from mlsafe.evaluate.generate import format_chat
from mlsafe.evaluate.prefix import SharedPrefix, shared_prefix_len

from test_prefix import TEXTS

gen_module = importlib.import_module("mlsafe.evaluate.generate")


# ----------------------------------------------------------------------------- pure functions
def test_accept_keeps_the_draft_while_it_is_the_argmax():
    eos = {0}
    assert draft.accept([5, 6, 7], [5, 6, 7, 8], eos=eos, max_new_tokens=10) == ([5, 6, 7, 8], False)
    assert draft.accept([5, 6, 7], [5, 9, 7, 8], eos=eos, max_new_tokens=10) == ([5, 9], False)   # first miss
    assert draft.accept([5, 0], [5, 0, 3], eos=eos, max_new_tokens=10) == ([5, 0], True)          # an end token
    assert draft.accept([5, 6], [5, 0, 3], eos=eos, max_new_tokens=10) == ([5, 0], True)          # ends instead
    assert draft.accept([5, 6, 7], [5, 6, 7, 8], eos=eos, max_new_tokens=3) == ([5, 6, 7], True)  # the budget
    assert draft.accept([], [4], eos=eos, max_new_tokens=3) == ([4], False)


def test_draft_ids_cut_to_the_budget_and_end_short_drafts():
    class Tok:
        def __call__(self, text, add_special_tokens):
            assert add_special_tokens is False
            return {"input_ids": [ord(c) for c in text]}
    assert draft.draft_ids(Tok(), ["abcdef", "ab", ""], end_id=1, max_new_tokens=4) == [
        [97, 98, 99, 100], [97, 98, 1], [1]]
    assert draft.draft_ids(Tok(), ["ab"], end_id=None, max_new_tokens=4) == [[97, 98]]


def test_rows_per_batch_keeps_the_logits_in_budget():
    assert draft.rows_per_batch(33, 151_936) == draft.LOGIT_BYTES // (33 * 151_936 * 4)
    assert draft.rows_per_batch(33, 10**9) == 1


# ----------------------------------------------------------------------------- tiny models
def _kw(first=None):
    return dict(max_new_tokens=10, batch_size=3, progress=False, device=None, desc="", sort_by_length=True,
                stats=None, first=first)


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = gen_module.steps

    def counting(*args, **kw):
        calls.append(kw["max_new_tokens"])
        return real(*args, **kw)
    monkeypatch.setattr(gen_module, "steps", counting)
    return calls


def test_any_drafts_give_the_models_greedy_responses(fast_path_models, monkeypatch):
    first = lambda x: torch.log_softmax(x.double(), -1)  # noqa: E731
    for name, model, tok in fast_path_models:
        texts = format_chat(tok, TEXTS)
        ref, ref_first = gen_module._generate(model, tok, texts, **_kw(first))
        half = [r[: len(r) // 2] for r in ref]
        for drafts in (ref, half, [""] * len(ref), ref[::-1], ["unrelated words entirely"] * len(ref)):
            got, got_first = gen_module._generate(model, tok, texts, drafts=drafts, **_kw(first))
            assert got == ref, name
            assert torch.allclose(got_first, ref_first, atol=1e-5), name
        # one row per batch: poor drafts stop verification after two rows, the rest is decoded
        narrow = {**_kw(first), "batch_size": 1}
        ref1, ref1_first = gen_module._generate(model, tok, texts, **narrow)
        got, got_first = gen_module._generate(model, tok, texts, drafts=[""] * len(ref), **narrow)
        assert got == ref1 and torch.allclose(got_first, ref1_first, atol=1e-5), name
        # an end token the model emits mid-answer: rows end early, in the draft or after it
        one = torch.tensor([chat.encode_all(tok, texts[:1])[0]])
        mid = int(model.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=3,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0, -1])
        monkeypatch.setattr(model.generation_config, "eos_token_id", [model.generation_config.eos_token_id, mid])
        ref_eos, _ = gen_module._generate(model, tok, texts, **_kw())
        assert ref_eos != ref, name   # the check can fail
        for drafts in (ref, ref_eos, half):
            assert gen_module._generate(model, tok, texts, drafts=drafts, **_kw())[0] == ref_eos, name
        monkeypatch.undo()


def test_a_right_draft_needs_no_decode_step(tiny_models, monkeypatch):
    """verify on the model's own tokens: every row done in one pass, the tokens unchanged, no
    continuation; a draft wrong at token 3 keeps 3 tokens and the model's own fourth."""
    lm = tiny_models["qwen2"]
    model, tok = lm.model, lm.tokenizer
    rows = sorted(chat.encode_all(tok, format_chat(tok, TEXTS)), key=len)
    n = 10
    own = [model.generate(input_ids=torch.tensor([r]), attention_mask=torch.ones(1, len(r), dtype=torch.long),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=tok.pad_token_id)[0, len(r):].tolist() for r in rows]
    eos = set()   # no end token: every row runs to the budget
    prefix = SharedPrefix.compute(model, rows[0][:shared_prefix_len(rows)], "cpu")
    kw = dict(prefix=prefix, pad_id=tok.pad_token_id, device="cpu", window=None, eos=eos, max_new_tokens=n,
              batch_size=2)
    ver = draft.verify(model, rows, own, **kw)
    assert ver.tokens == own and all(ver.done)
    wrong = [d[:3] + [(d[3] + 1) % len(tok)] + d[4:] for d in own]
    monkeypatch.setattr(draft, "MIN_DONE", 0.0)
    ver = draft.verify(model, rows, wrong, **kw)
    assert [t[:3] for t in ver.tokens] == [d[:3] for d in own]
    assert [t[3] for t in ver.tokens] == [d[3] for d in own] and not any(ver.done)
    monkeypatch.undo()   # poor drafts: verification stops after two batches of two rows
    assert len(draft.verify(model, rows, wrong, **kw).tokens) == 4 < len(rows)
    with pytest.raises(ValueError, match="drafts"):
        draft.verify(model, rows, own[:-1], **kw)


def test_drafts_save_decode_steps(tiny_models, monkeypatch):
    """Through _generate: the model's own responses as drafts leave at most the rows whose text
    does not re-encode to the same tokens to decode, and no more steps than without drafts."""
    lm = tiny_models["llama"]
    model, tok = lm.model, lm.tokenizer
    texts = format_chat(tok, TEXTS)
    calls = _count_decodes(monkeypatch)
    ref, _ = gen_module._generate(model, tok, texts, **_kw())
    plain = list(calls)
    calls.clear()
    assert gen_module._generate(model, tok, texts, drafts=ref, **_kw())[0] == ref
    assert sum(calls) <= sum(plain) and len(calls) <= len(plain)
