"""Chat formatting and batched greedy generation (the paper's decoding is unreported; OPEN).

Greedy decoding with left padding: every prompt's last token sits at the same position,
so the batch is one forward pass per new token. Results are deterministic for a given
model, batch size and device (batching changes padding, which can change the last bits
of the logits; keep batch_size fixed when comparing before/after an edit).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from mlsafe import chat
from mlsafe.chat import ChatText
from mlsafe.evaluate.greedy import end_token, end_tokens, merged, plain_greedy, prefill, steps
from mlsafe.evaluate.draft import draft_ids, verify
from mlsafe.evaluate.prefix import (
    SharedPrefix, batch_inputs, cache_kwarg, length_order, positions, shared_prefix_len, sliding_window,
    token_batches,
)


def format_chat(tokenizer, user_texts: Sequence[str], *, system: str | None = None) -> list[ChatText]:
    """Each user text as a one-turn conversation, chat template applied, generation prompt added.

    Returns :class:`mlsafe.chat.ChatText` strings (equal to ``apply_chat_template(...,
    tokenize=False)``) that remember where the user text sits; :func:`encode` them, so that
    special-token strings inside a user text stay plain text and templates' own BOS /
    header tokens are not doubled.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat template; use an instruction-tuned "
            "model's tokenizer, or set tokenizer.chat_template (see mlsafe.tiny for examples)"
        )
    prefix = [{"role": "system", "content": system}] if system is not None else []
    return [chat.render(tokenizer, prefix + [{"role": "user", "content": text}], add_generation_prompt=True)
            for text in user_texts]


def model_device(model) -> torch.device:
    """Where inputs go: the model's (first) device; works with device_map='auto'."""
    return getattr(model, "device", None) or next(model.parameters()).device


@contextmanager
def left_padded(tokenizer) -> Iterator:
    """Temporarily pad on the left (with EOS as pad if the tokenizer has none); restores both."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def encode(tokenizer, texts: Sequence[str], device, *, max_length: int | None = None) -> dict:
    """Left-padded batch encoding of already-templated texts (call inside `left_padded`).

    Encoded by :func:`mlsafe.chat.encode_all`: content of :class:`~mlsafe.chat.ChatText` texts
    never becomes control tokens, and texts longer than `max_length` have their content
    truncated from the end (one warning).
    """
    return pad_ids(tokenizer, chat.encode_all(tokenizer, texts, max_length=max_length), device)


def pad_ids(tokenizer, rows: Sequence[Sequence[int]], device) -> dict:
    """input_ids and attention_mask of id lists, left-padded with the tokenizer's pad id."""
    return {k: v.to(device) for k, v in chat.left_pad(rows, tokenizer.pad_token_id).items()}


def prompt_limit(model, tokenizer, new_tokens: int = 0) -> int | None:
    """Tokens a prompt may take: the model's context (:func:`mlsafe.chat.context_limit`) minus
    the tokens still to be generated; None when the model states no limit."""
    limit = chat.context_limit(model, tokenizer)
    return None if limit is None else limit - new_tokens


def generate_from_chat(model, tokenizer, chat_texts: Sequence[str], *, max_new_tokens: int = 64,
                       batch_size: int = 16, batch_tokens: int | None = None, progress: bool = True, device=None,
                       desc: str = "generate", sort_by_length: bool = False,
                       stats: dict | None = None, drafts: Sequence[str] | None = None,
                       decode_rows: int | None = None) -> list[str]:
    """Greedy continuations of already-templated texts; decoded new tokens only, in input order.

    Texts are encoded by :func:`mlsafe.chat.encode_all` (give :class:`~mlsafe.chat.ChatText`
    from :func:`format_chat` or :func:`mlsafe.chat.render` so that content cannot forge turns)
    and must fit the model's context with `max_new_tokens` to spare: longer ChatText content
    is truncated from the end (one warning), a longer plain string raises UserError.

    sort_by_length: batch prompts of similar token length together (less padding, and a
    batch stops as soon as its rows end); outputs are returned in the input order. Batch
    composition changes padding, which can change the last bits of the logits, so compare
    runs made with the same setting. stats: a dict that receives "new_tokens" (generated
    tokens up to and including each row's first end-of-sequence token) and "seconds" (and,
    with drafts, "drafted" and "draft_done": rows verified and rows their draft finished).
    drafts: a draft response per text, verified rather than decoded (`_generate`; same responses).
    decode_rows: batches decoded together, up to that many rows (`_generate`).
    """
    return _generate(model, tokenizer, chat_texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     progress=progress, device=device, desc=desc, sort_by_length=sort_by_length,
                     stats=stats, first=None, batch_tokens=batch_tokens, drafts=drafts, decode_rows=decode_rows)[0]


def generate_scored(model, tokenizer, user_texts: Sequence[str], score_ids: Sequence[int], *,
                    max_new_tokens: int = 64, batch_size: int = 16, progress: bool = True, device=None,
                    sort_by_length: bool = False, desc: str = "generate",
                    stats: dict | None = None, batch_tokens: int | None = None, share_prefix: bool = True,
                    greedy_loop: bool = True, drafts: Sequence[str] | None = None,
                    decode_rows: int | None = None) -> tuple[list[str], torch.Tensor]:
    """`generate`'s responses and, from the same forward pass, log p(t | prompt) at the
    generation position for each t in `score_ids`: float64 [N, len(score_ids)], input order.

    The first generated token is read from exactly the logits a separate forward pass at the
    generation position would give (mlsafe.evaluate.margin.next_token_logprobs), so the
    refusal margin of a prompt costs no pass of its own (issue 17); values can differ in the
    last bits where the batch composition differs. `drafts`, `decode_rows`: as in `_generate`.
    """
    idx = torch.tensor(list(score_ids), dtype=torch.long)
    return _generate(model, tokenizer, format_chat(tokenizer, user_texts), max_new_tokens=max_new_tokens,
                     batch_size=batch_size, progress=progress, device=device, desc=desc,
                     sort_by_length=sort_by_length, stats=stats, batch_tokens=batch_tokens,
                     share_prefix=share_prefix, greedy_loop=greedy_loop, drafts=drafts, decode_rows=decode_rows,
                     first=lambda logits: torch.log_softmax(logits.double(), dim=-1).cpu()[:, idx])


def generate_with_first_logits(model, tokenizer, user_texts: Sequence[str], *, max_new_tokens: int = 64,
                               batch_size: int = 16, progress: bool = True, device=None,
                               sort_by_length: bool = False, desc: str = "generate",
                               stats: dict | None = None, batch_tokens: int | None = None,
                               drafts: Sequence[str] | None = None,
                               decode_rows: int | None = None) -> tuple[list[str], torch.Tensor]:
    """`generate`'s responses and the raw logits at the generation position (the first
    generated token's), float32 [N, vocab] on the CPU, input order: the edited side of the
    first-token KL without a pass of its own (mlsafe.evaluate.kl.first_token_kl_given).
    `drafts`, `decode_rows`: as in `_generate`."""
    return _generate(model, tokenizer, format_chat(tokenizer, user_texts), max_new_tokens=max_new_tokens,
                     batch_size=batch_size, progress=progress, device=device, desc=desc,
                     sort_by_length=sort_by_length, stats=stats, batch_tokens=batch_tokens, drafts=drafts,
                     decode_rows=decode_rows, first=lambda logits: logits.float().cpu())


@torch.no_grad()
def _generate(model, tokenizer, chat_texts, *, max_new_tokens, batch_size, progress, device, desc,
              sort_by_length, stats, first, share_prefix=True, batch_tokens=None, greedy_loop=True,
              drafts=None, decode_rows=None) -> tuple[list[str], torch.Tensor | None]:
    """The greedy loop; `first` (optional) maps each batch's first-step logits [B, vocab] to
    the rows returned beside the texts, concatenated in input order. The prompts' shared
    opening (the chat template's) is computed once per call unless `share_prefix` is False
    (mlsafe.evaluate.prefix). `batch_tokens`: batches also stop growing before rows x (longest
    prompt + max_new_tokens) passes it (`token_batches`). `greedy_loop` False: always
    model.generate (mlsafe.evaluate.greedy says when the loop may stand in for it). `drafts`:
    a draft response per text (e.g. the unedited model's), verified in one pass per batch
    where the loop may run (mlsafe.evaluate.draft): the same tokens, fewer decode steps.
    `decode_rows`: consecutive batches are prefilled one by one and decoded as one batch of up
    to that many rows (`_Decoder`); None decodes each batch alone."""
    import time

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if drafts is not None and len(drafts) != len(chat_texts):
        raise ValueError(f"{len(chat_texts)} prompts but {len(drafts)} drafts")
    device = device or model_device(model)
    encoded = chat.encode_all(tokenizer, chat_texts, max_length=prompt_limit(model, tokenizer, max_new_tokens))
    order = length_order(encoded) if sort_by_length else list(range(len(encoded)))
    rows = [encoded[i] for i in order]
    eos = end_tokens(model)
    t0 = time.perf_counter()
    n_shared = shared_prefix_len(rows) if share_prefix else 0
    prefix = SharedPrefix.compute(model, rows[0][:n_shared], device) if n_shared else None
    dec = _Decoder(model, tokenizer, prefix, device=device, eos=eos, batch_size=batch_size,
                   batch_tokens=batch_tokens, greedy_loop=greedy_loop, decode_rows=decode_rows)
    with left_padded(tokenizer):
        if drafts is not None and dec.plain:
            new, scored, counts = _verified(dec, rows, [drafts[i] for i in order], max_new_tokens, first,
                                            progress, desc)
            if stats is not None:
                stats.update(counts)
        else:
            new, scored = dec.run(rows, max_new_tokens, first=first, progress=progress, desc=desc)
    n_new = 0
    for row in new:
        ends = [k for k, t in enumerate(row) if t in eos]
        n_new += ends[0] + 1 if ends else len(row)
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    if stats is not None:
        stats.update(new_tokens=n_new, seconds=time.perf_counter() - t0)
    texts = [""] * len(chat_texts)
    for i, text in zip(order, decoded):
        texts[i] = text
    if first is None:
        return texts, None
    if not scored:
        return texts, torch.zeros(0)
    stacked = torch.cat(scored)
    out = torch.empty_like(stacked)
    out[torch.tensor(order, dtype=torch.long)] = stacked
    return texts, out


#: A batch joins a decode group only if its longest row is at most this times the group's
#: shortest longest row: every row of a group attends over the group's widest cache.
WIDTH_SLACK = 1.25


class _Decoder:
    """Greedy decoding of token rows in batches (greedy.prefill and greedy.steps where the
    generation config allows, model.generate otherwise), with the call's shared prefix.
    `decode_rows`: where the loop runs, consecutive batches are prefilled one by one and
    decoded together, up to that many rows (greedy.merged; None decodes each batch alone). A decode step reads every weight
    once whatever the rows, so wide steps cost less per token: on 2 cores the 0.5B Qwen
    decodes 86 tokens/s at 64 rows and 155 at 256, while its prompt pass is fastest at ~64.
    With decode_rows, rows that have ended also leave the batch (greedy.steps `compact`)."""

    def __init__(self, model, tokenizer, prefix, *, device, eos, batch_size, batch_tokens, greedy_loop,
                 decode_rows=None):
        self.model, self.tokenizer, self.prefix, self.device, self.eos = model, tokenizer, prefix, device, eos
        self.batch_size, self.batch_tokens, self.decode_rows = batch_size, batch_tokens, decode_rows
        self.window, self.kwarg = sliding_window(model), cache_kwarg(model)
        self.plain = greedy_loop and plain_greedy(model)

    def _groups(self, chunks: list) -> list[list]:
        """Consecutive chunks decoded together: up to decode_rows rows (one chunk each without it)."""
        if not (self.plain and self.decode_rows) or self.window is not None:
            return [[c] for c in chunks]
        groups: list[list] = []
        width = lambda chunk: max(map(len, chunk))  # noqa: E731
        for chunk in chunks:
            if groups and sum(map(len, groups[-1])) + len(chunk) <= self.decode_rows \
                    and width(chunk) <= WIDTH_SLACK * min(map(width, groups[-1])):
                groups[-1].append(chunk)
            else:
                groups.append([chunk])
        return groups

    def run(self, rows, max_new_tokens: int, *, first=None, progress: bool = False, desc: str = ""
            ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """New tokens of every row (in order) and `first` of each batch's first-step logits."""
        from tqdm.auto import tqdm
        from transformers import DynamicCache

        model, pad = self.model, self.tokenizer.pad_token_id
        new_rows: list[list[int]] = []
        scored: list[torch.Tensor] = []
        chunks = list(token_batches(rows, self.batch_size, self.batch_tokens, max_new_tokens))
        with tqdm(total=len(rows), desc=desc, disable=not progress) as bar:
            for group in self._groups(chunks):
                parts = []
                for chunk in group:
                    # [prefix][padding][rest] with the prefix's cache, or plain left padding
                    enc, skip, cache = batch_inputs(self.prefix, chunk, pad_id=pad, device=self.device,
                                                    window=self.window, new_tokens=max_new_tokens)
                    if self.plain:  # the greedy loop: generate's tokens without its per-step overhead
                        parts.append(prefill(model, enc["input_ids"][:, skip:], enc["attention_mask"],
                                             positions(enc["attention_mask"])[:, skip:],
                                             cache=DynamicCache(config=model.config) if cache is None else cache,
                                             cache_kwarg=self.kwarg))
                        logits = parts[-1].logits
                    else:
                        extra = {} if first is None else {"output_logits": True, "return_dict_in_generate": True}
                        out = model.generate(
                            **enc, **({} if cache is None else {self.kwarg: cache}),
                            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            temperature=None, top_p=None, top_k=None, pad_token_id=pad, **extra)
                        ids, logits = (out, None) if first is None else (out.sequences, out.logits[0])
                        new_rows.extend(ids[:, enc["input_ids"].shape[1]:].tolist())
                    if first is not None:
                        scored.append(first(logits))
                for state in merged(parts):
                    new_rows.extend(steps(model, state, cache_kwarg=self.kwarg, max_new_tokens=max_new_tokens,
                                          eos=self.eos, pad_id=pad, compact=bool(self.decode_rows)).tolist())
                bar.update(sum(map(len, group)))
        return new_rows, scored


def _verified(dec: _Decoder, rows, drafts, max_new_tokens: int, first, progress: bool, desc: str
              ) -> tuple[list[list[int]], list[torch.Tensor], dict]:
    """Draft-verified greedy tokens of `rows` (mlsafe.evaluate.draft): one pass over prompt +
    draft per batch, then the rows the drafts did not finish (and any verification left
    unverified) decoded on from what was kept, in one decoding. The dict: rows verified
    ("drafted") and finished by their draft ("draft_done")."""
    from tqdm.auto import tqdm

    ids = draft_ids(dec.tokenizer, drafts, end_id=end_token(dec.model), max_new_tokens=max_new_tokens)
    with tqdm(total=len(rows), desc=f"{desc} (draft)", disable=not progress) as bar:
        ver = verify(dec.model, rows, ids, prefix=dec.prefix, pad_id=dec.tokenizer.pad_token_id,
                     device=dec.device, window=dec.window, eos=dec.eos, max_new_tokens=max_new_tokens,
                     batch_size=dec.batch_size, batch_tokens=dec.batch_tokens, first=first,
                     on_batch=bar.update)
    n_ver = len(ver.tokens)
    new = [list(t) for t in ver.tokens] + [[] for _ in rows[n_ver:]]
    todo = [k for k in range(len(rows)) if k >= n_ver or not ver.done[k]]
    scored = list(ver.first)
    if todo:   # decoded on from prompt + kept tokens, each row to its own budget
        rest = [list(rows[k]) + new[k] for k in todo]
        sub = length_order(rest)
        more, firsts = dec.run([rest[j] for j in sub], max_new_tokens - min(len(new[k]) for k in todo),
                               first=first if n_ver < len(rows) else None, progress=progress, desc=f"{desc} (rest)")
        for j, tokens in zip(sub, more):
            k = todo[j]
            new[k] = new[k] + tokens[:max_new_tokens - len(new[k])]
        if firsts:   # the unverified rows' generation-position rows, in `rows` order
            by_row = dict(zip((todo[j] for j in sub), torch.cat(firsts)))
            scored.append(torch.stack([by_row[k] for k in range(n_ver, len(rows))]))
    return new, scored, {"drafted": n_ver, "draft_done": sum(ver.done)}


def generate(model, tokenizer, user_texts: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int = 16, progress: bool = True, device=None,
             system: str | None = None, sort_by_length: bool = False, desc: str = "generate",
             stats: dict | None = None, batch_tokens: int | None = None,
             drafts: Sequence[str] | None = None, decode_rows: int | None = None) -> list[str]:
    """Greedy responses to user messages (chat template applied, left padding, responses only;
    `drafts` and `decode_rows` as in generate_from_chat)."""
    return generate_from_chat(model, tokenizer, format_chat(tokenizer, user_texts, system=system),
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=progress, device=device, sort_by_length=sort_by_length, desc=desc,
                              stats=stats, batch_tokens=batch_tokens, drafts=drafts, decode_rows=decode_rows)
