"""A plain greedy decoding loop: what `model.generate(do_sample=False)` does when the model's
generation config changes no logit, without its per-step overhead.

On 2 CPU cores a decode step of the 0.5B Qwen at batch 32 takes ~350 ms in the model and
~100 ms more inside `generate` (logits processors, stopping criteria, a float32 copy of every
step's logits when the first step's are asked for); this loop keeps only the first step's
logits and stops when every row has ended (issue 17). Semantics are generate's: the argmax
of the float32 logits, rows that have emitted an end token continue with the pad token, the
loop ends at `max_new_tokens` or when all rows have ended. `plain_greedy` says when the loop
may stand in for generate (no repetition penalty, suppressed or forced tokens, minimum
length, ...); the callers fall back to generate otherwise. The loop is split in `prefill`
(the prompt pass) and `steps` (the decode steps), so that several prefilled batches can be
joined by `merged` and decoded as one wide batch (generate._Decoder). tests/test_prefix.py
checks both give generate's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mlsafe.evaluate.prefix import last_only_kwargs

#: Generation-config fields that change greedy logits, with the values that do not.
NEUTRAL: dict[str, tuple] = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "forced_decoder_ids": (None,),
    "sequence_bias": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0),
    "watermarking_config": (None,), "stop_strings": (None,), "renormalize_logits": (None, False),
    "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "max_time": (None,),
}


def plain_greedy(model) -> bool:
    """Whether the model's generation config leaves greedy decoding to a plain argmax."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, k, None) in ok for k, ok in NEUTRAL.items())


def end_tokens(model) -> set[int]:
    """The generation config's end-of-sequence token ids."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def end_token(model) -> int | None:
    """The generation config's first end-of-sequence token id (what a chat model emits at the end
    of its turn where the config lists several), or None."""
    eos = model.generation_config.eos_token_id
    return (eos[0] if eos else None) if isinstance(eos, (list, tuple)) else eos


@dataclass
class Prefilled:
    """A batch after its prompt pass: the cache, the attention mask over it [B, L], each row's
    last position [B, 1], the next-token logits (float32 [B, vocab]) and how many leading
    slots (a shared prefix) were already cached before the pass."""
    cache: object
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor
    n_prefix: int


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
            cache, cache_kwarg: str) -> Prefilled:
    """The prompt pass of a batch. input_ids / position_ids: the tokens still to feed (the whole
    prompt, or what follows a prefix already in `cache`); attention_mask covers the cache and
    those tokens."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                **{cache_kwarg: cache}, **last_only_kwargs(model))
    return Prefilled(cache, attention_mask, position_ids[:, -1:], out.logits[:, -1, :].float(),
                     attention_mask.shape[1] - input_ids.shape[1])


def _mergeable(cache) -> bool:
    """Every layer a plain DynamicLayer (sliding-window layers count slots, so padding added by
    a merge would shift their window)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def merged(parts: Sequence[Prefilled]) -> list[Prefilled]:
    """The rows of several prefilled batches as one batch (a list of one), or the parts as they
    are where they cannot be joined (other cache layers, different prefix lengths). Each part
    laid out as [prefix][padding][rest] (or left padded, no prefix) gets masked empty slots
    after its prefix up to the longest part's length, so every row attends to what it
    attended to before. The parts' caches are consumed."""
    n_prefix = parts[0].n_prefix if parts else 0
    if len(parts) < 2 or any(p.n_prefix != n_prefix or not _mergeable(p.cache) for p in parts):
        return list(parts)
    width = max(p.mask.shape[1] for p in parts)

    def widened(x: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
        if not extra:
            return x
        shape = list(x.shape)
        shape[dim] = extra
        return torch.cat([x.narrow(dim, 0, n_prefix), x.new_zeros(shape),
                          x.narrow(dim, n_prefix, x.shape[dim] - n_prefix)], dim=dim)

    extras = [width - p.mask.shape[1] for p in parts]
    cache = parts[0].cache
    for k, layer in enumerate(cache.layers):
        layer.keys = torch.cat([widened(p.cache.layers[k].keys, e, 2) for p, e in zip(parts, extras)])
        layer.values = torch.cat([widened(p.cache.layers[k].values, e, 2) for p, e in zip(parts, extras)])
        for p in parts[1:]:
            p.cache.layers[k].keys = p.cache.layers[k].values = None
    return [Prefilled(cache, torch.cat([widened(p.mask, e, 1) for p, e in zip(parts, extras)]),
                      torch.cat([p.pos for p in parts]), torch.cat([p.logits for p in parts]), n_prefix)]


#: With `compact`, finished rows leave the batch once this fraction of it (and at least
#: COMPACT_MIN rows) has ended: a decode step costs per row still in it.
COMPACT_FRACTION, COMPACT_MIN = 0.25, 4


@torch.no_grad()
def steps(model, state: Prefilled, *, cache_kwarg: str, max_new_tokens: int, eos: Sequence[int], pad_id: int,
          compact: bool = False) -> torch.Tensor:
    """Greedy tokens [B, <= max_new_tokens] from a prefilled batch (its cache is extended).
    `compact`: rows that have ended are dropped from the batch (cache, mask, positions) once
    COMPACT_FRACTION of it has ended; their remaining tokens are the pad token, as without."""
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=state.logits.device)
    logits, cache, mask, pos = state.logits, state.cache, state.mask, state.pos
    n = logits.shape[0]
    rows = torch.arange(n, device=logits.device)          # the batch rows still decoded
    out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    done = torch.zeros(n, dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))
        out[rows, step] = nxt
        done |= torch.isin(nxt, eos_t)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        n_done = int(done.sum())
        if compact and n_done >= max(COMPACT_MIN, COMPACT_FRACTION * len(rows)):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, mask, pos, done = rows[keep], nxt[keep], mask[keep], pos[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                       **{cache_kwarg: cache}).logits[:, -1, :].float()
    return out[:, :step + 1]
