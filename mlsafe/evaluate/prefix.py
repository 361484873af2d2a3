"""Shared-prefix key/value cache: the chat template's opening is computed once per call.

Every evaluated prompt starts with the same tokens (Qwen2.5's template: its default system
prompt and the user header, 24 of a MultiJail prompt's ~70 tokens), and a prompt forward
pass is most of a margin pass's and half of a generation's time on a CPU (issue 17). This
module runs those shared tokens once (batch 1), copies their keys and values to every row
of a batch, and feeds each row the rest of its tokens laid out as

    [shared prefix][padding][rest of the row]

with an attention mask of 1 on the prefix and the row, 0 on the padding, and position ids
that count real tokens only (prefix 0..p-1, the row's tokens from p). Attention, rotary or
learned position embeddings and the causal mask then see exactly what they see for the
left-padded row [padding][prefix][rest]: the logits agree up to the last bits of a
different matmul shape (tests/test_prefix.py). The cache is computed under the model's
current weights, so it is valid only for the call that made it (an edit at layer L
changes the prefix's keys and values above L).

`share_prefix=False` at the callers gives the plain left-padded path.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from mlsafe import chat

#: The fewest shared tokens worth a cache (below this the plain path is used).
MIN_SHARED = 4


def shared_prefix_len(rows: Sequence[Sequence[int]], minimum: int = MIN_SHARED) -> int:
    """Length of the longest common prefix of the rows, kept one token short of the shortest
    row (every row must feed at least one token); 0 if under `minimum` or fewer than 2 rows."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    k = 0
    while k < n and all(r[k] == first[k] for r in rows):
        k += 1
    return k if k >= minimum else 0


def cache_kwarg(model) -> str:
    """The forward keyword of the key/value cache ("cache" from transformers 5, else
    "past_key_values")."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class SharedPrefix:
    """The keys and values of `ids` (one row) under the model's weights at construction."""
    ids: list[int]
    cache: object
    kwarg: str

    @classmethod
    @torch.no_grad()
    def compute(cls, model, ids: Sequence[int], device) -> "SharedPrefix":
        from transformers import DynamicCache

        kwarg = cache_kwarg(model)
        cache = DynamicCache(config=model.config)
        inp = torch.tensor([list(ids)], dtype=torch.long, device=device)
        model(input_ids=inp, attention_mask=torch.ones_like(inp), position_ids=torch.arange(len(ids), device=device)[None],
              use_cache=True, **{kwarg: cache})
        return cls(list(ids), cache, kwarg)

    def expanded(self, batch: int) -> object:
        """A fresh copy of the cache with `batch` identical rows (callers append to it)."""
        cache = copy.deepcopy(self.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache


def sliding_window(model) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 3: 512), else None.
    Windows count cache slots, padding included, so a batch laid out with padding in the
    middle sees the same tokens only if prefix + padding + rest + new tokens fit the window;
    `fits` decides per batch."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or getattr(config, "use_sliding_window", True) is False \
            or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def fits(window: int | None, n_prefix: int, rows: Sequence[Sequence[int]], new_tokens: int = 0) -> bool:
    """Whether a batch laid out as prefix, padding, rest (and `new_tokens` more) fits `window`."""
    return window is None or n_prefix + max(len(r) - n_prefix for r in rows) + new_tokens <= window


def layout(n_prefix: int, rows: Sequence[Sequence[int]], pad_id: int, device) -> dict:
    """input_ids and attention_mask [B, n_prefix + T] of rows laid out as prefix, padding, rest
    (module docstring); each row's first n_prefix tokens are the shared prefix."""
    rests = [list(r[n_prefix:]) for r in rows]
    T = max(len(r) for r in rests)
    ids = torch.full((len(rows), n_prefix + T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, rest) in enumerate(zip(rows, rests)):
        ids[i, :n_prefix] = torch.tensor(list(row[:n_prefix]), dtype=torch.long)
        mask[i, :n_prefix] = 1
        ids[i, n_prefix + T - len(rest):] = torch.tensor(rest, dtype=torch.long)
        mask[i, n_prefix + T - len(rest):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def batch_inputs(prefix: "SharedPrefix | None", rows: Sequence[Sequence[int]], *, pad_id: int, device,
                 window: int | None, new_tokens: int = 0) -> tuple[dict, int, object | None]:
    """One batch's inputs: (input_ids and attention_mask over the whole layout, the number of
    leading tokens already in the cache, a fresh copy of the prefix's cache or None). The
    prefix layout where `prefix` is given and the batch fits `window`; plain left padding
    (nothing cached) otherwise."""
    if prefix is not None and fits(window, len(prefix.ids), rows, new_tokens):
        return (layout(len(prefix.ids), rows, pad_id, device), len(prefix.ids), prefix.expanded(len(rows)))
    return {k: v.to(device) for k, v in chat.left_pad(rows, pad_id).items()}, 0, None


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (padding gets 0)."""
    return ((attention_mask.long().cumsum(-1) - 1).clamp(min=0)) * attention_mask.long()


def keep_kwargs(model, n: int) -> dict:
    """`logits_to_keep=n` where the model takes it: the LM head then runs on the last n positions
    only (a 262k-word vocabulary makes the full [batch, length, vocab] logits the dominant cost);
    callers slice `[:, -n:]` for models without it."""
    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def last_only_kwargs(model) -> dict:
    """keep_kwargs(model, 1): logits at the last position only."""
    return keep_kwargs(model, 1)


def token_batches(rows: Sequence[Sequence[int]], batch_size: int, max_tokens: int | None = None,
                  extra: int = 0) -> Iterator[list]:
    """Consecutive batches of at most `batch_size` rows that also keep rows x (longest row +
    `extra`) within `max_tokens` (None: no such limit; a row alone may pass it). With rows
    sorted by length, short prompts go in wide batches (a decode step costs little more for
    more rows on a CPU) and long ones in narrow ones (issue 17)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk: list = []
    longest = 0
    for row in rows:
        wide = max(longest, len(row))
        if chunk and (len(chunk) == batch_size
                      or (max_tokens is not None and (len(chunk) + 1) * (wide + extra) > max_tokens)):
            yield chunk
            chunk, wide = [], len(row)
        chunk.append(row)
        longest = wide
    if chunk:
        yield chunk


def length_order(rows: Sequence[Sequence[int]]) -> list[int]:
    """Row indices by token length (stable): batches of similar length pad least."""
    return sorted(range(len(rows)), key=lambda i: len(rows[i]))


@torch.no_grad()
def last_logits(model, rows: Sequence[Sequence[int]], *, pad_id: int, batch_size: int, device,
                share_prefix: bool = True, sort_by_length: bool = True, n_shared: int | None = None
                ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Logits at each row's last position (the generation position of a chat prompt), batch by
    batch: yields (row indices, logits [B, vocab]) in the model's dtype. Rows go by length
    when `sort_by_length` (callers put them back with the indices); the shared prefix of all
    rows is computed once when `share_prefix` (module docstring; batches that would not fit a
    sliding window go the plain way). `n_shared`: the prefix length to use (a caller that splits
    one set of rows into several calls passes shared_prefix_len of all of them, so every call
    computes alike); default: the rows' own."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extra = last_only_kwargs(model)
    order = length_order(rows) if sort_by_length else list(range(len(rows)))
    n = (shared_prefix_len(rows) if n_shared is None else n_shared) if share_prefix else 0
    prefix = SharedPrefix.compute(model, rows[0][:n], device) if n else None
    window = sliding_window(model)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        enc, skip, cache = batch_inputs(prefix, [rows[i] for i in chunk], pad_id=pad_id, device=device,
                                        window=window)
        kw = {} if cache is None else {"use_cache": True, prefix.kwarg: cache}
        out = model(input_ids=enc["input_ids"][:, skip:], attention_mask=enc["attention_mask"],
                    position_ids=positions(enc["attention_mask"])[:, skip:], **kw, **extra)
        yield chunk, out.logits[:, -1, :]
