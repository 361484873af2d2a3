"""First-token KL: how much an edit moves the next-token distribution on harmless prompts.

Per prompt, at the generation position (the next token after the chat template's
assistant header, as for the refusal margin):

    KL(p_base || p_edited) = sum_t p_base(t) (log p_base(t) - log p_edited(t)),

in float64 over the whole vocabulary; reported as the mean per language. A utility
check that needs no generation and no answer key: 0 for an edit that changes nothing,
small for one that leaves harmless behaviour alone (the gamma term of eq. 4-8).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mlsafe import chat
from mlsafe.evaluate.generate import format_chat, left_padded, model_device, prompt_limit
from mlsafe.evaluate.prefix import last_logits, length_order, shared_prefix_len
from mlsafe.prompts import Prompt


#: Batches whose unedited logits are held at once (float32 [prompts, vocab]: about 150 MB for
#: 256 prompts of a 150k-token vocabulary), so the edit is applied once per group, not per batch.
GROUP_BATCHES = 16


@torch.no_grad()
def first_token_kl_per_prompt(model, tokenizer, prompts: Sequence[Prompt], edit, *, batch_size: int = 16,
                              device=None) -> torch.Tensor:
    """KL(p_base || p_edited) of each prompt (module docstring), float64 [N] in input order.

    Each batch runs once unedited and once with `edit` applied (reverted bit-exactly after),
    with the same padding, so an edit that changes no weight gives exactly 0. The unedited
    logits of GROUP_BATCHES batches are kept, then the edit is applied once for all of them
    (applying checks the model's fingerprint: seconds on a real model). Prompts are encoded
    as plain text (:mod:`mlsafe.chat`), truncated from the end to the model's context.
    """
    device = device or model_device(model)
    ids = chat.encode_all(tokenizer, format_chat(tokenizer, [p.text for p in prompts]),
                          max_length=prompt_limit(model, tokenizer))
    order = length_order(ids)
    out = torch.zeros(len(ids), dtype=torch.float64)
    group = GROUP_BATCHES * batch_size
    with left_padded(tokenizer):
        kw = dict(pad_id=tokenizer.pad_token_id, batch_size=batch_size, device=device, sort_by_length=False,
                  n_shared=shared_prefix_len(ids))  # every group computes alike
        for g in range(0, len(order), group):
            rows = order[g:g + group]          # already by length: both passes batch them alike
            base = [logits for _, logits in last_logits(model, [ids[i] for i in rows], **kw)]
            with edit.applied(model):
                edited = [logits for _, logits in last_logits(model, [ids[i] for i in rows], **kw)]
            out[rows] = torch.cat([_kl_rows(b, e) for b, e in zip(base, edited)])
    return out


def _kl_rows(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """KL(softmax(base) || softmax(edited)) per row of two logit tensors [B, vocab], float64 [B]."""
    lb, le = torch.log_softmax(base.double(), dim=-1), torch.log_softmax(edited.double(), dim=-1)
    p = lb.exp()  # terms with p_base(t) = 0 contribute 0 (also where both are -inf)
    terms = torch.where(p > 0, p * (lb - le), torch.zeros_like(p))
    return terms.sum(-1).clamp(min=0.0).cpu()  # clamp: rounding only


@torch.no_grad()
def first_token_kl_given(model, tokenizer, prompts: Sequence[Prompt], edited_logits: torch.Tensor, *,
                         batch_size: int = 16, device=None, base_logits: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_base || p_edited) per prompt where the edited logits at the generation position are
    already known (float32 [N, vocab], e.g. from the edited model's harmless generation:
    mlsafe.evaluate.generate.generate_with_first_logits); one unedited pass, or none where the
    unedited model's are known too (`base_logits`, e.g. from its own generation). Equal to
    first_token_kl_per_prompt up to the last bits of a different batch composition."""
    for name, rows in (("edited", edited_logits), ("base", base_logits)):
        if rows is not None and rows.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {rows.shape[0]} rows of {name} logits")
    if base_logits is not None:
        return _kl_rows(base_logits, edited_logits)
    device = device or model_device(model)
    ids = chat.encode_all(tokenizer, format_chat(tokenizer, [p.text for p in prompts]),
                          max_length=prompt_limit(model, tokenizer))
    out = torch.zeros(len(ids), dtype=torch.float64)
    with left_padded(tokenizer):
        for rows, base in last_logits(model, ids, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                                      device=device):
            out[rows] = _kl_rows(base, edited_logits[rows])
    return out


def first_token_kl(model, tokenizer, prompts: Sequence[Prompt], edit, *, batch_size: int = 16,
                   device=None) -> dict[str, float]:
    """Mean first-token KL(p_base || p_edited) per language of `prompts` (module docstring)."""
    from mlsafe.evaluate.margin import mean_by_lang

    if not prompts:
        raise ValueError("first_token_kl needs at least one prompt")
    kl = first_token_kl_per_prompt(model, tokenizer, prompts, edit, batch_size=batch_size, device=device)
    return mean_by_lang(prompts, kl)
