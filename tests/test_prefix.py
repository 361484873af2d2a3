"""The shared-prefix cache, the plain greedy loop and token-budget batches (issue 17): the fast
paths give what the plain left-padded forward and `model.generate` give."""

from __future__ import annotations

import importlib

import pytest
import torch

from mlsafe.evaluate import greedy, prefix
from mlsafe.evaluate.generate import format_chat, generate_scored, token_batches
from mlsafe.evaluate.margin import next_token_logprobs

gen_module = importlib.import_module("mlsafe.evaluate.generate")

TEXTS = ["hello there how are you", "a b c", "the cat sat on the mat and more words here to make it long",
         "x", "what is two plus two"]


# ----------------------------------------------------------------------------- pure functions
def test_shared_prefix_len_stops_one_short_of_the_shortest_row():
    assert prefix.shared_prefix_len([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]], minimum=1) == 5
    assert prefix.shared_prefix_len([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 9]], minimum=1) == 4  # row 0 keeps one
    assert prefix.shared_prefix_len([[1, 2, 9], [1, 2, 8]], minimum=4) == 0                # under the minimum
    assert prefix.shared_prefix_len([[1, 2, 3, 4, 5, 6]], minimum=1) == 0                  # one row: nothing shared


def test_layout_puts_padding_between_prefix_and_rest():
    enc = prefix.layout(2, [[7, 8, 1], [7, 8, 1, 2, 3]], pad_id=0, device="cpu")
    assert enc["input_ids"].tolist() == [[7, 8, 0, 0, 1], [7, 8, 1, 2, 3]]
    assert enc["attention_mask"].tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert prefix.positions(enc["attention_mask"]).tolist() == [[0, 1, 0, 0, 2], [0, 1, 2, 3, 4]]


def test_token_batches_respect_rows_and_budget():
    rows = [[0] * n for n in (2, 2, 3, 3, 10, 20)]
    assert [len(b) for b in token_batches(rows, 4)] == [4, 2]
    # budget 12 with 2 new tokens: (2 rows x 5) fits, a third of 5 does not; 12 alone stays alone
    assert [len(b) for b in token_batches(rows, 4, max_tokens=12, extra=2)] == [2, 2, 1, 1]
    assert sum(map(len, token_batches(rows, 3, max_tokens=1))) == len(rows)  # a row alone may pass it
    with pytest.raises(ValueError, match="batch_size"):
        list(token_batches(rows, 0))


def test_plain_greedy_reads_the_generation_config():
    class M:
        class generation_config:
            repetition_penalty = 1.0
            no_repeat_ngram_size = 0
    assert greedy.plain_greedy(M)
    M.generation_config.repetition_penalty = 1.1
    assert not greedy.plain_greedy(M)


def test_sliding_window_only_where_layers_use_it():
    from transformers import Gemma3TextConfig, Qwen2Config

    class M:
        config = Qwen2Config(use_sliding_window=False, sliding_window=4096)
    assert prefix.sliding_window(M) is None
    M.config = Gemma3TextConfig(sliding_window=16, num_hidden_layers=2, layer_types=["sliding_attention",
                                                                                       "full_attention"])
    assert prefix.sliding_window(M) == 16
    assert prefix.fits(16, 4, [[0] * 10], new_tokens=6) and not prefix.fits(16, 4, [[0] * 10], new_tokens=7)


# ----------------------------------------------------------------------------- tiny models
def test_margin_logprobs_equal_with_and_without_the_shared_prefix(fast_path_models):
    for name, model, tok in fast_path_models:
        ids = list(range(40))
        shared = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
        plain = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2, share_prefix=False)
        alone = torch.cat([next_token_logprobs(model, tok, [t], ids, share_prefix=False) for t in TEXTS])
        assert torch.allclose(shared, plain, atol=1e-5), name
        assert torch.allclose(shared, alone, atol=1e-5), name
        assert not torch.allclose(shared[0], shared[1], atol=1e-3), name  # rows differ: the check can fail


@pytest.mark.parametrize("share", [True, False])
def test_greedy_loop_gives_generates_tokens(fast_path_models, monkeypatch, share):
    """The plain loop against model.generate, with and without the shared prefix, including
    rows that end early (an end token the model does produce)."""
    from mlsafe import chat

    for name, model, tok in fast_path_models:
        texts = format_chat(tok, TEXTS)
        first = lambda x: torch.log_softmax(x.double(), -1)  # noqa: E731
        kw = dict(max_new_tokens=12, batch_size=3, progress=False, device=None, desc="", sort_by_length=True,
                  stats=None, first=first)
        ref, ref_first = gen_module._generate(model, tok, texts, share_prefix=False, greedy_loop=False, **kw)
        got, got_first = gen_module._generate(model, tok, texts, share_prefix=share, **kw)
        assert got == ref, name
        assert torch.allclose(got_first, ref_first, atol=1e-5), name
        # make an end token of one the model emits mid-answer, so some rows stop early
        one = torch.tensor([chat.encode_all(tok, texts[:1])[0]])
        mid = int(model.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=4,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0, -1])
        monkeypatch.setattr(model.generation_config, "eos_token_id", [model.generation_config.eos_token_id, mid])
        ref_eos, _ = gen_module._generate(model, tok, texts, share_prefix=False, greedy_loop=False, **kw)
        got_eos, _ = gen_module._generate(model, tok, texts, share_prefix=share, **kw)
        monkeypatch.undo()
        assert got_eos == ref_eos and got_eos != got, name


def test_generate_scored_batches_by_tokens(tiny_models, monkeypatch):
    lm = tiny_models["qwen2"]
    sizes = []

    def recording(*args, **kw):
        for batch in token_batches(*args, **kw):
            sizes.append(len(batch))
            yield batch
    monkeypatch.setattr(gen_module, "token_batches", recording)
    ids = list(range(30))
    wide, lp_wide = generate_scored(lm.model, lm.tokenizer, TEXTS, ids, max_new_tokens=6, batch_size=8,
                                    progress=False, sort_by_length=True)
    narrow, lp_narrow = generate_scored(lm.model, lm.tokenizer, TEXTS, ids, max_new_tokens=6, batch_size=8,
                                        progress=False, sort_by_length=True, batch_tokens=60)
    assert sizes[0] == len(TEXTS) and max(sizes[1:]) < len(TEXTS)   # one wide batch, then narrow ones
    assert wide == narrow
    assert torch.allclose(lp_wide, lp_narrow, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_merged_decoding_gives_the_same_tokens(fast_path_models, monkeypatch, share):
    """Batches prefilled one by one and decoded as one (decode_rows), finished rows dropped
    from the batch, give each batch's own tokens and first logits, with rows that end early;
    sliding-window models never merge."""
    from mlsafe import chat

    merged = []
    real_merged = greedy.merged

    def recording(parts):
        out = real_merged(parts)
        if len(out) < len(parts):
            merged.append([p.mask.shape for p in parts])
        return out
    monkeypatch.setattr(gen_module, "merged", recording)
    monkeypatch.setattr(gen_module, "WIDTH_SLACK", 100.0)   # the test prompts differ widely in length
    monkeypatch.setattr(greedy, "COMPACT_MIN", 1)            # finished rows leave the batch at once
    monkeypatch.setattr(greedy, "COMPACT_FRACTION", 0.0)
    compacted = []
    for name, model, tok in fast_path_models:
        texts = format_chat(tok, TEXTS)
        kw = dict(max_new_tokens=12, batch_size=2, progress=False, device=None, desc="", sort_by_length=True,
                  stats=None, first=lambda x: x.clone(), share_prefix=share)
        one = torch.tensor([chat.encode_all(tok, texts[:1])[0]])
        mid = int(model.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=4,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0, -1])
        for eos in ([], [mid]):
            with monkeypatch.context() as m:
                m.setattr(model.generation_config, "eos_token_id", [model.generation_config.eos_token_id, *eos])
                ref, ref_first = gen_module._generate(model, tok, texts, **kw)
                merged.clear()
                fed = []
                handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: fed.append(a[0].shape))
                try:
                    got, got_first = gen_module._generate(model, tok, texts, decode_rows=5, **kw)
                finally:
                    handle.remove()
            assert got == ref, (name, eos)
            steps = [shape[0] for shape in fed if shape[1] == 1]   # the decode steps' rows
            compacted.append(bool(steps) and min(steps) < len(texts))
            assert torch.allclose(got_first, ref_first, atol=1e-5), name
            if prefix.sliding_window(model) is None:
                assert merged and len(merged[0]) == 3 and len({s[1] for s in merged[0]}) > 1, name  # widths differ
            else:
                assert not merged, name
    assert any(compacted)   # rows that ended did leave the batch
