"""mlsafe.evaluate.kl: first-token KL(p_base || p_edited) on harmless prompts."""

from __future__ import annotations

import math

import pytest
import torch

from mlsafe import arch, tiny
from mlsafe.edit import SparseEdit, fingerprint
from mlsafe.evaluate.kl import first_token_kl, first_token_kl_per_prompt
from mlsafe.prompts import Prompt

TEXTS = [("en", "The cat sleeps on the mat."), ("th", "แมวนอนบนเสื่อ"), ("en", "Answer: 42"),
         ("th", "นี่คือคำตอบสั้น ๆ")]
PROMPTS = [Prompt(f"p{i}-{lang}", lang, text, False, f"p{i}") for i, (lang, text) in enumerate(TEXTS)]


def qwen():
    tok = tiny.build_tokenizer("qwen2")
    return tiny.build_model("qwen2", tok, seed=0).eval(), tok


def edit_of(model, scale: float) -> SparseEdit:
    g = torch.Generator().manual_seed(0)
    d_in, m = arch.d_model(model), 6
    factors = {mod: (torch.randn(d_in, 2, generator=g) * scale, torch.randn(2, m, generator=g))
               for mod in ("gate", "up")}
    return SparseEdit(layer=0, modules=("gate", "up"), neurons=torch.arange(m), factors=factors, hparams={},
                      base_fingerprint=fingerprint(model, 0), model_type="qwen2")


def test_zero_edit_gives_zero_and_a_real_edit_more():
    model, tok = qwen()
    assert first_token_kl(model, tok, PROMPTS, edit_of(model, 0.0)) == {"en": 0.0, "th": 0.0}
    kl = first_token_kl(model, tok, PROMPTS, edit_of(model, 3.0))
    assert set(kl) == {"en", "th"} and all(v > 1e-6 for v in kl.values())


def test_equals_a_hand_computation_and_does_not_depend_on_batching():
    model, tok = qwen()
    edit = edit_of(model, 3.0)
    batched = first_token_kl_per_prompt(model, tok, PROMPTS, edit, batch_size=4)
    for i, p in enumerate(PROMPTS):
        text = tok.apply_chat_template([{"role": "user", "content": p.text}], tokenize=False,
                                       add_generation_prompt=True)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            base = model(input_ids=ids).logits[0, -1].double()
            with edit.applied(model):
                edited = model(input_ids=ids).logits[0, -1].double()
        pb, pe = torch.softmax(base, -1).tolist(), torch.softmax(edited, -1).tolist()
        hand = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pb, pe) if a > 0)
        assert math.isclose(float(batched[i]), hand, rel_tol=1e-4, abs_tol=1e-9)
    means = first_token_kl(model, tok, PROMPTS, edit, batch_size=1)
    assert math.isclose(means["en"], float(batched[[0, 2]].mean()), rel_tol=1e-4)
    assert math.isclose(means["th"], float(batched[[1, 3]].mean()), rel_tol=1e-4)


def test_groups_of_batches_give_the_per_batch_values(monkeypatch):
    """The edit applied once per group of batches (issue 17) changes no value: groups of one
    batch (apply per batch, the old way) and one group of all batches agree exactly."""
    from mlsafe.evaluate import kl as kl_mod

    model, tok = qwen()
    edit = edit_of(model, 0.5)
    whole = first_token_kl_per_prompt(model, tok, PROMPTS, edit, batch_size=1)
    monkeypatch.setattr(kl_mod, "GROUP_BATCHES", 1)
    assert torch.equal(first_token_kl_per_prompt(model, tok, PROMPTS, edit, batch_size=1), whole)
    assert bool((whole > 0).all())


def test_edited_logits_from_generation_give_the_same_kl():
    """Issue 17: the edited side read from the edited model's harmless generation (first-token
    logits, generate_with_first_logits) gives the two-pass KL to float noise, in input order."""
    from mlsafe.evaluate.generate import generate, generate_with_first_logits
    from mlsafe.evaluate.kl import first_token_kl_given

    model, tok = qwen()
    edit = edit_of(model, 3.0)
    two_pass = first_token_kl_per_prompt(model, tok, PROMPTS, edit, batch_size=2)
    texts = [p.text for p in PROMPTS]
    with edit.applied(model):
        responses, logits = generate_with_first_logits(model, tok, texts, max_new_tokens=3, batch_size=3,
                                                       progress=False, sort_by_length=True)
        assert responses == generate(model, tok, texts, max_new_tokens=3, batch_size=3, progress=False,
                                     sort_by_length=True)
    assert logits.shape == (len(PROMPTS), model.config.vocab_size) and logits.dtype == torch.float32
    given = first_token_kl_given(model, tok, PROMPTS, logits, batch_size=2)
    assert bool((two_pass > 1e-6).all()) and torch.allclose(given, two_pass, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(given, given.flip(0), rtol=1e-4)
    with pytest.raises(ValueError, match="rows of edited logits"):
        first_token_kl_given(model, tok, PROMPTS[:2], logits)
    # both sides from generation: no pass at all, the same KL
    _, base = generate_with_first_logits(model, tok, texts, max_new_tokens=3, batch_size=3, progress=False,
                                         sort_by_length=True)
    no_pass = first_token_kl_given(None, None, PROMPTS, logits, base_logits=base)
    assert torch.allclose(no_pass, two_pass, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="rows of base logits"):
        first_token_kl_given(None, None, PROMPTS, logits, base_logits=base[:2])
