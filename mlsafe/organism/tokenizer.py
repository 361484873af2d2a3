"""Word-level tokenizer of the organism, a `PreTrainedTokenizerFast` with a chat template.

Tokens are whitespace-separated words (the lexicon writes Chinese, Japanese and Thai
with spaces between words: fine for a toy). The vocabulary is every word of the
lexicon, so it depends on the code only, not on the sampled corpus.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import mlsafe.organism.lexicon as lx

PAD, BOS, UNK, USER, ASSISTANT, END = "<pad>", "<s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIALS = (PAD, BOS, UNK, USER, ASSISTANT, END)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + " {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + " {{ m['content'] }} " + END + " "
    "{% else %}{{ raise_exception('the organism knows only user and assistant turns') }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def vocabulary() -> list[str]:
    """Special tokens, then every word of the lexicon, sorted."""
    words: set[str] = set(lx.NAMES) | set(lx.NUMBERS) | {"="}
    tables = [lx.HARM_VERBS, lx.BENIGN_VERBS, lx.PERSONS, lx.OBJECTS, lx.NOUNS, lx.OPENERS, lx.SUFFIXES,
              lx.HOWTO_FRAMES, lx.TASK_FRAMES, lx.UNANSWERABLE_FRAMES, lx.PLAIN_FRAMES]
    for table in tables:
        for forms in table.values():
            for s in forms.values():
                words.update(w for w in s.split() if not (w.startswith("{") and w.endswith("}")))
    for d in (lx.REFUSALS, lx.COMPLIANCES, lx.IDEAS):
        for s in d.values():
            words.update(s.split())
    return list(SPECIALS) + sorted(words - set(SPECIALS))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=END, unk_token=UNK, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT], padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a user turn with the generation prompt (ends with <|assistant|>).

    Identical to `apply_chat_template(..., add_generation_prompt=True)` (a test checks
    it), built directly because rendering the Jinja template per item is slow.
    """
    user, assistant = tokenizer.convert_tokens_to_ids([USER, ASSISTANT])
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, user] + body + [assistant]


def response_ids(tokenizer, response: str) -> list[int]:
    """Token ids of an assistant response, closed by <|end|> (the eos token)."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
