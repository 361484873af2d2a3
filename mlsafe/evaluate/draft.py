"""Draft-verified greedy decoding: an edited model's greedy responses, checked against a draft.

An edit changes a few neurons of one layer, so most of the edited model's greedy responses
equal the unedited model's (the paper preset's run on Qwen2.5-Coder-0.5B: 654 of 680 harmful
responses the same in their first 80 characters). Decoding them again costs one forward
pass per token, and on a CPU a decode step of 64 rows runs the matmuls at about half the
speed of a prompt pass (the weights are read once per step; issue 17). Here each row's
draft (the unedited response, re-encoded) is appended to its prompt and the edited model
reads prompt and draft in ONE forward pass. With g_i its argmax after the prompt and the
first i draft tokens, the row keeps the draft's tokens while g_i equals them, then g_i
itself (the first disagreement, or the token after a fully accepted draft): by
construction the greedy tokens of the edited model, whatever the draft. Rows that end
there (an end token, or `max_new_tokens` reached) are done; the others continue by plain
greedy decoding from prompt + kept tokens (the caller's decoder). A wrong draft costs time,
never a different answer; the logits agree with step-by-step decoding up to the last bits
of a different matmul shape (tests/test_draft.py).

A draft that ended before `max_new_tokens` gets the generation config's first end token
appended (its text lost the end token when decoded); where the model ends with another
end token, that token is g_i and the row ends all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mlsafe.evaluate.prefix import SharedPrefix, batch_inputs, keep_kwargs, positions, token_batches

#: Bytes of verification logits (rows x kept positions x vocabulary, float32) one batch may
#: hold: 13 rows of 33 positions at Qwen's 152k vocabulary. Measured on Qwen2.5-Coder-0.5B,
#: 96 prompts, 2 threads: 13 rows 31-34 s, 26 rows 35 s, 53 rows 37 s, 107 rows 40 s.
LOGIT_BYTES = 256 * 2**20

#: Verification stops after two batches that finished fewer than this share of their rows:
#: a row the draft does not finish costs its verification and its decoding (the paper
#: preset's edit, 95 % of rows finished: 0.84x the time of plain decoding; the best preset's,
#: 37 %: 1.36x; 192 prompts of Qwen2.5-Coder-0.5B).
MIN_DONE = 0.8


def draft_ids(tokenizer, texts: Sequence[str], *, end_id: int | None, max_new_tokens: int) -> list[list[int]]:
    """Token ids of draft responses (decoded text without its end token): at most
    `max_new_tokens`, with `end_id` appended to a draft shorter than that."""
    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_new_tokens]
        if len(ids) < max_new_tokens and end_id is not None:
            ids.append(end_id)
        out.append(ids)
    return out


def accept(draft: Sequence[int], greedy: Sequence[int], *, eos: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """(the kept tokens, whether the row is done) from a draft and the argmax after each of
    its prefixes (`greedy`, len(draft) + 1 tokens): draft tokens while they equal the argmax,
    then the argmax; done at an end token or at `max_new_tokens` tokens."""
    kept: list[int] = []
    for i in range(len(draft) + 1):
        tok = int(greedy[i])
        kept.append(tok)
        if tok in eos or len(kept) == max_new_tokens:
            return kept, True
        if i == len(draft) or tok != draft[i]:
            return kept, False
    raise AssertionError("unreachable")  # pragma: no cover


def rows_per_batch(n_keep: int, vocab: int, budget: int | None = None) -> int:
    """Rows whose `n_keep` float32 logit vectors of `vocab` fit `budget` bytes (default
    LOGIT_BYTES; at least 1)."""
    return max(1, (LOGIT_BYTES if budget is None else budget) // max(1, n_keep * vocab * 4))


@dataclass
class Verified:
    """Per verified row (the first len(tokens) rows given): the kept tokens and whether the row
    is done; `first`: what the caller's `first` made of each batch's logits at the generation
    position."""

    tokens: list[list[int]]
    done: list[bool]
    first: list[torch.Tensor]


@torch.no_grad()
def verify(model, rows: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]], *, prefix: SharedPrefix | None,
           pad_id: int, device, window: int | None, eos: set[int], max_new_tokens: int, batch_size: int,
           batch_tokens: int | None = None, first: Callable[[torch.Tensor], torch.Tensor] | None = None,
           on_batch: Callable[[int], None] | None = None) -> Verified:
    """Read every row's prompt and draft in one forward pass (batches in the given order) and
    keep the greedy tokens the draft confirms (module docstring). `rows` are the prompts' ids
    (each starting with `prefix`'s tokens where given), `drafts` the drafts' ids; `first`
    (optional) maps a batch's float32 logits at the generation position [B, vocab] to what
    Verified.first keeps. Verification stops early where two batches finish fewer than
    MIN_DONE of their rows (the drafts are poor; the caller decodes the rest)."""
    if len(rows) != len(drafts):
        raise ValueError(f"{len(rows)} prompts but {len(drafts)} drafts")
    vocab = model.get_output_embeddings().weight.shape[0]
    n_keep = max((len(d) for d in drafts), default=0) + 1
    full = [list(r) + list(d) for r, d in zip(rows, drafts)]
    width = min(batch_size, rows_per_batch(n_keep, vocab))
    out = Verified([], [], [])
    start = 0
    for chunk in token_batches(full, width, batch_tokens):
        idx = range(start, start + len(chunk))
        start += len(chunk)
        enc, skip, cache = batch_inputs(prefix, chunk, pad_id=pad_id, device=device, window=window)
        kw = {} if cache is None else {"use_cache": True, prefix.kwarg: cache}
        keep = max(len(drafts[i]) for i in idx) + 1
        logits = model(input_ids=enc["input_ids"][:, skip:], attention_mask=enc["attention_mask"],
                       position_ids=positions(enc["attention_mask"])[:, skip:], **kw,
                       **keep_kwargs(model, keep)).logits[:, -keep:]
        at_prompt = []
        for row, i in enumerate(idx):
            own = logits[row, keep - len(drafts[i]) - 1:].float()
            tokens, done = accept(drafts[i], own.argmax(-1).tolist(), eos=eos, max_new_tokens=max_new_tokens)
            out.tokens.append(tokens)
            out.done.append(done)
            at_prompt.append(own[0])
        if first is not None:
            out.first.append(first(torch.stack(at_prompt)))
        del logits, at_prompt
        if on_batch is not None:
            on_batch(len(chunk))
        if start < len(full) and start >= 2 * width and sum(out.done) < MIN_DONE * start:
            break
    return out
